"""Run one cell: the function every executor calls (local subprocess, submitit on Slurm, debug
in-process).

A cell folder holds `job.json` (stage, kind, id, job, coords, upstream), written by the local
executor before it starts the cell and by the Slurm task itself (the launcher passes it in the
task's pickle). The worker exits at once if the done marker is there, writes `record.json` (resolved
job, fingerprint, git commit, argv, Slurm ids, image), dispatches to the stage's `main`, and writes
`DONE` last (rank 0).

    python -m launch run-cell runs/<experiment>/<stage>/<cell id>
Exit codes: 0 done, 2 bad input (one `error:` line), 3 a source that failed to load (one `error:`
line with the real cause), 75 preempted after saving (rerun to resume), 1 failure.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path

from launch.core import layout
from launch.core.env import hub_commits
from launch.core.jobs import EXIT_BAD_INPUT, EXIT_LOAD, EXIT_PREEMPTED, KINDS, Context, LoadError, Preempted
from launch.core.schema import ConfigError, build
from launch.core.spec import Runtime


def write_job(cell_dir: Path, meta: dict) -> None:
    """Prepare a cell to run: its job.json (Plan.meta; a done marker stays: the worker decides,
    layout.cell_state). No fsync and one line: job.json is rewritten from the plan whenever the cell
    is started (bench P4)."""
    layout.atomic_write_json(Path(cell_dir) / layout.JOB, meta, durable=False, indent=None)


def read_job(cell_dir: Path):
    path = Path(cell_dir) / layout.JOB
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("cell_dir", f"{cell_dir} has no job.json",
                          "plan and submit the study first") from None
    except ValueError:
        raise ConfigError("cell_dir", f"{path} is not valid JSON",
                          "delete the cell folder and resubmit") from None
    if not isinstance(meta, dict):
        raise ConfigError("job.json", f"{path} holds a {type(meta).__name__}, not a cell's job",
                          "delete the cell folder and resubmit")
    missing = [k for k in ("stage", "kind", "id", "job") if k not in meta]
    if missing:
        raise ConfigError("job.json", f"{path} lacks {', '.join(missing)}",
                          "delete the cell folder and resubmit")
    kind = meta.get("kind")
    if kind not in KINDS:
        raise ConfigError("job.kind", f"unknown cell kind {kind!r} in {path}",
                          "delete the cell folder and resubmit")
    if not isinstance(meta["job"], dict):
        raise ConfigError("job.job", f"{path}: the job is a {type(meta['job']).__name__}, not a "
                                     "mapping",
                          "delete the cell folder and resubmit")
    for key, typ in (("outputs", list), ("upstream", list), ("coords", dict), ("identity", dict),
                     ("runtime", dict)):
        meta.setdefault(key, typ())
        if not isinstance(meta[key], typ) or typ is list and not all(isinstance(x, str)
                                                                     for x in meta[key]):
            raise ConfigError(f"job.{key}", f"{path}: {key} is {json.dumps(meta[key])[:60]}, not a "
                              f"{'list of names' if typ is list else 'mapping'}",
                              "delete the cell folder and resubmit")
    build(Runtime, meta["runtime"], "runtime")
    return meta, build(KINDS[kind].job, meta["job"], "job")


def check_code() -> None:
    """A job imports the code its submission snapshotted (ELASTICA_CODE, launch.core.env): an image
    whose own PYTHONPATH won, or a missing bind, would run other code under this commit's name."""
    want = os.environ.get("ELASTICA_CODE")
    here = Path(__file__).resolve().parent.parent
    if want and Path(want).resolve() != here:
        raise ConfigError("PYTHONPATH", f"this job imported the code in {here}, not its snapshot "
                                        f"{want}",
                          "bind the runs root into the image, and rebuild an image that sets "
                          "PYTHONPATH without it")


def run_cell(cell_dir: str | Path, rerun: bool = False, invalidate: bool = False) -> list[str]:
    """Run the cell in this process; returns its outputs. Raises ConfigError / Preempted.

    rerun: run a done cell again (debugging). Its new done marker keeps the old nonce, so the cells
    made from it stay valid; with invalidate it gets a new one, and they rerun at the next run."""
    cell_dir = Path(cell_dir).resolve()
    check_code()
    meta, job = read_job(cell_dir)
    done = lambda: layout.cell_state(cell_dir, meta["kind"], meta["outputs"],
                                     meta["upstream"]) == "done"
    old = layout.read_done(cell_dir) if rerun else None
    nonce = old.get("nonce") if old and not invalidate else None
    if rerun:
        done = lambda: False
    if done():
        return meta.get("outputs", [])
    exp_dir = cell_dir.parent.parent
    rank = int(os.environ.get("RANK", "0"))
    with Claim(cell_dir, rank, done) as claim:
        if not claim.held or done():   # finished elsewhere while we waited
            return meta.get("outputs", [])
        return _run(cell_dir, meta, job, exp_dir, rank, nonce)


