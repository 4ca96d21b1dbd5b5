"""W&B for cells: one run per training cell and one per collect cell, grouped by study and stage,
with the cell's coordinates in the config and the tags. Offline by default (WANDB_MODE from the
profile), under the cell folder; sync later from the login node: `make wandb-sync
RUN=runs/<experiment>`. Rank 0 only; never needed by the collector; keys stay in the environment.

    run = wandb_run(ctx.out_dir, ctx.exp_dir, {"recipe": ...}, ctx.stage, ctx.coords)   # None when disabled
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def wandb_run(cell_dir: Path, exp_dir: Path, config: dict, stage: str, coords: dict):
    """The cell's W&B run (resumed by id after a requeue), or None when WANDB_MODE=disabled."""
    mode = os.environ.get("WANDB_MODE", "offline")
    if mode not in ("online", "offline"):   # disabled (or what W&B would refuse): no run
        return None
    # W&B's cache, data (artifact staging) and config default to ~/.cache, ~/.local/share and
    # ~/.config: keep all of it in the study's folder, on the filesystem every node and image see
    for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                     ("WANDB_CONFIG_DIR", "config")):
        os.environ[var] = str(Path(exp_dir) / ".wandb" / sub)
    import wandb
    cell_dir, study = Path(cell_dir), Path(exp_dir).name
    tags = [study, stage] + [f"{k}={v}" for k, v in sorted(coords.items()) if v not in ("", None)]
    # one run per cell
    run_id = hashlib.sha256(f"{study}/{stage}/{cell_dir.name}".encode()).hexdigest()[:16]
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "elastica"), group=f"{study}/{stage}",
                      job_type=stage, name=cell_dir.name, id=run_id, dir=str(cell_dir),
                      mode="online" if mode == "online" else "offline", resume="allow",
                      tags=[t[:64] for t in tags],
                      config={"study": study, "stage": stage, "cell": cell_dir.name,
                              "coords": coords, **config},
                      settings=wandb.Settings(silent=True, console="off"))
