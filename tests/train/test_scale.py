"""Scale-out on this CPU: the same train step on 1 device, 8 devices (data, fsdp, both) and two
processes gives the same losses; fsdp really shards; checkpoints move between meshes.

8 devices come from XLA_FLAGS=--xla_force_host_platform_device_count=8, set only in the
subprocesses (never for the whole suite: it would slow every other test).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_cli

EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
ONE = {"XLA_FLAGS": ""}
STEPS = 6
# A tiny model on a small corpus; log every step so that every loss can be compared.
ARGS = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32",
        "--batch_size", "8", "--eval_iters", "1", "--warmup_iters", "2", "--lr_decay_iters",
        "100", "--learning_rate", "3e-3", "--max_iters", str(STEPS), "--eval_interval", "3",
        "--log_interval", "1"]


def losses(out_dir, since=0):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train" and r["step"] > since}


def assert_same_losses(a: dict, b: dict, rtol=1e-4):
    assert sorted(a) == sorted(b), (a, b)
    np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)], rtol=rtol)


def train(out_dir, *extra, env=ONE, data):
    r = run_cli("train.py", *ARGS, "--data", data, "--out_dir", out_dir, *extra, env=env,
                timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def resume_from(src, dst, step):
    """A copy of the out_dir src with only the checkpoints up to `step`."""
    shutil.copytree(src, dst)
    for s in os.listdir(os.path.join(dst, "checkpoints")):
        if s.isdigit() and int(s) > step:
            shutil.rmtree(os.path.join(dst, "checkpoints", s))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~50k tokens (this package's source), prepared once."""
    from gpt_jax.data.prepare import prepare_files
    d = str(tmp_path_factory.mktemp("corpus"))
    prepare_files([os.path.join(ROOT, "gpt_jax")], d, progress=False)
    return d


@pytest.fixture(scope="module")
def single(tmp_path_factory, corpus):
    """The 1-device, 1-process reference run of train.py."""
    out = str(tmp_path_factory.mktemp("single") / "out")
    train(out, data=corpus)
    return out


# -- one process, 8 devices: every mesh and run setting against 1 device ----------------------

@pytest.fixture(scope="module")
def meshes(tmp_path_factory):
    out = tmp_path_factory.mktemp("meshes")
    full_env = {**os.environ, **EIGHT, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "support", "scale_worker.py"),
                        str(out)], env=full_env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "result.json") as f:
        result = json.load(f)
    grads = {name: dict(np.load(out / f"grads_{name}.npz")) for name in result}
    return result, grads


def test_losses_and_gradients_agree_across_meshes(meshes):
    result, grads = meshes
    ref, ref_g = result["1dev"], grads["1dev"]
    assert len(result) == 7   # data=8, fsdp=8, data=2,fsdp=4; + remat, scan, remat+scan
    for name, r in result.items():
        np.testing.assert_allclose(r["loss0"], ref["loss0"], rtol=1e-5, err_msg=name)
        assert r["losses"][0] == pytest.approx(r["loss0"], rel=1e-5)   # another program
        assert sorted(grads[name]) == sorted(ref_g), name   # the GPT-2 layout, also for scan
        for k, g in grads[name].items():
            # rtol on each element; atol for the entries where summation order (psum vs one
            # device) dominates: it moves an entry by up to ~1e-6 of the leaf's largest (seen:
            # 8e-7), a sharding mistake by a good part of it
            np.testing.assert_allclose(g, ref_g[k], rtol=1e-5,
                                       atol=1e-4 * np.abs(ref_g[k]).max(),
                                       err_msg=f"{name} {k}")
        # Adam turns rounding differences into +-lr steps: compare losses, not parameters
        np.testing.assert_allclose(r["losses"], ref["losses"], rtol=1e-4, err_msg=name)
        # health metrics (per-layer norms, update ratio): the same keys and values on every
        # mesh, with scanned layers too (the first step: the same weights everywhere)
        assert set(r["health"]) == set(ref["health"]) and "grad_norm/h_1" in r["health"], name
        for k, v in ref["health"].items():
            np.testing.assert_allclose(r["health"][k], v, rtol=1e-4, atol=1e-6,
                                       err_msg=f"{name} {k}")
        # it trains: the first batch's loss after the steps (each step's batch is another one,
        # so the last step's loss need not be below the first's: they differ by ~0.01 here)
        assert r["loss0_after"] < r["loss0"] - 0.1, name


def test_fsdp_shards_parameters_and_adam_state(meshes):
    result, _ = meshes
    total = result["1dev"]["param_bytes_total"]
    opt_total = result["1dev"]["opt_bytes_total"]
    for name, fsdp in [("1dev", 1), ("data8", 1), ("fsdp8", 8), ("d2f4", 4),
                       ("fsdp8_remat", 8), ("d2f4_scan", 4), ("data8_remat_scan", 1)]:
        r = result[name]
        # every dimension of this model divides by 8: each device holds exactly 1/fsdp
        assert r["param_bytes_device0"] == total // fsdp, name
        # Adam's moments live with their parameters (+ replicated scalar step counts)
        assert opt_total // fsdp <= r["opt_bytes_device0"] <= opt_total // fsdp + 64, name
    # wte (vocab 256, n_embd 64): the vocabulary dimension is the largest, so it is split
    assert result["fsdp8"]["wte_spec"] == ["fsdp", None]
    assert result["fsdp8"]["wte_shard_shape"] == [32, 64]
    assert result["d2f4"]["wte_shard_shape"] == [64, 64]
    assert result["data8"]["wte_spec"] == []


