"""The one builder of a cell's environment, for the local executor, Slurm job scripts, debug-cell
and shell.

    from launch.core.env import cell_env
    env = cell_env(profile)      # what the local executor, debug-cell and shell start a cell with
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from launch.core import layout
from launch.core.profile import Profile
from launch.core.spec import HUB_ID, source_kind


PINNED = ("PYTHONPATH", "PYTHONSAFEPATH", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE",
          "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "WANDB_MODE")


def job_env(profile: Profile | None, code: Path | None = None) -> dict[str, str]:
    """What every executor sets for a cell's Python, over the shell's environment (no secrets:
    profiles refuse them; they come from the shell): offline HF cache, W&B mode, the code first on
    the path, the image's identity. One precedence rule everywhere: the profile wins over the shell,
    the shell fills in everything else."""
    # PYTHONSAFEPATH: `python -m` would put the working folder (the checkout) before PYTHONPATH
    env = {"PYTHONNOUSERSITE": "1", "PYTHONSAFEPATH": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    if profile is None:
        return {**env, "PYTHONPATH": str(code or layout.CODE_ROOT)}
    env["WANDB_MODE"] = profile.wandb_mode
    if profile.hf_home:
        env.update(hf_cache_env(profile.hf_home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    # the code snapshot of a submission, else this checkout (bind it in an image: see README),
    # before the image's or the venv's copy
    env["PYTHONPATH"] = str(code or layout.CODE_ROOT)
    # what the worker checks it imported (launch.worker.check_code)
    env["ELASTICA_CODE"] = env["PYTHONPATH"]
    if profile.image:
        env.update(ELASTICA_IMAGE=profile.image, ELASTICA_IMAGE_DIGEST=image_digest(profile.image))
        # an image's own %environment wins over the host's variables inside the container;
        # APPTAINERENV_<NAME> wins over the image's
        env.update({f"APPTAINERENV_{k}": env[k] for k in PINNED if k in env})
    if profile.master_port:
        env["ELASTICA_MASTER_PORT"] = str(profile.master_port)
    if profile.master_addr:
        env["ELASTICA_MASTER_ADDR"] = profile.master_addr
    env.update(profile.env)   # apptainer passes the job's environment into the container
    return env


def hf_cache_env(hf_home: str) -> dict[str, str]:
    """The HF cache of a profile, for prefetch and jobs alike: HF_HOME and the two variables that
    would beat it (a shell's HF_HUB_CACHE or HF_DATASETS_CACHE would send a job to another cache
    than prefetch filled)."""
    return {"HF_HOME": hf_home, "HF_HUB_CACHE": str(Path(hf_home) / "hub"),
            "HF_DATASETS_CACHE": str(Path(hf_home) / "datasets")}


def cell_env(profile: Profile | None, code: Path | None = None) -> dict[str, str]:
    """A cell's whole environment on this machine: the shell's, with job_env over it (as a job
    script's exports are over the environment Slurm passes on)."""
    return {**os.environ, **job_env(profile, code)}


def image_digest(image: str) -> str:
    """sha256 of the image file, cached beside it (by size and mtime); 'unavailable' on error."""
    p = Path(image)
    try:
        st = p.stat()
    except OSError:
        return "unavailable"
    side = p.with_name(p.name + ".sha256")
    key = f"{st.st_size}:{int(st.st_mtime)}"
    try:
        cached_key, digest = side.read_text().split()
        if cached_key == key:
            return digest
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    digest = f"sha256:{h.hexdigest()}"
    try:
        layout.atomic_write_text(side, f"{key} {digest}\n")
    except OSError:
        pass
    return digest


COMMIT = re.compile(r"[0-9a-f]{40}")


def cached_commit(repo: str, kind: str, revision: str = "main", subset: str = "") -> str | None:
    """The commit of hub `repo` at `revision` that this process's HF cache holds, i.e. what an
    offline job loads (None where the cache lacks it): a model's refs/<revision>; a dataset's newest
    cached build (<ns>___<name>/<config>/<version>/<commit>/, as `datasets` leaves it). A revision
    that is a commit is itself."""
    if COMMIT.fullmatch(revision):
        return revision
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    if kind == "model":
        ref = (Path(os.environ.get("HF_HUB_CACHE") or home / "hub")
               / f"models--{repo.replace('/', '--')}" / "refs" / revision)
        return ref.read_text().strip() if ref.is_file() else None
    from datasets.naming import camelcase_to_snakecase
    ns, _, name = repo.rpartition("/")
    root = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets") / (
        (f"{ns}___" if ns else "") + camelcase_to_snakecase(name))
    builds = [p.parent for p in root.glob(f"{subset or '*'}/*/*/dataset_info.json")
              if COMMIT.fullmatch(p.parent.name)]
    return max(builds, key=lambda p: p.stat().st_mtime).name if builds else None


def hub_sources(node, at: str = "") -> list[tuple[str, str, str, str, str]]:
    """Every hub source a job (or study) names, from its JSON: (field path, repo, 'model' |
    'dataset', revision, subset). Datasets: mappings with a split; scorers name one in `model`."""
    out = []
    if isinstance(node, dict):
        repo = node.get("path") if "split" in node or "revision" in node else None
        if node.get("kind") in ("classifier", "score_model"):
            repo = node.get("model")
        if isinstance(repo, str) and HUB_ID.fullmatch(repo) and source_kind(repo) == "hub" \
                and "revision" in node:   # (not an upstream cell's output: '@stage/...')
            out.append((at, repo, "dataset" if "split" in node else "model", node["revision"],
                        node.get("subset", "")))
        for k, v in node.items():
            out += hub_sources(v, f"{at}.{k}" if at else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            out += hub_sources(v, f"{at}[{i}]")
    return out


def hub_commits(job_json: dict) -> dict[str, str | None]:
    """'<repo>@<revision>' -> the cached commit it resolves to, for every hub source of a job: what
    record.json keeps, so that a result names the exact weights and data it came from."""
    return {f"{repo}@{rev}" + (f" ({subset})" if subset else ""): cached_commit(repo, kind, rev,
                                                                               subset)
            for _, repo, kind, rev, subset in hub_sources(job_json)}
