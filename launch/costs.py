"""What a study will cost before it runs: GPU-hours from the profile's measured rates, and the host
memory that a training cell's milestone forks hold per node. `plan` prints both and says how it
estimated; `plan` and `submit` refuse a profile whose train.mem_gb is set and smaller than the forks
need.

GPU-hours of a training cell = its tokens / train_tokens_per_gpu_hour (the step loop; every example
counted at the recipe's max_length, twice for DPO's pairs: an upper bound) + its GPUs x
(train_fixed_minutes: load, DeepSpeed init, DPO's reference pass + checkpoints x
train_minutes_per_checkpoint) / 60. An eval cell: eval_minutes_per_cell x its GPUs. The rates come
from a finished cell's record.json `runtime.phases` (`launch rates RUN` prints them).

Host memory of a fork (train.state.snapshot: measured as record.json `phases.fork_host_bytes`): per
rank, the 16-bit (or fp32) weights it holds, the fp32 masters and Adam's two moments; ZeRO-3
partitions all of it over the ranks, ZeRO-1/2 the masters and moments, ZeRO-0 nothing.

    from launch.costs import fork_gb_per_node, model_params, stage_time_min
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from launch.core.jobs import safetensors_header
from launch.core.profile import Profile, Resources
from launch.core.schema import ConfigError
from launch.core.spec import PREFERENCE, Model, Recipe, source_kind

# Parameter counts of the paper's models (config.json: embeddings, layers, head; tied heads once)
KNOWN_PARAMS = {
    "meta-llama/Llama-2-7b-hf": 6.74e9, "meta-llama/Llama-2-13b-hf": 13.02e9,
                "meta-llama/Meta-Llama-3-8B": 8.03e9,
    "google/gemma-2b": 2.51e9, "Qwen/Qwen1.5-0.5B": 0.46e9, "Qwen/Qwen1.5-4B": 3.95e9,
                "Qwen/Qwen1.5-7B": 7.72e9,
    **{f"TinyLlama/TinyLlama-1.1B-{s}": 1.10e9 for s in (
        "step-50K-105b", "intermediate-step-240k-503b", "intermediate-step-480k-1T",
        "intermediate-step-955k-token-2T", "intermediate-step-1195k-token-2.5T",
                                                         "intermediate-step-1431k-3T")},
}


def _safetensors_params(path: Path) -> int:
    """Parameters in a safetensors file, from its header alone (no weights read)."""
    total = 0
    for name, meta in (safetensors_header(path) or {}).items():
        if name != "__metadata__":
            count = 1
            for d in meta["shape"]:
                count *= d
            total += count
    return total


def model_params(m: Model) -> float | None:
    """A model's parameter count: the table above for hub ids, the safetensors headers of a local
    folder; None for a toy model (built by `init`: small) or a hub id not in the table."""
    if m.init is not None:
        return None
    if source_kind(m.path) == "hub":
        return KNOWN_PARAMS.get(m.path)
    files = sorted(Path(m.path).expanduser().glob("*.safetensors"))
    return float(sum(_safetensors_params(f) for f in files)) if files else None


def fork_bytes_per_rank(params: float, recipe: Recipe, world: int) -> float:
    """Host bytes one rank's fork snapshot holds (train.state.snapshot)."""
    weights = 2 if recipe.precision == "bf16" else 4
    # fp32 training updates the weights themselves (ZeRO-0)
    masters = 4 if recipe.precision == "bf16" else 0
    if recipe.zero_stage == 0:
        return params * (weights + masters + 8)
    # full weights on every rank; fp32 partitions (masters, moments) split
    if recipe.zero_stage in (1, 2):
        return params * (weights + 12 / world)
    return params * (weights + 12) / world


def ranks(res: Resources) -> int:
    """The ranks of one training cell: one per GPU, one per node without GPUs."""
    return res.nodes * max(1, res.gpus_per_node)


def fork_gb_per_node(params: float, recipe: Recipe, res: Resources) -> float:
    return fork_bytes_per_rank(params, recipe, ranks(res)) * max(1, res.gpus_per_node) / 1e9


def stage_resources(stage: str, cells: list, profile: Profile) -> Resources:
    """What each cell of `stage` asks Slurm for: the profile's (Profile.resources), its time fitted
    to the plan's estimate where the profile has cost rates and the stage sets no time_min of its
    own (stage_time_min)."""
    res = profile.resources(stage)
    if "time_min" not in profile.stages.get(stage, {}) and (fit := stage_time_min(cells, res,
                                                                                  profile)):
        res = dataclasses.replace(res, time_min=fit)
    return res


