"""Device meshes, partition rules and multi-host start-up.

One mesh with two axes, always both present (size 1 when unused):
  data: pure data parallelism, parameters replicated;
  fsdp: data parallelism whose parameters and optimizer state are also sharded (ZeRO-3 style):
        XLA all-gathers each weight where a layer needs it and reduce-scatters its gradient.
The batch is split over both axes, so tokens per step never depend on the mesh.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gpt_jax.errors import ConfigError

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over every device


def parse_mesh(spec: Optional[str], n_devices: Optional[int]) -> dict[str, int]:
    """`data=2,fsdp=4` -> {"data": 2, "fsdp": 4}. One size may be -1 (the rest of the devices);
    the product must equal n_devices. None or "" puts every device on `data`.
    n_devices=None checks the grammar only (and leaves -1 in place)."""
    if not spec:
        return {"data": -1 if n_devices is None else n_devices, "fsdp": 1}
    sizes: dict[str, int] = {}
    for part in spec.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name not in AXES:
            raise ConfigError(f"--mesh {spec!r}: expected axis=int[,axis=int] with axes "
                              f"{' and '.join(AXES)}")
        if name in sizes:
            raise ConfigError(f"--mesh {spec!r}: axis {name} given twice")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ConfigError(f"--mesh {spec!r}: size of {name} must be an integer") from None
        if sizes[name] == 0 or sizes[name] < -1:
            raise ConfigError(f"--mesh {spec!r}: sizes must be positive (or one -1)")
    sizes = {a: sizes.get(a, 1) for a in AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ConfigError(f"--mesh {spec!r}: only one axis may be -1")
    if n_devices is None:
        return sizes
    known = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if n_devices % known:
            raise ConfigError(f"--mesh {spec!r}: {n_devices} devices do not divide by {known}")
        sizes[free[0]] = n_devices // known
    if math.prod(sizes.values()) != n_devices:
        raise ConfigError(f"--mesh {spec!r}: the axis sizes multiply to "
                          f"{math.prod(sizes.values())}, but there are {n_devices} devices")
    return sizes


def make_mesh(spec: Optional[str] = None, devices: Optional[Sequence] = None) -> Mesh:
    """A (data, fsdp) mesh. Built with jax.sharding.Mesh (Auto axis types): jax.make_mesh's
    default Explicit axes break nn.Embed's gather."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = parse_mesh(spec, len(devices))
    grid = np.asarray(devices).reshape(tuple(sizes[a] for a in AXES))
    return Mesh(grid, AXES)


def fsdp_spec(shape: Sequence[int], fsdp: int) -> P:
    """Shard the largest dimension that fsdp divides; replicate when none does (biases of odd
    sizes, scalars such as Adam's step count)."""
    if fsdp > 1:
        candidates = [(d, i) for i, d in enumerate(shape) if d % fsdp == 0]
        if candidates:
            _, axis = max(candidates, key=lambda c: (c[0], -c[1]))
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def tree_shardings(tree, mesh: Mesh):
    """NamedShardings for every leaf of a pytree of arrays or ShapeDtypeStructs (parameters,
    optimizer state, a whole TrainState): the same rule everywhere, so Adam's moments live
    exactly where their parameters do."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), fsdp)), tree)


def batch_sharding(mesh: Mesh, ndim: int = 3, batch_axis: int = 1) -> NamedSharding:
    """Batches (accum, batch_size, block_size + 1): rows split over every device."""
    spec = [None] * ndim
    spec[batch_axis] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


def activation_sharding(mesh: Mesh) -> NamedSharding:
    """Activations (B, T, C) inside the model: rows over every device, like the batch."""
    return NamedSharding(mesh, P(BATCH_AXES, None, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def params_mesh(params) -> Optional[Mesh]:
    """The mesh that params live on when it is one of make_mesh's (it has the batch axes), so
    that a batch for them can be split by batch_sharding; None on one device or another mesh.
    Reads one leaf (wte's embedding in GPT-2's tree), not a flattening of the whole tree."""
    try:
        leaf = params["wte"]["embedding"]
    except (KeyError, TypeError, IndexError):
        leaves = jax.tree_util.tree_leaves(params)
        leaf = leaves[0] if leaves else None
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding) and set(BATCH_AXES) <= set(sharding.mesh.axis_names):
        return sharding.mesh
    return None


def batch_devices(mesh: Optional[Mesh]) -> int:
    """How many ways batch_sharding splits the rows of a batch on mesh (1 without a mesh)."""
    return 1 if mesh is None else math.prod(mesh.shape[a] for a in BATCH_AXES)


def local_rows(global_rows: int) -> slice:
    """The rows of a global batch that this process feeds (processes own equal, contiguous
    slices of the device order, which is how the batch sharding lays rows out)."""
    n, i = jax.process_count(), jax.process_index()
    if global_rows % n:
        raise ConfigError(f"batch_size {global_rows} must be divisible by the number of "
                          f"processes ({n})")
    per = global_rows // n
    return slice(i * per, (i + 1) * per)


def make_global_batch(local: np.ndarray, mesh: Mesh, global_shape: Sequence[int],
                      batch_axis: int = 1) -> jax.Array:
    """Assemble a global batch from each process's rows."""
    sharding = batch_sharding(mesh, len(global_shape), batch_axis)
    return jax.make_array_from_process_local_data(sharding, local, tuple(global_shape))


def check_batch_divides(batch_size: int, mesh: Mesh) -> None:
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % n:
        raise ConfigError(f"batch_size {batch_size} must be divisible by the {n} devices of "
                          f"the mesh (data={mesh.shape['data']}, fsdp={mesh.shape['fsdp']})")


def maybe_initialize_distributed(coordinator_address: Optional[str] = None,
                                 num_processes: Optional[int] = None,
                                 process_id: Optional[int] = None,
                                 timeout_s: Optional[int] = None) -> bool:
    """Start jax.distributed when a coordinator is given (flags, or the JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES, JAX_PROCESS_ID environment); returns whether it did. Clusters that JAX
    detects by itself (SLURM, TPU pods) set GPT_JAX_DISTRIBUTED=1 instead. timeout_s bounds
    start-up and shutdown (JAX waits 300 s for missing peers by default)."""
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if timeout_s is None and env.get("GPT_JAX_DISTRIBUTED_TIMEOUT"):
        timeout_s = int(env["GPT_JAX_DISTRIBUTED_TIMEOUT"])
    auto = env.get("GPT_JAX_DISTRIBUTED", "").lower() in ("1", "true")
    if not coordinator_address and not auto:
        return False
    # CPU processes need a collectives backend to talk to each other (GPUs use NCCL).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if timeout_s is not None:
        kwargs = dict(initialization_timeout=timeout_s, shutdown_timeout_seconds=timeout_s,
                      heartbeat_timeout_seconds=max(10, timeout_s))
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id, **kwargs)
    return True


def is_main_process() -> bool:
    return jax.process_index() == 0
