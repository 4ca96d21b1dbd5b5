"""P7 and P11: `make demo` end to end, and its eval stage's seconds per cell, with each
stage's cells fused into worker processes (the local executor's default: Python, torch, DeepSpeed
and the scorer load once per worker) against one process per cell (what the executor did before,
`run_plan(fuse=False)`: what a user would otherwise run), side by side in one run, each into a fresh
runs folder, the environment already set up (no `make setup`), both with make demo's two cells at
once (JOBS). Results are compared bit for bit: every eval cell's result.json metrics, every
generation, results.csv.

    .venv/bin/python bench/demo_time.py
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, report
from rich.console import Console

from launch.local import run_plan
from launch.plan import make_plan
from launch.core.profile import load_profile
from launch.core.spec import load_spec

CONFIG, PROFILE = ROOT / "configs/toy/setting2.yaml", ROOT / "configs/profiles/local-cpu.yaml"
JOBS = 2   # the Makefile's JOBS


def demo(fuse: bool) -> tuple[Path, dict]:
    """The demo's two commands (run, then the collector's CLI), stage by stage, timed."""
    runs = Path(tempfile.mkdtemp(prefix=f"bench-demo-{'fused' if fuse else 'percell'}-"))
    plan, profile = make_plan(load_spec(CONFIG)), load_profile(PROFILE)
    times, t0 = {}, time.perf_counter()
    for stage in plan.stages:
        t = time.perf_counter()
        rc = run_plan(plan, runs, profile, only=stage, fuse=fuse, jobs=JOBS,
                      console=Console(file=io.StringIO()))
        assert rc == 0, f"{stage} failed (fuse={fuse})"
        times[stage] = time.perf_counter() - t
    subprocess.run([sys.executable, "-m", "launch", "collect", str(runs / plan.spec.experiment)],
                   cwd=ROOT, check=True, capture_output=True)
    times["total"] = time.perf_counter() - t0
    times["eval_cells"] = len(plan.stages["eval"])
    return runs / plan.spec.experiment, times


def outputs(exp: Path) -> dict:
    out = {f"{p.parent.name}/{p.name}": p.read_text()
           for p in sorted(exp.glob("eval/*/generations.jsonl"))}
    out |= {f"{p.parent.name}/metrics": json.loads(p.read_text())["metrics"]
            for p in exp.glob("eval/*/result.json")}
    out["results.csv"] = (exp / "report" / "results.csv").read_text()
    return out


def main():
    fused, t_fused = demo(True)        # first: the page cache then favours the baseline, not us
    percell, t_percell = demo(False)
    same = outputs(fused) == outputs(percell)
    n = t_fused["eval_cells"]
    stages = ", ".join(f"{s} {t_percell[s]:.0f} -> {t_fused[s]:.0f} s" for s in t_fused
                       if s not in ("total", "eval_cells"))
    report(id="P7", measure="make demo end to end without setup (toy Setting II, 1 seed, "
                            f"matched-start control, {JOBS} cells at once)",
           value=round(t_fused["total"] / 60, 2), baseline="one process per cell "
                                                           f"{t_percell['total'] / 60:.2f} min",
           ratio=round(t_fused["total"] / t_percell["total"], 2),
           target="< 3 min, results identical",
           met=same and t_fused["total"] < 180, runs=f"one run each; per stage: {stages}")
    report(id="P11", measure=f"eval stage, seconds per cell ({n} cells, {JOBS} worker processes "
                             "per stage)",
           value=round(t_fused["eval"] / n, 2), baseline="one process per cell "
                                                         f"{t_percell['eval'] / n:.2f} s/cell",
           ratio=round(t_fused["eval"] / t_percell["eval"], 2),
           target="fewer s/cell, results identical bit for bit",
           met=same and t_fused["eval"] < t_percell["eval"],
           runs=f"every result.json metric, generation and results.csv identical: {same}")
    for exp in (fused, percell):
        shutil.rmtree(exp.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
