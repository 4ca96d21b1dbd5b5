"""Prefetch: on the login node, fill the profile's HF cache (`hf_home`) with every model, tokenizer,
dataset and scorer a study names, downloading only what the suite loads, and check that every volume
fits its dataset (after its filter); and `cache_gaps`, which `submit` runs before the first sbatch
so that no job starts without its files.

    make prefetch CONFIG=configs/setting2/imdb.yaml PROFILE=configs/profiles/mysite.yaml
Toy-world sets are made by the world stage and are not fetched; local files are read and counted. A
hub failure is one `error:` line naming the source.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from launch.core.env import COMMIT, cached_commit, hf_cache_env, hub_sources
from launch.core.profile import Profile
from launch.core.schema import ConfigError
from launch.core.spec import Spec, source_kind

# what from_pretrained reads: configs, tokenizer files, and one weight format (safetensors where the
# repo has them; never .gguf, .pth, original/ or a second copy of the weights: Llama-2-7b's repo is
# 27 GB with both, 13.5 without)
META = ["*.json", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt", "vocab.json"]


def hub_models(spec: Spec) -> list[tuple[str, str, str]]:
    """(field, repo, revision) of every hub model and scorer of the study (the error's field: its
    path, or the scorer's model)."""
    return [(f"{at}.{'model' if at == 'eval.scorer' else 'path'}", repo, rev)
            for at, repo, kind, rev, _ in hub_sources(dataclasses.asdict(spec)) if kind == "model"]


def weight_patterns(files: list[str]) -> list[str]:
    top = [f for f in files if "/" not in f]
    if any(f.endswith(".safetensors") for f in top):
        return ["*.safetensors", "*.safetensors.index.json"]
    return ["pytorch_model*.bin", "pytorch_model*.bin.index.json"]


def prefetch(spec: Spec, profile: Profile | None = None, log=print) -> list[dict]:
    # before huggingface_hub or datasets read it; the same
    if profile is not None and profile.hf_home:
        # variables the jobs get (a shell's HF_HUB_CACHE loses)
        os.environ.update(hf_cache_env(profile.hf_home))
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.utils import logging as hf_logging
    from train.data import load_rows
    hf_logging.set_verbosity_error()   # its retry warnings would come before our one error line
    rows = []
    for field, repo, rev in hub_models(spec):
        try:
            files = HfApi().list_repo_files(repo, revision=rev)
            where = snapshot_download(repo, revision=rev,
                                      allow_patterns=META + weight_patterns(files))
        # network, auth, missing repo: the user needs the source and why
        except Exception as e:
            raise ConfigError(field, f"cannot download {repo}@{rev}: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}",
                              "check the id, HF_TOKEN for gated repos, and this node's network") from None
        rows.append({"what": field, "source": repo, "status": f"cached at {where}"})
    for role, need in spec.rows_needed().items():
        d = spec.data[role]
        if source_kind(d.path) == "world":
            rows.append({"what": f"data.{role}", "source": d.path,
                         "status": "made by the world stage"})
            continue
        n = len(load_rows(d, Path.cwd()))
        if n < need:
            raise ConfigError(f"data.{role}", f"{d.path} (split {d.split}) has {n} rows after the "
                                              "filter, the study "
                              f"needs {need}", "lower the volumes / prompts or choose a larger "
                                               "split")
        rows.append({"what": f"data.{role}", "source": d.path,
                     "status": f"{n} rows, needs {need}: ok"})
    rows += held_out_overlap(spec)
    for r in rows:
        log(f"{r['what']:<16} {r['source']:<50} {r['status']}")
    if lines := pins(spec):
        log("to pin what was fetched (a hub branch moves; a commit does not), set in the config:")
        for line in lines:
            log(f"  {line}")
    return rows


def pins(spec: Spec) -> list[str]:
    """'<field>.revision: <commit>' for every hub source of the study whose revision is a branch or
    tag, with the commit the HF cache now holds for it (launch.core.env.cached_commit)."""
    out = []
    for field, repo, kind, rev, subset in hub_sources(dataclasses.asdict(spec)):
        if not COMMIT.fullmatch(rev) and (sha := cached_commit(repo, kind, rev, subset)):
            out.append(f"{field}.revision: {sha}    # {repo}@{rev}")
    return out


def held_out_overlap(spec: Spec) -> list[dict]:
    """How many of the held-out prompts the eval cells will answer are also prompts of a training
    role (BeaverTails repeats prompts, and a split does not keep them apart): one row per training
    role, 'warning:' in its status where any are."""
    from eval.evaluate import held_out_prompts
    from train.data import load_rows
    d = spec.data.get("prompts")
    need = spec.rows_needed().get("prompts", 0)
    if d is None or not need or source_kind(d.path) == "world":
        return []
    norm = lambda p: " ".join(str(p).split()).lower()
    held = [norm(p) for p in held_out_prompts(d, Path.cwd(), need)]
    out = []
    for role, t in sorted(spec.data.items()):
        if role == "prompts" or source_kind(t.path) == "world":
            continue
        seen = {norm(r["prompt"]) for r in load_rows(t, Path.cwd()) if r.get("prompt")}
        k = sum(p in seen for p in held)
        out.append({"what": "held-out prompts", "source": f"vs data.{role}",
                    "status": (f"warning: {k} of {len(held)} are also data.{role} prompts"
                               if k else f"none of {len(held)} in data.{role}")})
    return out


def cache_gaps(spec: Spec, hf_home: str) -> list[str]:
    """What the HF cache at `hf_home` lacks for this study: '<repo> (model)' / '<repo> (dataset)'.
    Jobs run offline from it; submit refuses to start a grid whose files are not there."""
    from datasets.naming import camelcase_to_snakecase
    from huggingface_hub import try_to_load_from_cache
    hub = Path(hf_home) / "hub"
    gaps = []
    for _, repo, rev in hub_models(spec):
        if not isinstance(try_to_load_from_cache(repo, "config.json", cache_dir=hub, revision=rev),
                          str):
            gaps.append(f"{repo} (model)")
    for path, subset in sorted({(d.path, d.subset) for d in spec.data.values()
                                if source_kind(d.path) == "hub"}):
        # where load_dataset leaves a hub dataset: <ns>___<name>/<config>/...
        ns, _, name = path.rpartition("/")
        root = Path(hf_home) / "datasets" / ((f"{ns}___" if ns
                                              else "") + camelcase_to_snakecase(name))
        if not any(root.glob(f"{subset or '*'}/*/*/dataset_info.json")):
            gaps.append(f"{path} (dataset)")
    return gaps
