"""Slurm submission with submitit: one array job per stage (chunked at MaxArraySize), chained by
dependencies.

`submit(plan, runs_root, profile)` skips done cells and stages, hands each task its job.json,
renders the sbatch parameters from the profile (never from the spec), and submits `CellTask` over
the cell folders with `SlurmExecutor.map_array`. A later stage waits on the arrays that hold its
upstream cells: `aftercorr` where task i needs only task i of one array, `afterok` otherwise, with
`kill-on-invalid-dep=yes`. Multi-node cells run one task per GPU; each task exports the
torch.distributed variables and runs the same worker as everywhere. With an image, tasks run as
`apptainer exec --nv --bind ... IMAGE python` (no --cleanenv: it strips SLURM_*). Secrets
(WANDB_API_KEY, HF_TOKEN) reach jobs through the inherited environment; nothing writes them to disk.

    python -m launch submit configs/setting2/imdb.yaml --profile configs/profiles/example-gpu.yaml [--dry-run]
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from launch import costs
from launch.core import layout
from launch.core.env import job_env
from launch.core.jobs import EXIT_PREEMPTED, Preempted
from launch.core.profile import Profile, Resources
from launch.core.schema import ConfigError
from launch.core.spec import STAGES
from launch.plan import Cell, Plan
from launch.worker import close_distributed, exit_now, run_cell, run_cells, write_job


def export_ranks() -> None:
    """torch.distributed's variables for this task from Slurm's. They replace any the job inherited
    (a job submitted from inside another job, a site module that sets RANK or MASTER_PORT:
    submitit's export refuses those), except the profile's master_port and master_addr
    (ELASTICA_MASTER_PORT, ELASTICA_MASTER_ADDR: firewalled sites, fake or multi-homed nodes)."""
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                          overwrite=True)
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if os.environ.get(f"ELASTICA_{var}"):
            os.environ[var] = os.environ[f"ELASTICA_{var}"]


class CellTask(submitit.helpers.Checkpointable):
    """What every Slurm task runs: export rank variables, run its cell (or, with the profile's
    cells_per_task, its cells in turn: a requeued task finds its done cells done and skips them; a
    cell that fails fails alone and the task fails at its end). After a time-limit or preemption
    signal the cell saves (training cells at the next step boundary) and every rank exits 75; the
    job script's teardown, on the host, requeues the job (`requeue_lines`): inside an image there is
    no scontrol, so nothing in the task requeues."""

    def __call__(self, cell_dirs: str | list[str], metas: dict | list | None = None) -> list[str]:
        one = isinstance(cell_dirs, str)
        dirs: list[str] = [cell_dirs] if isinstance(cell_dirs, str) else list(cell_dirs)
        each: list = [metas] if one else list(metas or [None] * len(dirs))
        for d, meta in zip(dirs, each):
            # every rank writes the same job.json atomically before reading it
            if meta is not None:
                write_job(Path(d), meta)
        if submitit.JobEnvironment().num_tasks > 1:
            export_ranks()
        if not one:   # packed cells (cells_per_task): each as alone, its failure its own
            rc = run_cells(dirs, logs=False)
            if rc == EXIT_PREEMPTED:
                _exit_preempted()
            if rc:
                raise RuntimeError(f"cells of this task failed (exit {rc}): see their FAILED "
                                   "records")
            atexit.register(_end_once_saved, submitit.JobEnvironment().paths.result_pickle)
            return []
        try:
            outputs = run_cell(dirs[0])
            close_distributed()
            atexit.register(_end_once_saved, submitit.JobEnvironment().paths.result_pickle)
            return outputs
        except Preempted as e:
            print(f"preempted: {e}; exit {EXIT_PREEMPTED}, the job script requeues", flush=True)
            close_distributed()
            _exit_preempted()
            return []

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on USR2 outside a training step loop (a cell still loading, an eval
        cell): nothing to save (the cell starts again from its files), so say so, exit 75 and let
        the job script requeue."""
        layout.mark_preempted("a signal outside the step loop: the cell starts again from its files")
        _exit_preempted()


def _end_once_saved(result: Path) -> None:
    """At exit of a task whose cells are done: once submitit has saved the task's success, end
    without the interpreter's teardown, where gloo's or DeepSpeed's threads can abort a done rank
    (SIGABRT: the job would fail and its dependants never start; launch.__main__ does the same)."""
    try:
        saved = pickle.loads(result.read_bytes())[0] == "success"
    except Exception:  # noqa: BLE001 (no result saved: the usual teardown and exit code)
        return
    if saved:
        exit_now(0)


def _exit_preempted():
    exit_now(EXIT_PREEMPTED)


JOB_ID = "jid=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}; jid=${jid:-$SLURM_JOB_ID}"


def marker_lines(marker_dir: Path) -> list[str]:
    """Job-script setup: where the tasks say "preempted, and the cell can resume"
    (ELASTICA_PREEMPTED, a file per job under the study's submitit folder, which every node and the
    image see), cleared before the step."""
    return [JOB_ID, f"export ELASTICA_PREEMPTED={shlex.quote(str(marker_dir))}/\"$jid\".preempted",
            "rm -f \"$ELASTICA_PREEMPTED\""]


def requeue_lines(max_requeues: int) -> list[str]:
    """Job-script teardown, run by the batch shell on the host after srun. The job is requeued (at
    most `max_requeues` times; Slurm counts them in SLURM_RESTART_COUNT) when its tasks said they
    were preempted and saved (the ELASTICA_PREEMPTED file, written once every rank has saved: with
    several ranks srun's --kill-on-bad-exit may kill the last ranks as the first exits, so srun's
    exit code alone cannot say it), or when the step exited 75 (a single task that saved). This is
    where scontrol is, also when tasks run in an image; a requeue that fails is reported."""
    return ["rc=$?",
            "if [ \"$rc\" -eq 75 ] || [ -e \"${ELASTICA_PREEMPTED:-/nonexistent}\" ]; then   # "
            "saved after USR2/TERM",
            f"  {JOB_ID}; rm -f \"${{ELASTICA_PREEMPTED:-/nonexistent}}\"",
            f"  if [ \"${{SLURM_RESTART_COUNT:-0}}\" -lt {max_requeues} ]; then",
            "    echo \"elastica: requeueing $jid (restart ${SLURM_RESTART_COUNT:-0}, step exit "
            "$rc)\"",
            "    scontrol requeue \"$jid\" || echo \"elastica: scontrol requeue $jid failed (exit "
            "$?): the cell saved; submit the study again to go on\" >&2",
            "  else echo \"elastica: $jid saved but was requeued too often (max_num_timeout)\" "
            ">&2; fi",
            "fi",
            "exit $rc"]


def python_command(profile: Profile) -> str:
    if not profile.image:
        return shlex.quote(sys.executable)
    binds = ",".join(profile.binds)
    return " ".join(["apptainer", "exec", "--nv"] + (["--bind", shlex.quote(binds)] if binds
                                                     else [])
                    + [shlex.quote(profile.image), "python"])


def setup_lines(profile: Profile, code: Path | None = None) -> list[str]:
    """The job script's exports, before Python starts."""
    return [f"export {k}={shlex.quote(str(v))}" for k, v in sorted(job_env(profile, code).items())]


def container_python() -> str:
    """The Python version the images are built with (containers/versions.env)."""
    env = Path(__file__).resolve().parent.parent / "containers" / "versions.env"
    for line in env.read_text().splitlines():
        if line.startswith("PYTHON_VERSION="):
            return line.split("=", 1)[1].strip()
    return ""


def check_image_python(profile: Profile) -> None:
    """Job pickles cross from the login node's Python into the image's: versions must match."""
    here = "%d.%d" % sys.version_info[:2]
    want = container_python()
    if profile.image and want and here != want:
        raise ConfigError("image", f"the login node runs Python {here}, the image is built with "
                                   f"Python {want} "
                          "(containers/versions.env); submitit's pickles need the same version",
                          f"run the launcher with Python {want} (make setup with python{want}), or "
                          "clear image")


def sbatch_params(profile: Profile, res: Resources, name: str, code: Path | None = None,
                  marker_dir: Path | None = None, light: bool = False) -> dict:
    """submitit's parameters for one array: the profile's resources and site options, never the
    spec's; preemption markers under `marker_dir` (the study's submitit folder). light: a world or
    collect stage (no GPU, the CPU partition where the site has one)."""
    tasks = max(1, res.gpus_per_node)
    # srun does not pass --cpus-per-task on to its tasks in Slurm 22.05-23.02; one dead rank ends
    # the step, so that the others do not wait in a collective until the time limit
    srun = [f"--cpus-per-task={res.cpus_per_task}", "--kill-on-bad-exit=1", *profile.srun_args]
    p = {"job_name": name, "time": res.time_min, "nodes": res.nodes, "ntasks_per_node": tasks,
         "cpus_per_task": res.cpus_per_task, "array_parallelism": profile.array_parallelism,
         "signal_delay_s": profile.signal_delay_s, "stderr_to_stdout": True,
         "setup": setup_lines(profile, code) + (marker_lines(marker_dir) if marker_dir else []),
         "teardown": requeue_lines(profile.max_num_timeout), "srun_args": srun,
         # submitit would write --wckey=submitit, which sites may refuse
         "wckey": profile.wckey or None}
    if res.gpus_per_node:
        if profile.gpu_request == "gres":
            p["gres"] = f"gpu:{profile.gpu_type + ':' if profile.gpu_type else ''}{res.gpus_per_node}"
        else:
            p["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb:
        p["mem"] = f"{res.mem_gb}GB"
    partition = profile.cpu_partition if light and profile.cpu_partition else profile.partition
    if partition:
        p["partition"] = partition
    for key in ("account", "qos", "comment", "mail_user", "mail_type"):
        if getattr(profile, key):
            p[key] = getattr(profile, key)
    if profile.constraint and not light:
        p["constraint"] = profile.constraint
    if profile.exclusive and not light:
        p["exclusive"] = True
    extra = {**({"reservation": profile.reservation} if profile.reservation else {}),
             **profile.sbatch_extra}
    if extra:
        p["additional_parameters"] = extra
    return p


def max_array_size() -> int:
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                             timeout=30).stdout
        for line in out.splitlines():
            if line.strip().startswith("MaxArraySize"):
                return int(line.split("=")[1])
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return 1001


@dataclass
class Array:
    stage: str
    chunk: int
    cells: list[Cell]
    params: dict
    job_id: str = ""
    script: str = ""
    # (kind, index of an earlier array | job id of a live task)
    deps: list = field(default_factory=list)
    # cells each array task runs in turn (Resources.cells_per_task)
    per_task: int = 1

    @property
    def tasks(self) -> list[list[Cell]]:
        return [self.cells[i:i + self.per_task] for i in range(0, len(self.cells), self.per_task)]


def build_arrays(plan: Plan, runs_root, profile: Profile, only: str | None = None,
                 chunk: int = 1001, live: dict[str, str] | None = None, code: Path | None = None,
                 reused: dict | None = None) -> list[Array]:
    """The arrays to submit, in stage order, with their dependency kind on earlier arrays:
    `aftercorr` where each task needs only the task of the same index of one array of as many tasks,
    `afterok` otherwise. Cells with a live job (`live`: cell key -> its queued or running task's job
    id) are not submitted again; a new cell made from one waits on that job (afterok on the task). A
    stage's cells are packed res.cells_per_task to a task. Cells in `reused` (Plan.reusable: done by
    another study) are taken before sbatch, so nothing waits on them."""
    arrays: list[Array] = []
    where: dict[str, tuple[int, int]] = {}      # cell key -> (array index in `arrays`, task index)
    pending = plan.todo(runs_root) - set(reused or {})
    live = live or {}
    for stage, cells in plan.stages.items():
        if only and stage != only:
            continue
        group = [c for c in cells if c.key in pending and c.key not in live]
        if group:
            res = costs.stage_resources(stage, group, profile)
            size = chunk * res.cells_per_task
            for k in range(0, len(group), size):
                part = group[k:k + size]
                a = Array(stage, k // size, part,
                          sbatch_params(profile, res, f"{plan.spec.experiment}:{stage}",
                                                                code,
                                        plan.exp_dir(runs_root) / "submitit",
                                                                light=STAGES[stage] == "light"),
                          per_task=res.cells_per_task)
                ups = [{where[u] for c in cells for u in c.upstream if u in where}
                       for cells in a.tasks]
                arrs = sorted({arr for us in ups for arr, _ in us})
                corr = (len(arrs) == 1 and all(us == {(arrs[0], t)} for t, us in enumerate(ups))
                        and len(arrays[arrs[0]].tasks) == len(a.tasks))
                a.deps = [("aftercorr" if corr else "afterok", i) for i in arrs]
                a.deps += [("afterok", j) for j in sorted({live[u] for c in part for u in c.upstream
                                                           if u in live})]
                for t, cells in enumerate(a.tasks):
                    for c in cells:
                        where[c.key] = (len(arrays), t)
                arrays.append(a)
    return arrays


def array_params(a: Array, ids: list[str]) -> dict:
    """The sbatch parameters of one array, as submitted and as --dry-run prints them. Both
    dependency keys are always set: submitit's executor keeps parameters between update_parameters
    calls, so an array without upstream must say None, not inherit the previous array's dependency.
    """
    deps = ",".join(f"{kind}:{ids[i] if isinstance(i, int) else i}" for kind, i in a.deps)
    extra = {**(a.params.get("additional_parameters") or {}),
             **({"kill-on-invalid-dep": "yes"} if deps else {})}
    return {**a.params, "dependency": deps or None, "additional_parameters": extra or None}


def render_script(a: Array, folder: Path, profile: Profile, ids: list[str]) -> str:
    params = array_params(a, ids)
    cmd = " ".join([python_command(profile), "-u -m submitit.core._submit",
                    shlex.quote(str(folder))])
    return _make_sbatch_string(command=cmd, folder=folder,
                               map_count=len(a.tasks) if len(a.tasks) > 1 else None, **params)


def submit(plan: Plan, runs_root, profile: Profile, dry_run: bool = False, only: str | None = None,
           out=sys.stdout, allow_dirty: bool = False, before_first=None,
           ask_cluster: bool = True) -> list[Array]:
    """Submit every stage that has work; returns the arrays (with job ids unless dry_run). Jobs run
    the code snapshot of this submission (layout.code_snapshot), not the live checkout. Nothing is
    written before every array has passed `preflight`; then `before_first()` (the CLI saves the
    study into the run folder) and sbatch. A dry run prints the scripts, then asks the cluster
    (preflight) where sbatch is here, unless ask_cluster=False (the scripts alone, e.g. to render
    them on a laptop or in a test)."""
    exp = plan.exp_dir(runs_root)
    folder = exp / "submitit" / "%j"
    code = layout.code_snapshot(exp, allow_dirty=allow_dirty or dry_run, write=False)
    live = live_cells(exp)
    reused = {k: v for k, v in plan.reusable(runs_root).items() if only in (None, k.split("/")[0])}
    arrays = build_arrays(plan, runs_root, profile, only,
                          chunk=max_array_size() if not dry_run else 1001, live=live,
                          code=code, reused=reused)
    if reused:
        print(f"{len(reused)} cells are done in other studies under {runs_root}: "
              + ("they would be taken, not submitted" if dry_run else "taken, not submitted"),
              file=out)
    if live:
        print(f"{len(live)} cells already have a queued or running job: not submitted again "
              f"(jobs {', '.join(sorted({j.split('_')[0] for j in live.values()}))})", file=out)
    ids: list[str] = []
    if dry_run:
        for _i, a in enumerate(arrays):
            ids.append(f"<{a.stage}#{a.chunk}>")
            a.script = render_script(a, folder, profile, ids)
            deps = ", ".join(f"{k} {arrays[j].stage}#{arrays[j].chunk}" if isinstance(j, int)
                             else f"{k} job {j}"
                             for k, j in a.deps) or "none"
            print(f"== array {a.stage}#{a.chunk}: {len(a.cells)} cells in {len(a.tasks)} tasks, "
                  f"depends on: {deps}",
                  file=out)
            print(a.script, file=out)
        # a login node: what the cluster refuses, as the submit checks
        if ask_cluster and shutil.which("sbatch"):
            preflight(arrays, folder, profile)
        return arrays
    # a refused array stops the submission before anything is queued
    preflight(arrays, folder, profile)
    layout.code_snapshot(exp, allow_dirty=allow_dirty)
    if before_first is not None:
        before_first()
    plan.adopt(runs_root, profile, reused)
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=profile.max_num_timeout,
                                python=python_command(profile))
    manifest = exp / "manifest.jsonl"
    for a in arrays:
        params = array_params(a, ids)
        ex.update_parameters(**params)
        # job.json travels in submitit's per-task pickle and the task writes it: the login node
        # creates no cell folders (10,000 mkdirs + writes took seconds on a local disk, more on a
        # shared filesystem; bench P4)
        if a.per_task == 1:
            jobs = ex.map_array(CellTask(), [str(plan.cell_dir(runs_root, c)) for c in a.cells],
                                [plan.meta(c, profile) for c in a.cells])
        else:
            jobs = ex.map_array(CellTask(),
                                [[str(plan.cell_dir(runs_root, c)) for c in t] for t in a.tasks],
                                [[plan.meta(c, profile) for c in t] for t in a.tasks])
        a.job_id = jobs[0].job_id.split("_")[0]
        ids.append(a.job_id)
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "stage": a.stage, "chunk": a.chunk,
                 "job_id": a.job_id, "array": len(jobs) > 1,
                 "dependency": params["dependency"] or "",
                 "cells": [{"key": c.key, "task": i,
                            "job": j.job_id} for i, (t, j) in enumerate(zip(a.tasks, jobs))
                           for c in t],
                 "image": profile.image or "host", "profile": profile.name, "code": str(code),
                 "git_commit": (code / "COMMIT").read_text().strip()}
        with manifest.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        print(f"submitted {a.stage}#{a.chunk}: job {a.job_id}, {len(a.cells)} cells in {len(jobs)} "
              "tasks"
              + (f", {entry['dependency']}" if a.deps else ""), file=out)
    if not arrays:
        print("nothing to submit: every cell is done", file=out)
    return arrays


