"""The local executor: run a plan's stages in order on this machine, each cell as its own process.

Same stages, same cells, same worker as on Slurm; a stage starts when the one before it has finished. Cells
whose done marker exists are skipped, so running again continues where a crash or Ctrl-C left off. Each cell's
output goes to `<cell dir>/log.txt`.

    python -m launch run configs/toy/setting2.yaml            # or: make local CONFIG=...
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from launch.layout import atomic_write_json
from launch.plan import Plan
from launch.spec import Profile
from launch.worker import EXIT_PREEMPTED, job_meta, write_job


def cell_env(profile: Profile) -> dict:
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", profile.wandb_mode)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(profile.env)
    if profile.hf_home:
        env.update(HF_HOME=profile.hf_home, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def run_plan(plan: Plan, runs_root: str | Path, profile: Profile, only: str | None = None,
             console: Console | None = None) -> int:
    con = console or Console(stderr=True)
    env = cell_env(profile)
    stages = {k: v for k, v in plan.stages.items() if only in (None, k)}
    total = sum(len(v) for v in stages.values())
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=con, transient=False) as progress:
        overall = progress.add_task(f"[bold]{plan.spec.experiment}", total=total)
        pending = plan.todo(runs_root)
        for name, cells in stages.items():
            task = progress.add_task(f"  {name}", total=len(cells))
            for cell in cells:
                d = plan.cell_dir(runs_root, cell)
                if cell.key in pending:
                    d.mkdir(parents=True, exist_ok=True)
                    write_job(d, job_meta(cell))
                    with open(d / "log.txt", "a") as log:
                        rc = subprocess.call([sys.executable, "-m", "launch", "run-cell", str(d)], env=env,
                                             stdout=log, stderr=subprocess.STDOUT)
                    if rc != 0:
                        progress.stop()
                        tail = (d / "log.txt").read_text().strip().splitlines()[-1:] or [""]
                        why = "preempted (run again to resume)" if rc == EXIT_PREEMPTED else f"exit {rc}"
                        atomic_write_json(d / "FAILED", {"rc": rc, "error": tail[0][:500]})
                        con.print(f"[red]cell {cell.key} failed: {why}: {tail[0]}\n  log: {d / 'log.txt'}")
                        return 2 if rc == 2 else 1
                progress.advance(task)
                progress.advance(overall)
    report = plan.exp_dir(runs_root) / "report"
    con.print(f"done: {plan.exp_dir(runs_root)}" + (f"  (report: {report})" if report.exists() else ""))
    return 0


def run_inprocess(plan: Plan, runs_root: str | Path, only: str | None = None) -> int:
    """The debug executor: every cell in this process, in order, so that pdb and breakpoints work."""
    from launch.worker import close_distributed, run_cell
    pending = plan.todo(runs_root)
    for name, cells in plan.stages.items():
        if only not in (None, name):
            continue
        for cell in cells:
            if cell.key not in pending:
                continue
            d = plan.cell_dir(runs_root, cell)
            d.mkdir(parents=True, exist_ok=True)
            write_job(d, job_meta(cell))
            print(f"{cell.key}", file=sys.stderr)
            run_cell(d)
    close_distributed()
    return 0