def _run(cell_dir: Path, meta: dict, job, exp_dir: Path, rank: int,
         nonce: str | None = None) -> list[str]:
    if rank == 0:
        (cell_dir / layout.FAILED).unlink(missing_ok=True)
        # where and how it ran: never identity
        runtime = {**layout.runtime_info(), **meta["runtime"]}
        layout.atomic_write_json(cell_dir / layout.RECORD, {
            "id": meta["id"], "stage": meta["stage"], "kind": meta["kind"],
            "coords": meta["coords"], "upstream": meta["upstream"],
            "fingerprint": meta["id"].rsplit("-", 1)[-1], "identity": meta["identity"],
            "git_commit": layout.git_commit(), "runtime": runtime,
            # the commit each hub source resolved to in the cache it loads from
            "sources": hub_commits(meta["job"])})
        # one line per start: requeues, resumes, reruns
        with open(cell_dir / "attempts.jsonl", "a") as f:
            f.write(json.dumps({k: runtime[k] for k in ("started", "host", "slurm_job_id")}) + "\n")
    module, func = KINDS[meta["kind"]].entry.split(":")
    entry = getattr(importlib.import_module(module), func)
    ctx = Context(key=f"{meta['stage']}/{meta['id']}", coords=meta["coords"],
                  upstream=tuple(meta["upstream"]),
                  out_dir=Path(cell_dir), exp_dir=Path(exp_dir),
                  runtime=build(Runtime, meta["runtime"], "runtime"))
    outputs = entry(job, ctx) or []
    if rank == 0:
        made_from = {u: layout.upstream_nonce(exp_dir, u) for u in meta.get("upstream", [])}
        layout.write_done(cell_dir, milestones=list(outputs), id=meta["id"], kind=meta["kind"],
                          upstream=made_from, **({"nonce": nonce} if nonce else {}))
    return list(outputs)


def owner_id() -> str:
    """Who runs this cell: the Slurm job (all its ranks and incarnations) or this process."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and \
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}" or \
        os.environ.get("SLURM_JOB_ID")
    if job:
        return f"slurm:{job}"
    # ranks started together (torchrun-like): one owner
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"dist:{os.uname().nodename}:{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    return f"pid:{os.uname().nodename}:{os.getpid()}"


class Claim:
    """A per-cell claim so that two submissions never train one cell twice.

    Rank 0 creates `CLAIM` with O_EXCL and a heartbeat thread refreshes its mtime. A claim held by
    another owner is waited on until the cell is done there (then nothing to do) or the claim goes
    stale (its holder crashed: no heartbeat for ELASTICA_CLAIM_STALE_S seconds, or its local process
    is gone); then it is taken over. A requeued Slurm job owns its earlier incarnation's claim.
    Other ranks wait for their job's claim."""

    def __init__(self, cell_dir: Path, rank: int, done):
        self.path, self.rank, self.me, self.done = Path(cell_dir) / layout.CLAIM, rank, owner_id(), done
        self.held = False
        self.stale_s = float(os.environ.get("ELASTICA_CLAIM_STALE_S", "600"))
        self.beat_s = float(os.environ.get("ELASTICA_HEARTBEAT_S", "30"))
        self._stop = threading.Event()

    def _holder(self) -> tuple[str, float] | None:
        try:
            return self.path.read_text().strip(), self.path.stat().st_mtime
        except (OSError, ValueError):
            return None

    def _stale(self, owner: str, mtime: float) -> bool:
        if owner == self.me:
            return True
        if owner.startswith(f"pid:{os.uname().nodename}:"):
            try:
                os.kill(int(owner.rsplit(":", 1)[1]), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError):
                pass
        return time.time() - mtime > self.stale_s

    def __enter__(self):
        # wait until rank 0 of this job holds the claim (or the cell is done elsewhere)
        if self.rank != 0:
            while (h := self._holder()) is None or h[0] != self.me:
                if self.done():
                    return self
                time.sleep(0.5)
            self.held = True
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                with os.fdopen(fd, "w") as f:
                    f.write(self.me + "\n")
                break
            except FileExistsError:
                h = self._holder()
                if h is None:
                    continue
                if self._stale(*h):
                    self.path.unlink(missing_ok=True)   # take over a crashed holder's claim
                    continue
                if self.done():
                    return self
                time.sleep(min(5.0, self.beat_s))
        self.held = True
        threading.Thread(target=self._beat, daemon=True).start()
        return self

    def _beat(self):
        while not self._stop.wait(self.beat_s):
            try:
                os.utime(self.path)
            except OSError:
                return

    def __exit__(self, *exc):
        self._stop.set()
        if self.rank == 0 and self.held and (h := self._holder()) and h[0] == self.me:
            self.path.unlink(missing_ok=True)
        return False


