"""Run layout on disk: cell folders, atomic writes, records and done markers.

`<runs root>/<experiment>/<stage>/<cell id>/` holds `record.json` (written at start), the stage's outputs,
and `DONE` (written last, JSON listing the outputs). Every file is written to a temp name and renamed, so a
reader sees a whole file or none. References between cells are written `@<stage>/<cell id>/<rest>` and
resolved against the experiment folder at run time, so moving the runs root never changes an identity.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

DONE = "DONE"
RECORD = "record.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    """Write via a temp file and rename: readers see the old file or the whole new one, never a part.
    durable=False skips the fsync, for files that are regenerated whenever they are needed (job.json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; results are shared with the group on clusters
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj, durable: bool = True, indent: int | None = 2) -> None:
    """indent=None writes one line with json's C encoder (several times faster for large files)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n", durable)


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a fully written temp folder into place, replacing an older copy."""
    final = Path(final)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def resolve(path: str, exp_dir: Path) -> str:
    """Turn an `@stage/cell/rest` reference into a path under the experiment folder; others pass through."""
    return str(Path(exp_dir) / path[1:]) if path.startswith("@") else path


def read_done(cell_dir: Path) -> dict | None:
    """The done marker's content, or None when absent or unreadable (a corrupt marker is not done)."""
    try:
        data = json.loads((Path(cell_dir) / DONE).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def is_done(cell_dir: Path, outputs: list[str] | tuple[str, ...] = (), kind: str = "",
            upstream: list[str] | tuple[str, ...] = ()) -> bool:
    """Done when the marker exists, lists every output this plan needs (nested runs may gain milestones), every
    output is really there (a marker without its outputs is corrupt, not done), and every upstream cell is still
    the run this cell was made from (each done marker carries a nonce; a redone upstream has a new one)."""
    cell_dir = Path(cell_dir)
    done = read_done(cell_dir)
    if done is None:
        return False
    have = set(done.get("milestones", []))
    if not all(m in have and valid_output(cell_dir, m, kind) for m in outputs):
        return False
    made_from = done.get("upstream", {})
    return all(made_from.get(u) == upstream_nonce(cell_dir.parent.parent, u) for u in upstream)


def upstream_nonce(exp_dir: Path, key: str) -> str | None:
    """The nonce of an upstream cell that is done and whose outputs are valid (a cell made from a corrupt upstream
    is not done either: both run again)."""
    cell_dir = Path(exp_dir) / key
    done = read_done(cell_dir)
    if not done:
        return None
    kind = done.get("kind")
    if kind is None:   # markers written before they named their kind
        try:
            kind = json.loads((cell_dir / "job.json").read_text()).get("kind", "")
        except (OSError, ValueError, AttributeError):
            kind = ""
    if any(output_problem(cell_dir, m, kind) for m in done.get("milestones", [])):
        return None
    return done.get("nonce")


def valid_output(cell_dir: Path, name: str, kind: str) -> bool:
    return output_problem(cell_dir, name, kind) is None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def metric_problem(m) -> str | None:
    """What is wrong with one metric record of a result.json (None when it has the schema)."""
    if not isinstance(m, dict):
        return f"a metric is a {type(m).__name__}, not a record"
    if not isinstance(m.get("name"), str) or not m["name"]:
        return "a metric has no name"
    if not _finite(m.get("value")):
        return f"metric {m['name']}: value {m.get('value')!r} is not a finite number"
    if not _finite(m.get("stderr")) or m["stderr"] < 0:
        return f"metric {m['name']}: stderr {m.get('stderr')!r} is not a number >= 0"
    if not isinstance(m.get("n"), int) or isinstance(m.get("n"), bool) or m["n"] < 0:
        return f"metric {m['name']}: n {m.get('n')!r} is not a count"
    return None


def output_problem(cell_dir: Path, name: str, kind: str) -> str | None:
    """The one check of every cell output (the worker's done test, status, the collector): None when valid, else
    what is wrong. A training checkpoint holds a config and weights; result.json has the result schema (a non-empty
    list of metrics with name, finite value, stderr and n); a training summary has its losses; a JSON Lines output
    holds records; other outputs exist."""
    cell_dir = Path(cell_dir)
    if kind == "train":
        ckpt = cell_dir / "checkpoints" / name
        ok = (ckpt / "config.json").is_file() and any(ckpt.glob("*.safetensors"))
        return None if ok else f"checkpoint {name} lacks its config or weights"
    p = cell_dir / name
    if p.suffix in (".json", ".jsonl"):
        try:
            text = p.read_text()
            data = json.loads(text) if p.suffix == ".json" else [json.loads(l) for l in text.splitlines() if l.strip()]
        except (OSError, ValueError):
            return f"{name} is missing or not valid JSON"
        if p.suffix == ".jsonl":
            return None if data and all(isinstance(r, dict) for r in data) else f"{name} holds no records"
        return json_problem(data, name, kind)
    return None if p.exists() else f"{name} is missing"


def json_problem(data, name: str, kind: str) -> str | None:
    """The schema part of output_problem, on a JSON output already parsed (the collector reads each file once)."""
    if not isinstance(data, dict):
        return f"{name} is not a JSON object"
    if name == "result.json":
        ms = data.get("metrics")
        if not isinstance(ms, list) or not ms:
            return "result.json has no metrics"
        return next((f"result.json: {w}" for w in map(metric_problem, ms) if w), None)
    if name == "summary.json" and kind == "summary":   # a training cell's losses (Setting I's cross cells)
        return None if _finite(data.get("mean_loss")) else "summary.json has no finite mean_loss"
    return None


def write_done(cell_dir: Path, **info) -> None:
    atomic_write_json(Path(cell_dir) / DONE, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                              "nonce": uuid.uuid4().hex, **info})


