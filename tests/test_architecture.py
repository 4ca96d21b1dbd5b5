"""The structure the README's layout table describes: imports run downward (contracts <- work <- orchestration),
function-local imports included, with no cycle; every cell kind is one registry entry whose entry point exists.

    .venv/bin/python -m pytest -q tests/test_architecture.py
"""
import ast
from pathlib import Path

from launch.jobs import KINDS

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = {"launch", "launch.spec", "launch.jobs", "launch.layout", "launch.env", "launch.tracking"}
ORCHESTRATION = {"launch.plan", "launch.costs", "launch.worker", "launch.local", "launch.slurm", "launch.prefetch",
                 "launch.__main__"}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in ("launch", "train", "eval"):
        for f in sorted((ROOT / pkg).glob("*.py")):
            out[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """Every module of this repository that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in known}
    return found


def layer(mod: str) -> int:
    return 0 if mod in CONTRACTS else 2 if mod in ORCHESTRATION else 1


def test_every_module_has_a_layer():
    mods = modules()
    assert set(mods) == CONTRACTS | ORCHESTRATION | {m for m in mods if m.split(".")[0] in ("train", "eval")}
    assert all(m.split(".")[0] in ("train", "eval") for m in set(mods) - CONTRACTS - ORCHESTRATION)


def test_imports_run_downward_without_cycles():
    mods = modules()
    graph = {m: imports(p, set(mods)) - {m} for m, p in mods.items()}
    upward = [(m, i) for m, deps in graph.items() for i in deps if layer(i) > layer(m)]
    assert not upward, f"imports that point up a layer: {upward}"
    assert "train.trainer" not in graph["eval.evaluate"] | graph["eval.scorers"] | graph["eval.collect"], \
        "eval loads models through train.models, never the trainer"
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(path + [m])}")
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in sorted(graph[m] - {"launch"}):   # the package __init__ imports nothing
            visit(d, path + [m])
        state[m] = 2
    for m in graph:
        visit(m, [])


def test_the_kind_registry_is_complete():
    """One entry per kind: its job class, entry point (defined where it says, taking the runtime), outputs,
    resources and output check."""
    mods = modules()
    assert set(KINDS) == {"world", "train", "generate", "eval", "collect"}
    for name, k in KINDS.items():
        module, func = k.entry.split(":")
        tree = ast.parse(mods[module].read_text())
        fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func), None)
        assert fn is not None, f"{name}: {k.entry} does not exist"
        assert [a.arg for a in fn.args.args] == ["job", "out_dir", "exp_dir", "runtime"], f"{name}: {k.entry}"
        assert k.resources in ("train", "eval", "light") and callable(k.check)
    assert not KINDS["train"].fuse and KINDS["eval"].fuse
