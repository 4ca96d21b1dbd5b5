"""Typed job configs of the stage entry points (one per cell kind), built by the planner.

A job holds everything that defines a cell's result (its identity) and nothing about where it runs. Paths to
other cells' outputs are `@stage/cell/...` references (see launch.layout.resolve). Jobs travel as JSON
(`job.json` in the cell folder, and the record) and are rebuilt with `launch.spec.build`, which validates them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from launch.spec import Data, Eval, Init, Recipe, World


@dataclass(frozen=True)
class ModelRef:
    """Where a stage's starting weights come from."""
    path: str                             # hub id, local dir, or @stage/cell/checkpoints/<milestone>; "" with init
    revision: str = "main"
    trust_remote_code: bool = False
    init: Optional[Init] = None           # build from scratch with the world's tokenizer
    tokenizer: str = ""                   # tokenizer location when it differs from path (init models)


@dataclass(frozen=True)
class TrainJob:
    """One training run: start from `model`, train on the first max(milestones) examples of the seeded order."""
    model: ModelRef
    data: Data
    recipe: Recipe
    seed: int
    template: Literal["plain", "chat"]
    milestones: tuple[int, ...]           # example counts at which weights are saved (the last ends the run)
    stage: str = "train"


@dataclass(frozen=True)
class GenerateJob:
    """Setting I: a slice answers held-out prompts; the answers become a dataset (train + heldout files)."""
    model: ModelRef
    prompts: Data
    eval: Eval
    template: Literal["plain", "chat"]
    train_count: int                      # answers written to train.jsonl
    heldout_count: int                    # answers written to heldout.jsonl
    seed: int


@dataclass(frozen=True)
class EvalJob:
    """Score one checkpoint: generations scored by the scorer, bits/token per dataset, KL to the base."""
    model: ModelRef
    base: ModelRef
    prompts: Data
    eval: Eval
    template: Literal["plain", "chat"]
    compression: dict[str, Data] = field(default_factory=dict)
    seed: int = 0
    max_length: int = 512
    attribute_tokens: bool = False        # toy world: also bits/token on attribute words ('+'/'-' tokens)


@dataclass(frozen=True)
class WorldJob:
    """Toy world: generate the synthetic datasets and the word-level tokenizer."""
    world: World
    template: Literal["plain", "chat"]


@dataclass(frozen=True)
class CollectJob:
    """Turn every cell's results into tables and plots."""
    experiment: str
    setting: str
    task: str
