"""The local executor: run a plan's stages in order on this machine.

Same stages, same cells, same worker as on Slurm; a stage starts when the one before it has
finished. The cells of a stage whose kind allows it (launch.core.jobs.KINDS: everything but
training) run in one worker process (`python -m launch run-cells`), so that Python, torch and the
scorer load once per stage instead of once per cell; each training cell is its own process (its own
DeepSpeed run). Either way every cell keeps its own done marker, log (`<cell dir>/log.txt`), FAILED
record and resume, and a cell that fails fails alone; the next stage does not start after a failure.
Cells whose done marker exists are skipped, so running again continues where a crash or Ctrl-C left
off. Cells another study under the same runs root has done are taken first (Plan.adopt). `--jobs N`
runs up to N workers at once within a stage (a fused stage cut into N contiguous parts).

    python -m launch run configs/toy/setting2.yaml [--jobs 2]   # or: make local CONFIG=...
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from launch.core import layout
from launch.core.env import cell_env, job_env
from launch.core.jobs import EXIT_PREEMPTED
from launch.plan import Plan
from launch.core.profile import Profile
from launch.worker import close_distributed, run_cell, write_job


def run_plan(plan: Plan, runs_root: str | Path, profile: Profile, only: str | None = None,
             console: Console | None = None, fuse: bool = True, jobs: int = 1) -> int:
    """fuse=False runs every cell as its own process (the unfused baseline of bench/demo_time.py).
    jobs: how many worker processes run at once (cells of one stage; a fused stage is cut into that
    many parts), each with cpus/N threads, N the workers its stage runs at once (a stage of one
    cell gets every core), unless OMP_NUM_THREADS is set. Runtime only: at equal threads per cell
    every result is the same bit for bit (the thread count itself changes float summation order,
    as another machine does)."""
    con = console or Console(stderr=True)
    env = cell_env(profile)
    threads = jobs > 1 and "OMP_NUM_THREADS" not in env
    if reused := plan.adopt(runs_root, profile):
        con.print(f"{len(reused)} cells taken from other studies under {runs_root} (the same "
                  "cells, done there)")
    stages = {k: v for k, v in plan.stages.items() if only in (None, k)}
    total = sum(len(v) for v in stages.values())
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=con, transient=False) as progress:
        overall = progress.add_task(f"[bold]{plan.spec.experiment}", total=total)
        pending = plan.todo(runs_root)
        for name, cells in stages.items():
            task = progress.add_task(f"  {name}", total=len(cells))
            done = len(cells) - sum(c.key in pending for c in cells)
            progress.advance(task, done)
            progress.advance(overall, done)
            todo = [plan.cell_dir(runs_root, c) for c in cells if c.key in pending]
            for c in (c for c in cells if c.key in pending):
                # (write_job makes the folder)
                write_job(plan.cell_dir(runs_root, c), plan.meta(c, profile))
            # one worker per part, each part a contiguous run
            if fuse and todo:
                n = min(jobs, len(todo))
                groups = [todo[len(todo) * i // n:len(todo) * (i + 1) // n] for i in range(n)]
            else:
                groups = [[d] for d in todo]

            def advance(_result, t=task) -> None:
                progress.advance(t)
                progress.advance(overall)
            failed = run_groups(groups, {**env, "OMP_NUM_THREADS": str(stage_threads(
                jobs, len(groups)))} if threads else env, jobs, advance)
            if failed:
                progress.stop()
                for r in failed:
                    d = Path(r["cell"])
                    why = "preempted (run again to resume)" if r["rc"] == EXIT_PREEMPTED else f"exit {r['rc']}"
                    err = (layout.read_json(d / layout.FAILED) or {}).get("error", "")
                    con.print(f"[red]cell {d.parent.name}/{d.name} failed: {why}: {err}\n  log: "
                              f"{d / 'log.txt'}")
                return 2 if all(r["rc"] == 2 for r in failed) else 1
    report = plan.exp_dir(runs_root) / "report"
    con.print(f"done: {plan.exp_dir(runs_root)}" + (f"  (report: {report})" if report.exists()
                                                    else ""))
    return 0


def stage_threads(jobs: int, workers: int) -> int:
    """Threads per cell under --jobs: the cores shared by the workers a stage runs at once."""
    return max(1, (os.cpu_count() or 1) // max(1, min(jobs, workers)))


def run_groups(groups: list[list[Path]], env: dict, jobs: int, on_cell) -> list[dict]:
    """Run each group of cells in a `python -m launch run-cells` worker, at most `jobs` workers at
    once; on_cell is called once per finished cell. Returns the failed cells ({"cell", "rc"}); after
    a preemption no new worker starts (the running ones finish)."""
    events: queue.Queue = queue.Queue()
    failed: list[dict] = []

    def watch(group, proc):   # one thread per worker: its lines, then its exit
        for line in proc.stdout:
            events.put(("cell", group, json.loads(line)))
        events.put(("exit", group, proc.wait()))
    waiting, running, reported, stop = list(groups), 0, set(), False
    while waiting or running:
        while waiting and running < jobs and not stop:
            group = waiting.pop(0)
            proc = subprocess.Popen([sys.executable, "-m", "launch", "run-cells", *map(str, group)],
                                    env=env, stdout=subprocess.PIPE, text=True)
            threading.Thread(target=watch, args=(group, proc), daemon=True).start()
            running += 1
        if not running:
            break
        what, group, r = events.get()
        if what == "cell":   # one line per finished cell
            reported.add(r["cell"])
            if r["rc"] != 0:
                failed.append(r)
                stop |= r["rc"] == EXIT_PREEMPTED
            on_cell(r)
        else:
            running -= 1
            # a worker that died (killed, out of memory) leaves its unreported cells failed
            failed += [{"cell": str(d), "rc": r or 1} for d in group if str(d) not in reported]
            stop |= r == EXIT_PREEMPTED
    return failed


def run_inprocess(plan: Plan, runs_root: str | Path, profile: Profile,
                  only: str | None = None) -> int:
    """The debug executor: every cell in this process, in order, so pdb and breakpoints work."""
    os.environ.update(job_env(profile))
    plan.adopt(runs_root, profile)
    pending = plan.todo(runs_root)
    for name, cells in plan.stages.items():
        if only not in (None, name):
            continue
        for cell in cells:
            if cell.key not in pending:
                continue
            d = plan.cell_dir(runs_root, cell)
            d.mkdir(parents=True, exist_ok=True)
            write_job(d, plan.meta(cell, profile))
            print(f"{cell.key}", file=sys.stderr)
            run_cell(d)
    close_distributed()
    return 0