def preflight(arrays: list[Array], folder: Path, profile: Profile) -> None:
    """`sbatch --test-only` every array's script (without its dependency, whose job ids do not exist
    yet) before the first real sbatch: resources the cluster cannot give (more GPUs per node than
    its nodes have, an unknown partition or constraint) refuse the whole submission in one line,
    instead of failing after earlier arrays were queued."""
    for a in arrays:
        text = render_script(dataclasses.replace(a, deps=[]), folder, profile, [])
        with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
            f.write(text)
            f.flush()
            r = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True,
                               timeout=120)
        if r.returncode != 0:
            why = next((l for l in reversed(r.stderr.strip().splitlines()) if l.strip()),
                       f"exit {r.returncode}")
            raise ConfigError(f"{a.stage} array", f"Slurm refuses its job: {why.strip()[:240]}",
                              "fix the profile's resources for this cluster (nothing was submitted)")


# --------------------------------------------------------------------------------------- status
NO_RECORD = "submitted cells whose jobs sacct has no record of (is Slurm accounting, slurmdbd, enabled?)"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
            "BOOT_FAIL", "DEADLINE"}


def read_manifest(exp: Path) -> dict[str, dict]:
    """cell key -> its latest submission entry (job id of its task, stage, time) and `jobs`, every
    task id it was ever submitted as (oldest first)."""
    latest: dict[str, dict] = {}
    path = Path(exp) / "manifest.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            for c in e.get("cells", []):
                jobs = latest.get(c["key"], {}).get("jobs", []) + [c["job"]]
                latest[c["key"]] = {"job": c["job"], "stage": e["stage"], "time": e["time"],
                                    "jobs": jobs}
    return latest


