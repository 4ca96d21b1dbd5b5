"""Run one cell: the function every executor calls (local subprocess, submitit on Slurm, debug in-process).

A cell folder holds `job.json` (written by the launcher: stage, kind, id, job, coords, upstream). The worker
exits at once if the done marker is there, writes `record.json` (resolved job, fingerprint, git commit, argv,
Slurm ids, image), dispatches to the stage's `main`, and writes `DONE` last (rank 0).

    python -m launch run-cell runs/<experiment>/<stage>/<cell id>
Exit codes: 0 done, 2 bad input (one `error:` line), 75 preempted after saving (rerun to resume), 1 failure.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from launch import layout
from launch.jobs import CollectJob, EvalJob, GenerateJob, TrainJob, WorldJob
from launch.spec import ConfigError, build

JOBS = {"train": TrainJob, "eval": EvalJob, "generate": GenerateJob, "world": WorldJob, "collect": CollectJob}
EXIT_PREEMPTED = 75


def write_job(cell_dir: Path, cell, job_json: dict) -> None:
    """Prepare a cell to run: its job.json, and no stale done marker (an upstream cell may have been redone)."""
    (Path(cell_dir) / layout.DONE).unlink(missing_ok=True)
    layout.atomic_write_json(Path(cell_dir) / "job.json", {
        "stage": cell.stage, "kind": cell.kind, "id": cell.id, "job": job_json, "coords": cell.coords,
        "upstream": list(cell.upstream), "outputs": list(cell.outputs), "identity": cell.identity})


def read_job(cell_dir: Path):
    path = Path(cell_dir) / "job.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("cell_dir", f"{cell_dir} has no job.json", "plan and submit the study first") from None
    except ValueError:
        raise ConfigError("cell_dir", f"{path} is not valid JSON", "delete the cell folder and resubmit") from None
    kind = meta.get("kind")
    if kind not in JOBS:
        raise ConfigError("job.kind", f"unknown cell kind {kind!r} in {path}", "delete the cell folder and resubmit")
    return meta, build(JOBS[kind], meta["job"], "job")


def run_cell(cell_dir: str | Path) -> list[str]:
    """Run the cell in this process; returns its outputs. Raises ConfigError / Preempted."""
    cell_dir = Path(cell_dir).resolve()
    meta, job = read_job(cell_dir)
    if layout.is_done(cell_dir, meta.get("outputs", [])):
        return meta.get("outputs", [])
    exp_dir = cell_dir.parent.parent
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        (cell_dir / "FAILED").unlink(missing_ok=True)
        runtime = layout.runtime_info()
        layout.atomic_write_json(cell_dir / layout.RECORD, {
            "id": meta["id"], "stage": meta["stage"], "kind": meta["kind"], "coords": meta["coords"],
            "upstream": meta["upstream"], "fingerprint": meta["id"].rsplit("-", 1)[-1], "identity": meta["identity"],
            "git_commit": layout.git_commit(), "runtime": runtime})
        with open(cell_dir / "attempts.jsonl", "a") as f:   # one line per start: requeues, resumes, reruns
            f.write(json.dumps({k: runtime[k] for k in ("started", "host", "slurm_job_id")}) + "\n")
    kind = meta["kind"]
    if kind == "train":
        from train.trainer import main
    elif kind == "eval":
        from eval.evaluate import main
    elif kind == "generate":
        from eval.evaluate import generate_main as main
    elif kind == "world":
        from train.toyworld import main
    else:
        from eval.collect import cell_main as main
    outputs = main(job, cell_dir, exp_dir) or []
    if rank == 0:
        layout.write_done(cell_dir, milestones=list(outputs), id=meta["id"])
    return list(outputs)


def run_cell_dir(cell_dir: str | Path) -> int:
    """CLI wrapper: exit codes as in the module docstring."""
    from train.trainer import Preempted
    try:
        run_cell(cell_dir)
        return 0
    except ConfigError as e:
        print(e.line(), file=sys.stderr)
        return 2
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