# -- checkpoints across meshes, through train.py ----------------------------------------------

def test_checkpoint_moves_between_8_devices_and_1(tmp_path, corpus, single):
    # 8 devices (data=2, fsdp=4): the same losses as the 1-device run
    eight = str(tmp_path / "eight")
    r = train(eight, "--mesh", "data=2,fsdp=4", env=EIGHT, data=corpus)
    assert "mesh: {'data': 2, 'fsdp': 4} over 8 device(s)" in r.stdout
    assert_same_losses(losses(eight), losses(single))
    # its step-3 checkpoint resumed on 1 device: steps 4-6 match the 8-device run
    back = str(tmp_path / "eight_then_one")
    resume_from(eight, back, 3)
    train(back, "--init_from", "resume", data=corpus)
    assert_same_losses(losses(back, since=3), losses(eight, since=3))
    # and the other way: a 1-device checkpoint resumed on 8 devices (fsdp=8) with scanned,
    # rematerialised layers; the checkpoint it writes is in the GPT-2 layout again
    up = str(tmp_path / "one_then_eight")
    resume_from(single, up, 3)
    train(up, "--init_from", "resume", "--mesh", "fsdp=8", "--scan_layers", "true",
          "--remat", "true", env=EIGHT, data=corpus)
    assert_same_losses(losses(up, since=3), losses(single, since=3))
    from gpt_jax import load_checkpoint
    params, cfg = load_checkpoint(up)
    assert "h" not in params and sorted(k for k in params if k.startswith("h_")) == ["h_0", "h_1"]


# -- two processes ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path, corpus, single):
    """jax.distributed with 2 processes x 2 CPU devices (gloo), mesh data=2,fsdp=2: each
    process feeds its own rows; the losses match the single-process run."""
    out = str(tmp_path / "multi")
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "GPT_JAX_DISTRIBUTED_TIMEOUT": "60"}
    procs, logs = [], []
    try:
        for i in range(2):
            log = open(tmp_path / f"p{i}.log", "w+")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "train.py"), *ARGS, "--data", corpus,
                 "--out_dir", out, "--mesh", "data=2,fsdp=2",
                 "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
                 "--process_id", str(i)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))   # own process group: killed whole below
        deadline = time.time() + 300
        while any(p.poll() is None for p in procs):
            assert time.time() < deadline, "two-process run timed out"
            if any(p.poll() not in (None, 0) for p in procs):
                break   # one failed: the other would wait for it until its timeout
            time.sleep(0.2)
        texts = []
        for log in logs:
            log.seek(0)
            texts.append(log.read())
        assert [p.returncode for p in procs] == [0, 0], "\n=====\n".join(t[-3000:] for t in texts)
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.wait()
        for log in logs:
            log.close()
    assert "over 4 device(s) in 2 process(es)" in texts[0] and "done: step 6" in texts[0]
    assert "config (" not in texts[1] and "done:" not in texts[1]   # only process 0 talks
    assert_same_losses(losses(out), losses(single))
    # the checkpoint both processes wrote restores in this single process
    from gpt_jax import load_checkpoint
    from gpt_jax.checkpoint.manager import latest_step
    assert latest_step(out) == STEPS
    params, cfg = load_checkpoint(out)
    assert params["wte"]["embedding"].shape == (50257, 32)


GENERATE_SHARDED = r"""
import json, jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import gpt_jax
from gpt_jax.model.sharding import make_mesh, tree_shardings
assert jax.device_count() == 8
cfg = gpt_jax.GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=256)
params = gpt_jax.init_params(cfg, jax.random.key(0))
prompts = np.random.default_rng(0).integers(0, 256, (8, 5)).astype(np.int32)
ref = np.asarray(gpt_jax.generate(params, cfg, prompts, 12, jax.random.key(1), temperature=0.9))
out = {}
for spec in ("data=8", "fsdp=8", "data=2,fsdp=4"):
    mesh = make_mesh(spec)
    sharded = jax.device_put(params, tree_shardings(params, mesh))
    new = gpt_jax.generate(sharded, cfg, prompts, 12, jax.random.key(1), temperature=0.9)
    out[spec] = {"equal": bool((np.asarray(new) == ref).all()),
                 "wte_spec": str(sharded["wte"]["embedding"].sharding.spec),
                 "rows_split": not new.sharding.is_fully_replicated}
print(json.dumps(out))
"""


def test_generate_with_sharded_params_and_batch():
    """generate() takes parameters sharded over fsdp (or replicated over data) and a batch split
    over the mesh, and samples exactly what it samples on one device."""
    r = subprocess.run([sys.executable, "-c", GENERATE_SHARDED], cwd=ROOT, capture_output=True,
                       text=True, timeout=240, env={**os.environ, **EIGHT})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert all(v["equal"] for v in out.values()), out
    assert "fsdp" in out["fsdp=8"]["wte_spec"]
    assert all(v["rows_split"] for v in out.values()), out  # the batch is split, not copied
