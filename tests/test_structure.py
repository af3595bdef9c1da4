"""The package's shape, walked with `ast` (nothing imported): no import circles (imports inside
functions count), every import points down the layers, no private name crosses a module, no
package face hides one of its modules, and every module stays one screenful of ideas."""
import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "gpt_jax"

# Each layer imports only layers to its left (model < data < generation < ... < cli);
# checkpoint and data, side by side, import neither the other.
LAYERS = [("errors",), ("utils",), ("model",), ("checkpoint", "data"), ("generation",),
          ("evaluation",), ("train",), ("lab",), ("cli",), ("hf", "evals")]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
MAX_LINES = 420


def modules():
    """{dotted name: path} of every module under gpt_jax (packages by their __init__)."""
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = modules()


def resolve(name: str, importer: str, is_pkg: bool, level: int) -> str:
    if level:
        base = importer.split(".") if is_pkg else importer.split(".")[:-1]
        name = ".".join(base[:len(base) - level + 1] + ([name] if name else []))
    return name


def imports(module: str):
    """(target module, imported names, line) for every import of a gpt_jax module in module."""
    path = MODULES[module]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node.module or "", module, path.name == "__init__.py", node.level)
            names = [a.name for a in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            # `from pkg import module` imports that module, and pkg's __init__ too
            yield base, [n for n in names if f"{base}.{n}" not in MODULES], node.lineno
            for s in submodules:
                yield s, [], node.lineno


def known(target: str):
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def graph():
    g = {}
    for m in MODULES:
        if m == "gpt_jax":          # the lazy face: it points at everything, nothing at it
            continue
        g[m] = {k for t, _, _ in imports(m) if (k := known(t)) and k not in (m, "gpt_jax")}
    return g


def layer(module: str) -> int:
    return RANK[module.split(".")[1]]


def test_the_walk_sees_the_whole_package():
    assert len(MODULES) > 60 and "gpt_jax.generation.loop" in MODULES
    assert {m.split(".")[1] for m in MODULES if m != "gpt_jax"} <= set(RANK)


def test_no_import_circles():
    g = graph()
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):                                # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                on.discard(w)
                comp.append(w)
            on.discard(v)
            if comp:
                circles.append(sorted(comp + [v]))

    for v in g:
        if v not in index:
            visit(v)
    assert circles == []


def test_imports_point_down_the_layers():
    wrong = [f"{m} ({m.split('.')[1]}) imports {t}" for m, targets in graph().items()
             for t in targets
             if layer(t) > layer(m) or (layer(t) == layer(m) and t.split(".")[1] != m.split(".")[1])]
    assert wrong == []


def test_no_private_name_crosses_a_module():
    wrong = []
    for m in MODULES:
        aliases = {}
        tree = ast.parse(MODULES[m].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("gpt_jax"):
                        aliases[a.asname or a.name.split(".")[0]] = a.name
        for target, names, line in imports(m):
            wrong += [f"{m}:{line} imports {target}.{n}" for n in names
                      if n.startswith("_") and known(target) and known(target) != m]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases:
                wrong.append(f"{m}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert wrong == []


def test_no_package_face_hides_one_of_its_modules():
    # `from pkg.x import x` in pkg/__init__ would make `import pkg.x as m` bind the function
    wrong = []
    for m, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        for target, names, _ in imports(m):
            wrong += [f"{m} exports {n}, the name of its module {m}.{n}" for n in names
                      if f"{m}.{n}" in MODULES and known(target) != f"{m}.{n}"]
    assert wrong == []


@pytest.mark.parametrize("package", sorted({m.split(".")[1] for m in MODULES if m != "gpt_jax"
                                            and MODULES[m].name != "__init__.py"
                                            and m.count(".") >= 2}))
def test_each_package_says_what_it_holds(package):
    init = PKG / package / "__init__.py"
    tree = ast.parse(init.read_text())
    assert ast.get_docstring(tree), f"gpt_jax/{package}/__init__.py has no docstring"
    assert any(isinstance(n, (ast.Assign, ast.AnnAssign)) and "__all__" in ast.unparse(n)
               for n in tree.body), f"gpt_jax/{package}/__init__.py has no __all__"


def test_modules_stay_small():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
