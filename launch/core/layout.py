"""Run layout on disk: cell folders, atomic writes, records and done markers.

`<runs root>/<experiment>/<stage>/<cell id>/` holds `record.json` (written at start), the stage's
outputs, and `DONE` (written last, JSON listing the outputs). Every file is written to a temp name
and renamed, so a reader sees a whole file or none. References between cells are written
`@<stage>/<cell id>/<rest>` and resolved against the experiment folder at run time, so moving the
runs root never changes an identity.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from launch.core.jobs import output_problem
from launch.core.schema import ConfigError

# The run folder's vocabulary, in one place: <runs>/<experiment>/<stage>/<cell id>/ holds these
# what the cell runs (its job, coordinates, upstream), written by the orchestrator
JOB = "job.json"
DONE = "DONE"             # the done marker: outputs, upstream nonces (read_done)
FAILED = "FAILED"         # the record of a failed start (rc, error)
CLAIM = "CLAIM"           # who runs the cell now (launch.worker)
RECORD = "record.json"    # what a training cell measured: runtime, phases, optimizer
UMASK = os.umask(0o022)   # read once (the only way is to set it), and put back
os.umask(UMASK)


def milestone_name(examples: int) -> str:
    """A milestone checkpoint's folder name: n<examples trained on> (checkpoints/n1000)."""
    return f"n{examples}"


def milestone_volume(name: str) -> int | None:
    """The examples a milestone folder name stands for (milestone_name's inverse), or None."""
    return int(name[1:]) if name[:1] == "n" and name[1:].isdigit() else None


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    """Write via a temp file and rename: readers see the old file or the whole new one, never a
    part. durable=False skips the fsync, for files regenerated whenever needed (job.json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        # mkstemp makes 0600; results are shared with the group on clusters
        os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj, durable: bool = True, indent: int | None = 2) -> None:
    """indent=None writes one line with json's C encoder (several times faster for large files)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n",
                      durable)


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a fully written temp folder into place, replacing an older copy."""
    final = Path(final)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def resolve(path: str, exp_dir: Path) -> str:
    """An `@stage/cell/rest` reference as a path in the experiment folder; others pass through."""
    return str(Path(exp_dir) / path[1:]) if path.startswith("@") else path


def read_json(path: str | Path) -> dict | None:
    """A JSON object from a run folder's file; None if absent, unreadable or not an object."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_done(cell_dir: str | Path) -> dict | None:
    """The done marker's content, or None when absent, unreadable or not of the marker's shape (a
    nonce string, milestones a list of names, upstream a map of cell keys to nonces): a corrupt
    marker is not done, and a marker from any folder under a runs root can never crash a reader."""
    data = read_json(os.path.join(cell_dir, DONE))
    if data is None or not isinstance(data.get("nonce"), str):
        return None
    up, ms = data.get("upstream", {}), data.get("milestones", [])
    if not isinstance(up, dict) or not all(isinstance(k, str)
                                           and isinstance(v, str) for k, v in up.items()):
        return None
    if not isinstance(ms, list) or not all(isinstance(m, str) for m in ms):
        return None
    return data


def cell_state(cell_dir: str | Path, kind: str, outputs=(), upstream=(), nonces: dict | None = None) -> str:
    """The one answer to "what is this cell?", from its folder, for the planner, status, the worker,
    the collector and the Slurm wait:
      done     its marker lists every output this plan needs (nested runs may gain milestones), every one is valid
               (jobs.output_problem), and every upstream cell is still the run it was made from (each done marker
               carries a nonce; a redone upstream has a new one)
      stale    done, but made from an upstream run that is gone, corrupt or redone: it runs again
      corrupt  a marker that is unreadable or whose outputs are missing or invalid: it runs again
      running  no marker, and a claim whose holder beat within ELASTICA_CLAIM_STALE_S seconds
      failed   no marker, and the FAILED record of a failed start
      todo     none of these: never started, or a nested run that needs more milestones
    A plan also calls a cell stale when a cell upstream of it will run (Plan.states). `nonces`, a
    dict shared by the calls of one pass over a study, keeps each upstream cell's nonce once checked
    (its every checkpoint is verified once, not once per cell made from it)."""
    done = read_done(cell_dir)
    if done is None:
        cell_dir = Path(cell_dir)
        if (cell_dir / DONE).exists():
            return "corrupt"
        try:
            stale_s = float(os.environ.get("ELASTICA_CLAIM_STALE_S", 600))
            if time.time() - (cell_dir / CLAIM).stat().st_mtime < stale_s:
                return "running"
        except OSError:
            pass
        return "failed" if (cell_dir / FAILED).exists() else "todo"
    have = set(done.get("milestones", []))
    if any(m in have and output_problem(cell_dir, m, kind) for m in outputs):
        return "corrupt"
    if not all(m in have for m in outputs):
        return "todo"
    made_from, memo = done.get("upstream", {}), {} if nonces is None else nonces
    for u in upstream:
        if u not in memo:
            memo[u] = upstream_nonce(Path(cell_dir).parent.parent, u)
    same = all(made_from.get(u) is not None and made_from[u] == memo[u] for u in upstream)
    return "done" if same else "stale"


