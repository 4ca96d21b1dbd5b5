"""What the collector reads: every expected cell's output (never a log), with its coordinates from
its job.json, or the reason it is not in the tables (layout.cell_state, jobs.output_problem).

    from eval.records import read_cells
    records, problems = read_cells(Path("runs/toy-setting2"), upstream)
"""
from __future__ import annotations

import os
from pathlib import Path

from launch.core import layout
from launch.core.jobs import KINDS, json_problem
from launch.core.layout import read_json


def on_disk(exp: Path) -> list[str]:
    """The result cells on disk (stage/cell keys): what to expect where no collect cell says it."""
    keys = []
    for s in ("eval", "cross", "responses"):
        if os.path.isdir(exp / s):
            keys += sorted(f"{s}/{e.name}" for e in os.scandir(exp / s) if e.is_dir())
    return keys


def read_cells(exp: Path, expected: list[str]):
    """(records, problems): records are dicts with coords and metrics; problems are (key, state,
    detail) of the expected cells that are not done (layout.cell_state) or whose output fails its
    check; they never enter a table."""
    records, problems = [], []
    nonces: dict[str, str | None] = {}   # upstream cell -> its nonce, checked once
    for key in expected:
        d = os.path.join(exp, key)   # strings: pathlib's parsing was a fifth of the collector's time
        meta = read_json(os.path.join(d, layout.JOB)) or {}
        kind = meta.get("kind", "eval" if key.startswith("eval/") else "train")
        want = KINDS[kind].outputs[0] if KINDS[kind].outputs else "summary.json"
        # (outputs are checked below on the data read once: a done cell costs three reads, no stat)
        state = layout.cell_state(d, kind, (), meta.get("upstream", []), nonces)
        data = read_json(os.path.join(d, want)) if state in ("done", "stale") else None
        # its own output first: a corrupt cell is corrupt, whatever its upstream
        if state in ("done", "stale"):
            problem = f"{layout.JOB} unreadable" if not meta else f"{want} unreadable" if data is None else \
                json_problem(data, want, kind)
            state, detail = ("corrupt", problem) if problem else \
                (state, "made from an upstream cell that is gone, corrupt or redone")
        else:
            detail = {"todo": "never started" if not os.path.exists(d) else "no done marker",
                      "corrupt": "its done marker is unreadable"}.get(state) or \
                (read_json(os.path.join(d, layout.FAILED)) or {}).get("error", state)
        if state != "done":   # never tabled; the next run redoes it
            problems.append((key, state, detail))
            continue
        base = ((meta.get("job") or {}).get("base") or {}).get("path", "")
        records.append({"key": key, "stage": key.split("/")[0], "coords": meta.get("coords", {}),
                        "data": data, "base": base})
    return records, problems


def metric_of(rec: dict, name: str) -> dict | None:
    return next((m for m in rec["data"].get("metrics", []) if m.get("name") == name and
                 isinstance(m.get("value"), (int, float))), None)


def seed_of(coords: dict):
    """What pairs a cell with the same chain's other cells: its seed, or (pre-training seed, seed)
    where the study has several pre-training seeds (then every mean and CI is over both)."""
    return (coords["pretrain_seed"],
            coords.get("seed")) if "pretrain_seed" in coords else coords.get("seed")


def pretrain_sizes(records) -> dict:
    """Toy models' pre-training volume (|D_pre|): the milestone of each eval's pretrain base."""
    sizes = {}
    for r in records:
        path = r.get("base", "")
        if r["stage"] == "eval" and path.startswith("@pretrain/") and "/checkpoints/" in path:
            milestone = layout.milestone_volume(path.rsplit("/", 1)[1])
            if milestone is not None:
                sizes[r["coords"].get("model")] = milestone
    return sizes
