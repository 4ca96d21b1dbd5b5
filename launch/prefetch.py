"""Prefetch: on the login node, download every model and dataset a study names into the HF cache, and check that
every volume fits its dataset (after the filter) before any job is queued.

    make prefetch CONFIG=configs/setting2/imdb.yaml          # HF_HOME decides the cache (set it to hf_home)
Toy-world sets are made by the world stage and are not fetched; local files are read and counted.
"""
from __future__ import annotations

from pathlib import Path

from launch.spec import ConfigError, Spec, source_kind


def prefetch(spec: Spec, log=print) -> list[dict]:
    from train.data import load_rows
    rows = []
    for m in spec.models:
        if m.path and source_kind(m.path) == "hub":
            from huggingface_hub import snapshot_download
            where = snapshot_download(m.path, revision=m.revision)
            rows.append({"what": f"model {m.name}", "source": m.path, "status": f"cached at {where}"})
    s = spec.eval.scorer
    if s.kind in ("classifier", "score_model") and source_kind(s.model) == "hub":
        from huggingface_hub import snapshot_download
        rows.append({"what": "scorer", "source": s.model,
                     "status": f"cached at {snapshot_download(s.model, revision=s.revision)}"})
    for role, need in spec.rows_needed().items():
        d = spec.data[role]
        if source_kind(d.path) == "world":
            rows.append({"what": f"data.{role}", "source": d.path, "status": "made by the world stage"})
            continue
        n = len(load_rows(d, Path.cwd()))
        if n < need:
            raise ConfigError(f"data.{role}", f"{d.path} (split {d.split}) has {n} rows after the filter, the study "
                              f"needs {need}", "lower the volumes / prompts or choose a larger split")
        rows.append({"what": f"data.{role}", "source": d.path, "status": f"{n} rows, needs {need}: ok"})
    for r in rows:
        log(f"{r['what']:<16} {r['source']:<50} {r['status']}")
    return rows
