"""The structure the README's layout table describes, checked by folder: `launch/core/` (contracts)
<- `train/` and `eval/` (work) <- `launch/*.py` (orchestration). Imports run downward,
function-local and relative ones included, with no cycle; every cell kind is one registry entry
whose entry point exists.

    .venv/bin/python -m pytest -q tests/test_architecture.py
"""
import ast
from pathlib import Path

from launch.core.jobs import KINDS

ROOT = Path(__file__).resolve().parent.parent
FLOORS = {"launch/core": 0, "train": 1, "eval": 1, "launch": 2}   # a module's floor is its folder's


def modules() -> dict[str, Path]:
    """Every module of the three packages by dotted name (a package by its own name)."""
    out = {}
    for f in sorted(p for pkg in ("launch", "train", "eval") for p in (ROOT / pkg).rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def floor(path: Path) -> int:
    return FLOORS["/".join(path.relative_to(ROOT).parts[:-1])]


def imports(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Every module of this repository that `source` (module `module`) imports, at the top or inside
    a function, relative imports resolved against its package."""
    found = set()
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[:len(package) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        found |= {n for n in names if n in known}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p.read_text(), m,
                       p.stem == "__init__", set(mods)) - {m} for m, p in mods.items()}


def test_every_module_is_on_a_floor():
    for m, p in modules().items():
        assert "/".join(p.relative_to(ROOT).parts[:-1]) in FLOORS, f"{m}: {p} is in no known folder"


def test_imports_run_downward_without_cycles():
    mods, g = modules(), graph()
    upward = [(m, i) for m, deps in g.items() for i in deps if floor(mods[i]) > floor(mods[m])]
    assert not upward, f"imports that point up a floor: {upward}"
    assert "train.trainer" not in g["eval.evaluate"] | g["eval.scorers"] | g["eval.collect"], \
        "eval loads models through train.models, never the trainer"
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(path + [m])}")
        if state.get(m) == 2:
            return
        state[m] = 1
        # package __init__s import nothing
        for d in sorted(g[m] - {"launch", "launch.core", "train", "eval"}):
            visit(d, path + [m])
        state[m] = 2
    for m in g:
        visit(m, [])


def test_the_check_sees_upward_relative_and_function_local_imports():
    """The checker itself, on sources that break the rule: a contract module importing the planner
    relatively (from .. import plan), inside a function, and a work module importing the CLI."""
    known = set(modules())
    sneaky = "def f():\n    from .. import plan\n    from ..slurm import submit\n"
    assert imports(sneaky, "launch.core.layout", False, known) == {"launch", "launch.plan",
                                                                   "launch.slurm"}
    assert imports("from . import layout\n", "launch.core", True, known) == {"launch.core",
                                                                             "launch.core.layout"}
    assert "launch.__main__" in imports("import launch.__main__\n", "eval.collect", False, known)


def test_the_kind_registry_is_complete():
    """One entry per kind: its job class, entry point (defined where it says, taking the runtime),
    outputs and output check."""
    mods = modules()
    assert set(KINDS) == {"world", "train", "generate", "eval", "collect"}
    for name, k in KINDS.items():
        module, func = k.entry.split(":")
        tree = ast.parse(mods[module].read_text())
        fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func), None)
        assert fn is not None, f"{name}: {k.entry} does not exist"
        assert [a.arg for a in fn.args.args] == ["job", "ctx"], f"{name}: {k.entry} takes (job, ctx: Context)"
        assert callable(k.check)


def test_every_stage_asks_for_the_section_its_cells_need():
    """launch.core.spec.STAGES names each stage's profile section (what its cells ask Slurm for):
    training cells the train section, generation and eval cells the eval section, world and collect
    cells the CPU-only one; every stage of every shipped config is there, in run order."""
    from launch.plan import make_plan
    from launch.core.spec import STAGES, load_spec
    section = {"train": "train", "generate": "eval", "eval": "eval", "world": "light",
               "collect": "light"}
    assert set(section) == set(KINDS)
    for cfg in sorted((ROOT / "configs").glob("*/*.yaml")):
        if cfg.parent.name == "profiles":
            continue
        plan = make_plan(load_spec(cfg, base_dir=ROOT))
        order = list(plan.stages)
        assert order == [s for s in STAGES if s in order], cfg
        for stage, cells in plan.stages.items():
            assert {section[c.kind] for c in cells} == {STAGES[stage]}, (cfg.name, stage)


def test_cell_ids_and_done_markers_of_existing_runs_stay_valid(tmp_path):
    """Moving code never re-addresses a result: every shipped config plans the cell ids it planned
    on 2026-12-03 (tests/golden/cell-ids.json, hashed per config), and a done marker as that code
    wrote it still reads as done."""
    import hashlib
    import json
    from launch.core.layout import cell_state
    from launch.core.spec import load_spec
    from launch.plan import make_plan
    golden = json.loads((ROOT / "tests" / "golden" / "cell-ids.json").read_text())
    for name, want in golden.items():
        if name.startswith("_"):
            continue
        keys = sorted(c.key
                      for c in make_plan(load_spec(ROOT / "configs" / name, base_dir=ROOT)).cells)
        assert {"cells": len(keys),
                "sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest()} == want, name
    up, cell = tmp_path / "exp" / "positive" / "a-1", tmp_path / "exp" / "eval" / "b-2"
    for d in (up, cell):
        d.mkdir(parents=True)
    import numpy as np
    from safetensors.numpy import save_file
    (up / "checkpoints" / "n100").mkdir(parents=True)
    save_file({"w": np.zeros(2, dtype=np.float32)},
              str(up / "checkpoints" / "n100" / "model.safetensors"))
    (up / "checkpoints" / "n100" / "config.json").write_text("{}")
    (up / "DONE").write_text('{"finished": "2026-12-03T10:00:00", "nonce": "9f1c", "milestones": '
                             '["n100"], '
                             '"id": "a-1", "kind": "train", "upstream": {}}')
    (cell / "result.json").write_text('{"metrics": [{"name": "positive_rate", "value": 0.5, '
                                      '"stderr": 0.01, '
                                      '"n": 10}]}')
    (cell / "DONE").write_text('{"finished": "2026-12-03T10:05:00", "nonce": "77ab", "milestones": '
                               '["result.json"], '
                               '"id": "b-2", "kind": "eval", "upstream": {"positive/a-1": "9f1c"}}')
    assert cell_state(cell, "eval", ("result.json",), ["positive/a-1"]) == "done"