def copy_cell(src: Path, dst: Path) -> None:
    """Put a done cell of another study in place here (Plan.adopt): checkpoint files are hard-linked
    where the filesystem allows (they are published whole and never written again: the trainer
    renames new ones in), every other file is copied (logs and metrics are appended to); assembled
    in a temp folder and renamed into place."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.adopt{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)

    def link_or_copy(a, b):
        if "checkpoints" in Path(a).relative_to(src).parts:
            try:
                return os.link(a, b)
            except OSError:   # another filesystem, or links not allowed
                pass
        return shutil.copy2(a, b)
    try:
        shutil.copytree(src, tmp, copy_function=link_or_copy,
                        ignore=shutil.ignore_patterns("CLAIM", ".*.tmp"))
        publish_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def upstream_nonce(exp_dir: Path, key: str) -> str | None:
    """The nonce of an upstream cell that is done and whose outputs are valid (a cell made from a
    corrupt upstream is not done either: both run again)."""
    cell_dir = Path(exp_dir) / key
    done = read_done(cell_dir)
    if not done:
        return None
    if any(output_problem(cell_dir, m, done.get("kind", "")) for m in done.get("milestones", [])):
        return None
    return done.get("nonce")


def mark_preempted(why: str) -> None:
    """Tell the job script's teardown that this job was preempted and its cell can resume
    (launch.slurm requeue_lines): the file ELASTICA_PREEMPTED names, where the job script set it
    (Slurm jobs only)."""
    if path := os.environ.get("ELASTICA_PREEMPTED"):
        atomic_write_text(Path(path), why + "\n")


def write_done(cell_dir: Path, **info) -> None:
    atomic_write_json(Path(cell_dir) / DONE, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                              "nonce": uuid.uuid4().hex, **info})


CODE_ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("launch", "train", "eval")   # what a job imports: a code snapshot holds these


def git_commit() -> str:
    """The commit of the running code: a code snapshot's COMMIT file (Slurm jobs), else git."""
    try:
        root = CODE_ROOT
        if (root / "COMMIT").is_file():
            return (root / "COMMIT").read_text().strip()
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def runtime_info() -> dict:
    """Where this cell ran (never part of its identity)."""
    return {
        "host": os.uname().nodename,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "slurm_array": os.environ.get("SLURM_ARRAY_JOB_ID",
                                      "") + "_" + os.environ.get("SLURM_ARRAY_TASK_ID", ""),
        "image": os.environ.get("APPTAINER_CONTAINER", "") or os.environ.get("ELASTICA_IMAGE", "")
            or "host",
        "image_digest": os.environ.get("ELASTICA_IMAGE_DIGEST", "")
            if os.environ.get("APPTAINER_CONTAINER") else "",
        "python": sys.version.split()[0],
        "threads": os.environ.get("OMP_NUM_THREADS", ""),   # float sums follow the thread count
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def code_snapshot(exp_dir: Path, allow_dirty: bool = False, write: bool = True) -> Path:
    """The code a study's Slurm jobs run: this checkout's committed packages (CODE_DIRS), copied
    once into `<run>/code/<commit>` (`git archive`; content-addressed, so resubmitting the same
    commit reuses it), with a COMMIT file that record.json reads. Editing the checkout while a grid
    is queued then changes nothing that runs. A checkout with uncommitted changes in them is refused
    unless allow_dirty; then their working tree is copied, addressed by the commit and a hash of the
    changes ('<commit>-dirty-<hash>')."""
    git = lambda *a: subprocess.run(["git", "-C", str(CODE_ROOT), *a], capture_output=True,
                                    timeout=60)
    dirs = [d for d in CODE_DIRS if (CODE_ROOT / d).is_dir()]
    head = git("rev-parse", "HEAD").stdout.decode().strip()
    if not head:
        raise ConfigError("code", f"{CODE_ROOT} is not a git checkout: jobs could not record which "
                                  "code they ran",
                          "submit from a clone of the repository")
    diff = git("diff", "HEAD", "--binary", "--", *dirs).stdout
    untracked = git("ls-files", "--others", "--exclude-standard", "--", *dirs).stdout
    dirty = bool(diff.strip() or untracked.strip())
    if dirty and not allow_dirty:
        raise ConfigError("--allow-dirty", "the checkout has uncommitted changes, which no commit "
                                           "would record",
                          "commit them, or pass --allow-dirty to run the working tree as it is")
    name = head[:12] + (f"-dirty-{hashlib.sha256(diff + untracked).hexdigest()[:8]}" if dirty
                        else "")
    dest = Path(exp_dir) / "code" / name
    if not write or dest.exists():
        return dest
    tmp = dest.with_name(f".{name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if dirty:
        files = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                    *dirs).stdout.decode().split("\0")
        for f in filter(None, files):
            src = CODE_ROOT / f
            if src.is_file():
                (tmp / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, tmp / f)
    else:
        archive = git("archive", "--format=tar", "HEAD", "--", *dirs).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    (tmp / "COMMIT").write_text(head + ("+dirty" if dirty else "") + "\n")
    try:
        os.replace(tmp, dest)
    except OSError:   # another submission made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