CODE_ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("launch", "train", "eval")   # what a job imports: a code snapshot holds these


def git_commit() -> str:
    """The commit of the code that runs: a code snapshot's COMMIT file (what Slurm jobs run), else git."""
    try:
        root = CODE_ROOT
        if (root / "COMMIT").is_file():
            return (root / "COMMIT").read_text().strip()
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def runtime_info() -> dict:
    """Where this cell ran (never part of its identity)."""
    return {
        "host": os.uname().nodename,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "slurm_array": os.environ.get("SLURM_ARRAY_JOB_ID", "") + "_" + os.environ.get("SLURM_ARRAY_TASK_ID", ""),
        "image": os.environ.get("APPTAINER_CONTAINER", "") or os.environ.get("ELASTICA_IMAGE", "") or "host",
        "image_digest": os.environ.get("ELASTICA_IMAGE_DIGEST", "") if os.environ.get("APPTAINER_CONTAINER") else "",
        "python": sys.version.split()[0],
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def code_snapshot(exp_dir: Path, allow_dirty: bool = False, write: bool = True) -> Path:
    """The code a study's Slurm jobs run: this checkout's committed packages (CODE_DIRS), copied once into
    `<run>/code/<commit>` (`git archive`; content-addressed, so resubmitting the same commit reuses it), with a COMMIT
    file that record.json reads. Editing the checkout while a grid is queued then changes nothing that runs.
    A checkout with uncommitted changes in them is refused unless allow_dirty; then their working tree is copied,
    addressed by the commit and a hash of the changes ('<commit>-dirty-<hash>')."""
    import hashlib
    from launch.spec import ConfigError
    git = lambda *a: subprocess.run(["git", "-C", str(CODE_ROOT), *a], capture_output=True, timeout=60)
    dirs = [d for d in CODE_DIRS if (CODE_ROOT / d).is_dir()]
    head = git("rev-parse", "HEAD").stdout.decode().strip()
    if not head:
        raise ConfigError("code", f"{CODE_ROOT} is not a git checkout: jobs could not record which code they ran",
                          "submit from a clone of the repository")
    diff = git("diff", "HEAD", "--binary", "--", *dirs).stdout
    untracked = git("ls-files", "--others", "--exclude-standard", "--", *dirs).stdout
    dirty = bool(diff.strip() or untracked.strip())
    if dirty and not allow_dirty:
        raise ConfigError("--allow-dirty", "the checkout has uncommitted changes, which no commit would record",
                          "commit them, or pass --allow-dirty to run the working tree as it is")
    name = head[:12] + (f"-dirty-{hashlib.sha256(diff + untracked).hexdigest()[:8]}" if dirty else "")
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