def fork_memory(plan, profile: Profile) -> list[dict]:
    """Per base model and training stage whose runs fork (nested volumes): host GB per node."""
    rows = []
    stages = [name for name, cells in plan.stages.items() if cells and cells[0].kind == "train"
              and name != "pretrain"]
    for m in plan.spec.models:
        params = model_params(m)
        if params is None:
            continue
        for stage in stages:
            recipe = plan.spec.recipe_for(stage)
            if recipe.nested:
                res = profile.resources(stage)
                rows.append({"model": m.name, "stage": stage, "params": params,
                             "mem_gb": res.mem_gb,
                             "gb_per_node": fork_gb_per_node(params, recipe, res)})
    return rows


def train_cell_gpu_hours(cell, profile: Profile) -> float | None:
    """Estimated GPU-hours of one training cell, or None without a token rate."""
    if not profile.train_tokens_per_gpu_hour:
        return None
    r = cell.job.recipe
    tokens = cell.examples * r.max_length * (2 if r.algorithm in PREFERENCE else 1)   # pairs
    fixed_min = profile.train_fixed_minutes + len(cell.outputs) * profile.train_minutes_per_checkpoint
    return tokens / profile.train_tokens_per_gpu_hour + ranks(profile.resources(cell.stage)) * fixed_min / 60


def stage_time_min(cells: list, res: Resources, profile: Profile) -> int | None:
    """The time limit a stage's cells ask for, from the plan's estimate: twice the longest cell's
    (or eval task's) estimated wall time, plus the signal delay and 15 minutes, in whole quarter
    hours, never more than `res`'s own; None where the profile has no rate for it. Too short costs a
    requeue (the cell saves and goes on), never a result."""
    if not cells:
        return None
    if cells[0].kind == "train":
        hours = [h for c in cells if (h := train_cell_gpu_hours(c, profile)) is not None]
        if len(hours) < len(cells):
            return None
        wall_min = max(hours) / ranks(res) * 60
    elif profile.eval_minutes_per_cell and cells[0].kind in ("eval", "generate"):
        wall_min = res.cells_per_task * profile.eval_minutes_per_cell
    else:
        return None
    fit = 15 * math.ceil((2 * wall_min + profile.signal_delay_s / 60 + 15) / 15)
    return min(fit, res.time_min)


def rates(exp_dir: Path) -> dict:
    """The profile's cost rates measured on a finished study's cells (their record.json)."""
    # step tokens, step GPU-seconds, fixed seconds, checkpoint seconds, checkpoints
    sums = [0.0] * 5
    cells = evals = 0
    eval_s = 0.0
    for rec_path in sorted(Path(exp_dir).glob("*/*/record.json")):
        try:   # a cell whose files are torn or of another shape is left out, never a traceback
            ph = json.loads(rec_path.read_text())["runtime"].get("phases")
            if ph:
                one = (ph["step_tokens"], ph["steps_s"] * ph["ranks"],
                       ph["setup_s"] + ph["load_s"] + ph["init_s"] + ph["reference_s"],
                       ph["save_s"] + ph["fork_s"], ph["checkpoints"])
                sums = [a + b for a, b in zip(sums, one)]
                cells += 1
            result = rec_path.parent / "result.json"
            total = json.loads(result.read_text()).get("timings", {}).get("total_s") if result.exists() else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if isinstance(total, (int, float)):
            eval_s += total
            evals += 1
    tokens, gpu_s, fixed_s, ckpt_s, ckpts = sums
    sig = lambda x: float(f"{x:.3g}")   # three significant digits: a fast cell is not 0 minutes
    return {"train_tokens_per_gpu_hour": round(tokens / gpu_s * 3600) if gpu_s else 0,
            "train_fixed_minutes": sig(fixed_s / cells / 60) if cells else 0,
            "train_minutes_per_checkpoint": sig(ckpt_s / ckpts / 60) if ckpts else 0,
            "eval_minutes_per_cell": sig(eval_s / evals / 60) if evals else 0,
            "training_cells": cells, "eval_cells": evals}


def check_memory(plan, profile: Profile) -> None:
    """Refuse a profile whose memory per node (train.mem_gb, or the stage's own) is set and smaller
    than a training stage's forks hold per node."""
    for row in fork_memory(plan, profile):
        if row["mem_gb"] and row["gb_per_node"] > row["mem_gb"]:
            where = f"stages.{row['stage']}.mem_gb" if "mem_gb" in profile.stages.get(row["stage"],
                                                                                      {}) \
                else "train.mem_gb"
            raise ConfigError(where, f"{row['mem_gb']} GB per node is less than the "
                              f"{row['gb_per_node']:.0f} GB that the {row['stage']} milestone "
                              "forks of "
                              f"{row['model']} hold in host memory", f"set {where} to at least "
                              f"{row['gb_per_node'] * 1.25:.0f} (the forks and the processes), or "
                              "0 for the "
                              "partition's default")