def live_tasks(job_ids: list[str]) -> set[str]:
    """Task ids ('45_3', '46') of these jobs queued or running now (squeue: no accounting)."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    if not arrays:
        return set()
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(arrays)],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return {line.strip() for line in out.splitlines() if line.strip()}


def live_cells(exp: Path) -> dict[str, str]:
    """cell key -> task id of its queued or running job, from every submission in the manifest."""
    man = read_manifest(exp)
    live = live_tasks([j for m in man.values() for j in m["jobs"]])
    return {key: next(j for j in reversed(m["jobs"]) if j in live) for key, m in man.items()
            if any(j in live for j in m["jobs"])}


def sacct_states(job_ids: list[str], since: str) -> dict[str, str]:
    """Job states from Slurm accounting, for jobs active from `since` (our first submission, by the
    login node's clock; 10 minutes earlier for clock skew) on. Without that window sacct also
    returns older jobs that had the same id (ids restart when a controller's state is reset, and
    wrap at MaxJobId), and a job submitted seconds ago, not yet in slurmdbd, reads as that job."""
    if not job_ids:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    since = (datetime.fromisoformat(since) - timedelta(minutes=10)).isoformat(timespec="seconds")
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-S", since, "-j",
                              ",".join(arrays)],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for line in out.splitlines():
        if "|" in line:
            jid, st = line.split("|", 1)
            for task in task_ids(jid):
                states[task] = st.split()[0] if st else "UNKNOWN"
    return states


def task_ids(jid: str) -> list[str]:
    """sacct lists array tasks that never started as one range, '98_[0-3,7%4]': one id per task."""
    base, sep, rest = jid.partition("_[")
    if not sep:
        return [jid]
    out = []
    for part in rest.rstrip("]").split("%")[0].split(","):
        a, _, b = part.partition("-")
        out += [f"{base}_{i}" for i in range(int(a), int(b or a) + 1)]
    return out


def cell_states(plan: Plan, runs_root) -> list[dict]:
    """Each cell's state for status and wait: its folder's (Plan.states: done, stale, corrupt,
    running, failed, todo), and for a cell that is not done, what Slurm says of its latest
    submission (pending, running, failed, timed out, cancelled), or "not submitted"."""
    exp = plan.exp_dir(runs_root)
    man = read_manifest(exp)
    states = sacct_states([j for m in man.values() for j in m["jobs"]],
                          min((m["time"] for m in man.values()), default=""))
    rows = []
    for c, disk in zip(plan.cells, plan.states(runs_root).values()):
        d = plan.cell_dir(runs_root, c)
        m = man.get(c.key)
        if disk in ("done", "corrupt") or m is None and disk in ("running", "failed"):
            state = disk           # corrupt: resubmitting reruns it; running / failed: a local run
        elif m is None:
            state = "not submitted"
        # a live job of any submission of the cell speaks for it, else the latest submission's
        else:
            live = [j for j in m["jobs"] if states.get(j) in ("PENDING", "RUNNING", "REQUEUED")]
            m = {**m, "job": live[-1] if live else m["job"]}
            st = states.get(m["job"], "UNKNOWN")
            state = {"PENDING": "pending", "RUNNING": "running", "REQUEUED": "pending",
                     "COMPLETED": "failed",
                     "TIMEOUT": "timed out", "CANCELLED": "cancelled"}.get(st, "failed"
                                                                           if st in TERMINAL
                                                                             else st.lower())
            if state == "failed" and st == "COMPLETED" and disk == "stale":
                state = "stale"    # its own job finished; a cell upstream was redone since
        log = ""
        if m and state in ("failed", "timed out", "cancelled"):
            path = log_path(exp, m["job"])
            # cancelled before it started
            log = str(path) if state != "cancelled" or path.exists() else ""
        rows.append({"stage": c.stage, "cell": c.id, "state": state,
                     "job": (m or {}).get("job", ""), "log": log, "dir": str(d)})
    return rows


def log_path(exp: Path, job_id: str) -> Path:
    """Rank 0's log of a task: submitit's folder is the job id ('45_3/45_3_0_log.out')."""
    return Path(exp) / "submitit" / job_id / f"{job_id}_0_log.out"


def error_tail(row: dict, lines: int = 4) -> str:
    """The last lines of a failed cell's error: from the Slurm log of the first rank whose log holds
    one (a multi-rank cell's rank 0 may only say that a peer went away; a packed task's log holds
    every cell's traceback), else rank 0's, else the FAILED record the worker wrote."""
    failed, log = Path(row["dir"]) / layout.FAILED, Path(row["log"]) if row["log"] else None
    try:
        if log is not None and log.is_file():
            stem = log.name.removesuffix("_0_log.out")
            ranks = sorted(log.parent.glob(f"{stem}_*_log.out"),
                           key=lambda p: int(p.name.removesuffix("_log.out").rsplit("_", 1)[-1]
                                             or 0))
            texts = [(p, p.read_text(errors="replace").strip().splitlines()) for p in ranks
                     or [log]]
            which, text = next(((p, t) for p, t in texts
                                if any("Traceback" in l or l.startswith("error:")
                                                                 for l in t)), texts[0])
            rank = which.name.removesuffix("_log.out").rsplit("_", 1)[-1]
            head = [f"(rank {rank}'s log: {which.name})"] if len(ranks) > 1 else []
            shown = head + text[-lines:]
        else:
            shown = str((layout.read_json(failed) or {}).get("error", "")).splitlines()
    except (OSError, ValueError, AttributeError):
        shown = []
    return "\n".join("    " + l[:300] for l in shown[-(lines + 1):])


def wait(plan: Plan, runs_root, poll_s: float = 5.0, timeout_s: float | None = None,
         out=sys.stderr) -> int:
    """Block until every submitted cell is done or its job ended; 0 if the plan is all done."""
    t0 = time.time()
    last, hinted = "", False
    while True:
        rows = cell_states(plan, runs_root)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        line = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        if line != last:
            print(f"[{time.time() - t0:6.0f}s] {line}", file=out, flush=True)
            last = line
        if counts.get("unknown") and time.time() - t0 > 120 and not hinted:
            print(f"unknown: {counts['unknown']} {NO_RECORD}", file=out, flush=True)
            hinted = True
        if not any(r["state"] in ("pending", "running", "unknown") for r in rows):
            bad = [r for r in rows if r["state"] != "done"]
            for r in bad:
                if r["state"] != "cancelled" or r["log"]:
                    print(f"{r['state']}: {r['stage']}/{r['cell']}  log: {r['log'] or '-'}",
                          file=out)
                    if tail := error_tail(r):
                        print(tail, file=out)
            unstarted = sum(r["state"] == "cancelled" and not r["log"] for r in bad)
            if unstarted:
                print(f"{unstarted} cells cancelled before they started: a cell upstream failed or "
                      "was cancelled (kill-on-invalid-dep), or scancel; resubmitting runs them",
                      file=out)
            return 0 if not bad else 1
        if timeout_s and time.time() - t0 > timeout_s:
            print("wait: timed out", file=out)
            return 1
        time.sleep(poll_s)


def cancel(exp: Path) -> list[str]:
    """scancel every job the study ever submitted (every submission in the manifest)."""
    ids = sorted({j.split("_")[0] for m in read_manifest(exp).values() for j in m["jobs"]})
    if ids:
        subprocess.run(["scancel", *ids], check=False)
    return ids


def require_slurm(profile: Profile | None = None, need_sbatch: bool = True) -> None:
    """What a submission needs here: the image's Python, and sbatch (a dry run may lack it)."""
    if profile is not None:
        check_image_python(profile)
    if need_sbatch and not shutil.which("sbatch"):
        raise ConfigError("--executor", "sbatch not found: this machine is not a Slurm login node",
                          "run on a login node, or use --executor local")