def exit_now(code: int) -> None:
    """Flush stdout and stderr and end this process without the interpreter's teardown (a done or
    preempted cell process: see close_distributed)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def close_distributed() -> None:
    """Destroy the process group while the interpreter is still whole. Left to interpreter teardown,
    gloo's worker threads can release tensors after the GIL is gone and abort a rank that finished
    its cell (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#190489,
    torchtitan#1342). Call it only where every rank ends together (done, or a saved preemption):
    after a failure another rank may still be inside a collective."""
    if "torch.distributed" not in sys.modules:   # world and collect cells never import torch
        return
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        comm = sys.modules.get("deepspeed.comm.comm")
        if comm is not None and comm.cdb is not None:
            # DeepSpeed's way: it also drops the groups it cached, so that the next cell of this
            # process (run_cells) builds its engine on the new process group
            comm.destroy_process_group()
        else:
            dist.destroy_process_group()


def run_cell_dir(cell_dir: str | Path, rerun: bool = False, invalidate: bool = False) -> int:
    """CLI wrapper: exit codes as in the module docstring."""
    try:
        run_cell(cell_dir, rerun, invalidate)
        close_distributed()
        return 0
    except ConfigError as e:
        print(e.line(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except LoadError as e:
        print(e.line(), file=sys.stderr)
        return EXIT_LOAD
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        close_distributed()
        return EXIT_PREEMPTED
    # disk full reaches us as OSError or wrapped by a writer library
    except Exception as e:
        why = str(e)
        if not isinstance(e, OSError) and "No space left on device" not in why and "Disk quota" not in why:
            raise
        what = (f"{e.strerror} writing {e.filename}" if isinstance(e, OSError) and e.strerror else
                "No space left on device" if "No space left" in why else why.splitlines()[0][:200])
        print(f"error: {cell_dir}: {what} (free space or fix permissions, then rerun: the cell "
              "resumes)",
              file=sys.stderr)
        return 1


@contextmanager
def _output_to(path: Path):
    """Append this process's stdout and stderr (file descriptors: libraries, children) to path."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def run_cells(cell_dirs, logs: bool = True) -> int:
    """Run cells in this process, in order: what the local executor runs (a stage's eval cells in
    one process, so that the interpreter, torch and the scorer load once; eval.evaluate caches what
    cells share) and what a Slurm task that packs several cells runs (logs=False: its log is the
    task's). Per cell as alone: its done marker, claim, record and resume; its output appended to
    its own log.txt (logs=True); a failure is that cell's alone (its FAILED record; the next cell
    runs). A preemption stops the loop (the rest resume at the next run). Prints one JSON line per
    cell, {"cell", "rc"}, on stdout; returns 0 when every cell is done, else the first of 75
    (preempted), 2 (bad input), 3 (a failed load), 1 (failure)."""
    report = os.fdopen(os.dup(1), "w", buffering=1)
    rcs = []
    for d in map(Path, cell_dirs):
        with _output_to(d / "log.txt") if logs else nullcontext():
            try:
                rc = run_cell_dir(d)
            except Exception:  # noqa: BLE001 - the cell fails alone; its traceback is in its log
                traceback.print_exc()
                rc = 1
        if rc not in (0, EXIT_PREEMPTED):
            why = (d / "log.txt").read_text(errors="replace").strip().splitlines()[-1:] if logs else []
            layout.atomic_write_json(d / layout.FAILED,
                                     {"rc": rc, "error": (why or [f"exit {rc}"])[0][:500]})
        print(json.dumps({"cell": str(d), "rc": rc}), file=report)
        rcs.append(rc)
        if rc == EXIT_PREEMPTED:
            break
    report.close()
    return next((c for c in (EXIT_PREEMPTED, EXIT_BAD_INPUT, EXIT_LOAD, 1) if c in rcs),
                0) if any(rcs) else 0
