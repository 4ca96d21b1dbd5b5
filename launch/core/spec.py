"""The study: typed, frozen dataclasses loaded from one YAML file under `configs/` (what runs and
what defines its results). Loading checks every key and value (launch.core.schema) and every local
source. Nothing here imports torch.

    from launch.core.spec import load_spec
    spec = load_spec("configs/setting2/imdb.yaml")
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from launch.core.schema import SAFE_NAME, ConfigError, build, check, read_yaml

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?")
SEED_MAX = 2**32 - 1   # numpy's and CUDA's seed range
WORLD = "world:"       # a data path world:<set> is a set of the toy world (World.sizes lists them)


def source_kind(path: str) -> str:
    """'world' (toy world, built by the world stage), 'local' (file or folder) or 'hub' (hub id)."""
    if path.startswith(WORLD):
        return "world"
    if path.startswith(("/", ".", "~")):
        return "local"
    return "hub"


def _check_source(path: str, where: str, base_dir: Path) -> None:
    kind = source_kind(path)
    if kind == "local":
        p = Path(path).expanduser()
        p = p if p.is_absolute() else base_dir / p
        check(p.exists(), where, f"local path {path!r} does not exist",
              "create it, fix the path, or use a hub id such as org/name")
    elif kind == "hub":
        check(bool(HUB_ID.fullmatch(path)), where, f"{path!r} is neither a hub id nor a local path",
              "write org/name for the hub, or start a local path with / or ./")


@dataclass(frozen=True)
class Init:
    """Build a model from scratch (toy world) instead of loading one: a tiny real architecture."""
    arch: Literal["gpt2", "llama"] = "gpt2"
    layers: int = 3        # transformer blocks
    width: int = 128       # hidden size
    heads: int = 4         # attention heads (width must divide by it)
    context: int = 128     # max positions

    def __post_init__(self):
        check(self.layers >= 1, "layers", f"must be >= 1, got {self.layers}", "use 1 or more")
        check(self.width >= 8 and self.heads >= 1 and self.width % self.heads == 0, "width",
              f"width {self.width} must be >= 8 and divisible by heads {self.heads}",
              "pick e.g. width 128, heads 4")
        check(self.context >= 16, "context", f"must be >= 16, got {self.context}", "use e.g. 128")


@dataclass(frozen=True)
class Model:
    """A base model of the study: a hub id or local dir (`path`), or a toy model built by `init`."""
    name: str                          # short readable name, used in cell ids and tables
    # hub id (org/name) or local HF folder; empty when `init` is set
    path: str = ""
    revision: str = "main"             # hub revision (branch, tag or commit)
    trust_remote_code: bool = False    # opt in per model; never on by default
    # build from scratch and pre-train on data.pretrain (toy world)
    init: Optional[Init] = None
    # with init: pre-training examples (Setting III's pre-training volume)
    pretrain_examples: int = 0
    # with init: the data role it is pre-trained on (world:shifted, world:joint)
    pretrain_data: str = "pretrain"
    # e.g. "0.5B" or "2.0T": the axis value shown in Setting III tables
    size_label: str = ""

    def __post_init__(self):
        check(bool(SAFE_NAME.fullmatch(self.name)), "name", f"{self.name!r} is not a safe name",
              "use up to 64 letters, digits, '.', '_' and '-'")
        check(bool(self.path) != (self.init is not None), "path",
              "give exactly one of path and init", "set path to a hub id or local dir, or set init "
                                                   "for a toy model")
        if self.init is not None:
            check(self.pretrain_examples > 0, "pretrain_examples",
                  "a model built by init needs pre-training",
                  "set pretrain_examples to a positive count")
            check(self.pretrain_data in ROLES, "pretrain_data", "unknown data role "
                                                                f"{self.pretrain_data!r}",
                  f"use one of {sorted(ROLES)}")
        else:
            check(self.pretrain_examples == 0 and self.pretrain_data == "pretrain",
                  "pretrain_examples",
                  "only models built by init are pre-trained here",
                  "remove pretrain_examples / pretrain_data or use init")


@dataclass(frozen=True)
class Data:
    """One dataset role: where it comes from and how its columns map onto the suite's fields."""
    # hub id, local file/folder (json, jsonl, parquet, save_to_disk), world:<set>
    path: str
    split: str = "train"
    subset: str = ""                       # hub configuration name, if any
    # suite field -> column (prompt, response, chosen, rejected, text); a list of columns is joined
    # with one space, skipping empty values (safe-rlhf's Alpaca prompt: instruction + ' ' + input
    # when there is an input)
    fields: dict[str, typing.Union[str, tuple[str, ...]]] = field(default_factory=dict)
    # keep rows: column == value
    filter: dict[str, typing.Union[str, int, float, bool]] = field(default_factory=dict)
    revision: str = "main"
    # >0: prompt = first k words of `text`, response = the rest (IMDb prompts)
    prefix_words: int = 0
    # preference pairs from an unpaired dataset (IMDb): row i's rejected answer is the `chosen`
    # column of the i-th row that this filter keeps (from the same split)
    pair_with: dict[str, typing.Union[str, int, float, bool]] = field(default_factory=dict)

    def __post_init__(self):
        check(bool(self.path), "path", "is empty", "give a hub id, a local path or world:<set>")
        check(not self.pair_with or ("chosen" in self.fields and "rejected" not in self.fields),
              "pair_with", "takes the rejected answer from the paired rows' chosen column",
              "map fields.chosen (and not fields.rejected), or remove pair_with")
        check(self.prefix_words >= 0, "prefix_words", f"must be >= 0, got {self.prefix_words}",
              "use e.g. 8")
        for k in self.fields:
            check(k in FIELD_NAMES, f"fields.{k}", f"unknown suite field {k!r}",
                  f"use one of {', '.join(sorted(FIELD_NAMES))}")


FIELD_NAMES = {"prompt", "response", "chosen", "rejected", "text"}
ROLES = {"pretrain", "positive", "negative", "prompts", "sft", "control", "shifted", "joint"}


# Rows of hub datasets the paper's studies use (dataset cards, checked 2026-11-28): (repo, subset)
# -> split -> rows; a filter (column, value) -> split -> rows where the card gives the count. `plan`
# refuses a study they cannot serve.
KNOWN_ROWS: dict = {
    ("stanfordnlp/imdb", ""): {"train": 25000, "test": 25000, "unsupervised": 50000},
    ("stanfordnlp/imdb", "", ("label", 1)): {"train": 12500, "test": 12500},
    ("stanfordnlp/imdb", "", ("label", 0)): {"train": 12500, "test": 12500},
    ("truthfulqa/truthful_qa", "generation"): {"validation": 817},
    ("tatsu-lab/alpaca", ""): {"train": 52002},
    ("PKU-Alignment/BeaverTails", ""): {"30k_train": 27186, "30k_test": 3021},
}


def split_range(split: str, total: int) -> range:
    """Row indices a datasets split expression selects from `total` rows: 'train', 'train[:500]',
    'validation[500:]', 'train[10%:20%]' (percent bounds round as datasets' default 'closest')."""
    m = re.fullmatch(r"[\w.-]+(?:\[(-?\d*)(%?):(-?\d*)(%?)\])?", split)
    if not m or m.group(1) is None:
        return range(total)

    def bound(num: str, pct: str) -> int | None:
        if num == "":
            return None
        return int(round(int(num) * total / 100)) if pct else int(num)
    return range(total)[bound(m.group(1), m.group(2)):bound(m.group(3), m.group(4))]


def split_rows(split: str, total: int) -> int:
    return len(split_range(split, total))


def known_rows(d: "Data", role: str = "") -> int | None:
    """Rows this data role can give at most, where the dataset's card says (None where unknown). The
    loader slices the split first and filters the slice, so a filtered slice gives at most the
    smaller of the slice and the filter's count over the split. A split not on the card: refused."""
    base = d.split.split("[")[0]
    whole = KNOWN_ROWS.get((d.path, d.subset))
    if whole is not None:
        check(base in whole, f"data.{role}.split" if role else "split",
              f"{d.path} ({d.subset or 'default'}) has no split {base!r}",
              f"use one of {', '.join(sorted(whole))}")
    if len(d.filter) > 1 or whole is None:
        return None
    if not d.filter:
        return split_rows(d.split, whole[base])
    kept = KNOWN_ROWS.get((d.path, d.subset, *d.filter.items()), {}).get(base, whole[base])
    return min(split_rows(d.split, whole[base]), kept)


PREFERENCE = ("dpo", "simpo", "kto")   # algorithms that train on (prompt, chosen, rejected) pairs


@dataclass(frozen=True)
class Recipe:
    """How one training stage trains. Identity: every field changes results."""
    # lm: loss on every token (pre-training, control arms)
    # simpo: SimPO (Meng et al. 2024), reference-free: -log sigmoid(beta * (mean log p of the
    # chosen answer - that of the rejected) - gamma), log-probs averaged over each answer's tokens
    # kto: paired KTO (Ethayarajh et al. 2024; the HALOs paper's eq. 7): 1 - sigmoid(beta * (the
    # chosen answer's log-ratio to the reference - z_rejected)) + 1 - sigmoid(beta * (z_chosen - the
    # rejected one's)), z the global batch's mean log-ratio of the other side, clamped at 0, fixed
    algorithm: Literal["sft", "dpo", "simpo", "kto", "lm"] = "sft"
    lr: float = 1e-5
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0                 # absolute, so a nested run stays exact
    epochs: int = 1
    global_batch: int = 64                # examples per optimizer step, whatever the number of GPUs
    max_length: int = 512                 # tokens; longer examples are truncated
    zero_stage: int = 3
    precision: Literal["bf16", "fp32"] = "bf16"
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    dpo_beta: float = 0.02                # DPO only (safe-rlhf's default)
    simpo_beta: float = 2.0               # SimPO only: the paper's beta (2.0-2.5) and margin gamma
    simpo_gamma: float = 1.0
    kto_beta: float = 0.1                 # KTO only: the KTO paper's default
    # the step loss: "token" = token mean over the global batch (long answers weigh more); "example"
    # = mean over the batch's examples of each example's token mean (safe-rlhf with micro-batch 1).
    # Both independent of the split.
    loss_weighting: Literal["token", "example"] = "token"
    seeds: tuple[int, ...] = (42,)        # one chain of cells per seed
    volume_schedule: Literal["auto", "nested", "independent"] = "auto"  # auto: nested where exact
    # the run's last examples that fill no global batch: one smaller step on them (partial), or no
    # step (drop: the seed's safe-rlhf + DeepSpeed loop updates every `gradient_accumulation`
    # micro-batches and never applies the rest, so a run shorter than one global batch takes no step
    # at all)
    tail: Literal["partial", "drop"] = "partial"
    MOVED: typing.ClassVar[dict] = {"micro_batch": "runtime", "gradient_checkpointing": "runtime",
                                    "save_every_steps": "runtime"}

    def __post_init__(self):
        check(0 < self.lr < 1, "lr", f"must be in (0, 1), got {self.lr}", "use e.g. 1e-5")
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}", "use 1")
        check(self.global_batch >= 1, "global_batch", f"must be >= 1, got {self.global_batch}",
              "use e.g. 64")
        check(self.max_length >= 8, "max_length", f"must be >= 8, got {self.max_length}",
              "use e.g. 512")
        check(self.zero_stage in (0, 1, 2, 3), "zero_stage", f"must be 0..3, got {self.zero_stage}",
              "use 0, 1, 2 or 3")
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}",
              "use 0")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}",
              "use 0")
        check(all(0 <= b < 1 for b in self.betas), "betas", "must be in [0, 1), got "
                                                            f"{list(self.betas)}",
              "use [0.9, 0.95]")
        check(self.grad_clip >= 0, "grad_clip", f"must be >= 0, got {self.grad_clip}",
              "use 1.0 (0 disables)")
        check(self.dpo_beta > 0, "dpo_beta", f"must be > 0, got {self.dpo_beta}", "use 0.02")
        check(self.simpo_beta > 0, "simpo_beta", f"must be > 0, got {self.simpo_beta}", "use 2.0")
        check(self.kto_beta > 0, "kto_beta", f"must be > 0, got {self.kto_beta}", "use 0.1")
        check(self.simpo_gamma >= 0, "simpo_gamma", f"must be >= 0, got {self.simpo_gamma}",
              "use 1.0")
        check(len(self.seeds) >= 1, "seeds", "is empty", "give at least one seed, e.g. [42]")
        check(len(set(self.seeds)) == len(self.seeds), "seeds", "has duplicates: "
                                                                f"{list(self.seeds)}",
              "list each seed once")
        check(all(0 <= x <= SEED_MAX for x in self.seeds), "seeds",
              f"must be in [0, 2**32 - 1], got {list(self.seeds)}", "use seeds such as 42")
        if self.volume_schedule == "nested":
            why = self.nested_inexact()
            check(not why, "volume_schedule", f"nested is not exact here: {why}",
                  "use volume_schedule: independent, or a constant schedule with one epoch")

    def steps(self, examples: int) -> int:
        """Optimizer steps of a run over `examples` examples (an epoch each: x epochs positions)."""
        positions = examples * self.epochs
        return positions // self.global_batch if self.tail == "drop" else -(-positions // self.global_batch)

    def nested_inexact(self) -> str:
        """Why one run with milestones would NOT equal a run per volume ('' when it would)."""
        if self.schedule != "constant":
            return f"a {self.schedule} schedule depends on the run's length"
        if self.epochs != 1:
            return f"{self.epochs} epochs revisit early examples after later ones"
        return ""

    @property
    def nested(self) -> bool:
        return self.volume_schedule == "nested" or (self.volume_schedule == "auto"
                                                    and not self.nested_inexact())


@dataclass(frozen=True)
class Runtime:
    """How a training stage runs on its hardware: never part of a cell's identity (a result does not
    depend on it beyond float summation order: the loss is independent of the micro-batch split,
    resume is bit-identical), so changing it keeps every cell id and done marker. Recorded in each
    cell's record.json."""
    # examples per forward pass per rank (an upper bound: train.data)
    micro_batch: int = 1
    # recompute activations in the backward pass (memory for time)
    gradient_checkpointing: bool = False
    save_every_steps: int = 100           # rolling resumable checkpoint period

    def __post_init__(self):
        check(self.micro_batch >= 1, "micro_batch", f"must be >= 1, got {self.micro_batch}",
              "use e.g. 1")
        check(self.save_every_steps >= 1, "save_every_steps", "must be >= 1, got "
                                                              f"{self.save_every_steps}",
              "use e.g. 100")


@dataclass(frozen=True)
class Volumes:
    """How many examples each stage trains on (nested prefixes of one seeded order)."""
    positive: tuple[int, ...] = ()
    # 0 means "the positive model itself" (evaluated, not trained)
    negative: tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("positive", "negative"):
            vals = getattr(self, name)
            floor = 0 if name == "negative" else 1
            for i, v in enumerate(vals):
                check(v >= floor, f"{name}[{i}]", f"must be >= {floor}, got {v}",
                      "use positive example counts")
            check(len(set(vals)) == len(vals), name, f"has duplicates: {list(vals)}",
                  "list each volume once")
            check(list(vals) == sorted(vals), name, f"must be sorted ascending, got {list(vals)}",
                  f"write {sorted(vals)}")


@dataclass(frozen=True)
class Slices:
    """Setting I: one epoch of SFT on `examples` of data.sft, sliced at `fractions` of the epoch."""
    examples: int = 0
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    responses: int = 0        # responses each slice generates on data.prompts (its dataset D_i)
    # the slice pairs trained both ways: every i<j (Table 1), or neighbours only (i, i+1)
    pairs: Literal["all", "adjacent"] = "all"

    def __post_init__(self):
        check(self.examples >= 1, "examples", f"must be >= 1, got {self.examples}",
              "set the slice SFT size")
        check(len(self.fractions) >= 2, "fractions", "needs at least two slices",
              "use e.g. [0.25, 0.5, 0.75]")
        check(all(0 < f <= 1 for f in self.fractions), "fractions",
              f"must be in (0, 1], got {list(self.fractions)}", "use fractions of one epoch")
        check(list(self.fractions) == sorted(set(self.fractions)), "fractions",
              f"must be sorted and distinct, got {list(self.fractions)}",
              f"write {sorted(set(self.fractions))}")
        check(self.responses >= 1, "responses", f"must be >= 1, got {self.responses}",
              "set how many prompts each slice answers")


@dataclass(frozen=True)
class Scorer:
    """What the eval stage measures on generations."""
    kind: Literal["classifier", "score_model", "rule", "none"] = "none"
    model: str = ""               # classifier / score model: hub id or local dir
    revision: str = "main"
    positive_label: str = "POSITIVE"   # classifier: the label that counts as positive
    # score_model: multiply the score (beaver cost model: -1, higher = safer)
    sign: float = 1.0
    max_length: int = 512         # scorer input truncation (tokens)
    attribute: str = "positive"   # rule scorer (toy world): which class counts
    # score_model: EOS after prompt + answer, as safe-rlhf trained its score models (the seed's
    # scoring script and the model card's example score prompt + response without it: false)
    append_eos: bool = True
    # scorer weights: the checkpoint's dtype, or fp32 (the seed)
    dtype: Literal["auto", "float32"] = "auto"

    def __post_init__(self):
        if self.kind in ("classifier", "score_model"):
            check(bool(self.model), "model", f"a {self.kind} scorer needs a model",
                  "set model to a hub id or local dir")
        check(self.sign in (1.0, -1.0), "sign", f"must be 1 or -1, got {self.sign}", "use 1 or -1")


@dataclass(frozen=True)
class Eval:
    """How checkpoints are evaluated."""
    # held-out prompts from data.prompts (disjoint from training data)
    prompts: int = 100
    max_new_tokens: int = 64
    temperature: float = 0.0           # 0: greedy
    top_p: float = 1.0
    samples_per_prompt: int = 1
    # a score model's number: the mean over every sample, or over prompts of each prompt's worst
    # sample (lowest score: the seed keeps each prompt's highest cost among its samples and averages
    # those)
    aggregate: Literal["mean", "worst"] = "mean"
    # Setting I: answers stripped of surrounding whitespace (the seed's .strip())
    strip: bool = False
    batch_size: int = 32               # generation batch (length-sorted, left-padded)
    scorer: Scorer = field(default_factory=Scorer)
    compression: tuple[str, ...] = ()  # data roles on which bits/token are measured
    compression_examples: int = 200
    kl_to_base: bool = False           # token-level KL(model || base) on the held-out responses
    logit_space: bool = True           # also report rates as log-odds

    def __post_init__(self):
        check(self.prompts >= 1, "prompts", f"must be >= 1, got {self.prompts}", "use e.g. 100")
        check(self.max_new_tokens >= 1, "max_new_tokens",
              f"must be >= 1, got {self.max_new_tokens}", "use e.g. 64")
        check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}",
              "use 0 for greedy")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}", "use 0.95")
        check(self.samples_per_prompt >= 1, "samples_per_prompt",
              f"must be >= 1, got {self.samples_per_prompt}", "use 1")
        check(self.aggregate == "mean"
              or (self.samples_per_prompt > 1 and self.scorer.kind == "score_model"),
              "aggregate", "worst takes each prompt's lowest score among several samples of a "
                           "score model",
              "set samples_per_prompt > 1 with a score_model scorer, or use aggregate: mean")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}",
              "use e.g. 32")
        for i, role in enumerate(self.compression):
            check(role in ROLES, f"compression[{i}]", f"unknown data role {role!r}",
                  f"use one of {sorted(ROLES)}")
        check(self.compression_examples >= 1, "compression_examples", "must be >= 1",
              "use e.g. 200")


@dataclass(frozen=True)
class Controls:
    """Arms the paper lacks. matched_start: reach the aligned start by LM training on data.control
    (arm control); from_base: the same negative fine-tuning from the base itself (arm from-base)."""
    matched_start: bool = False
    from_base: bool = False


# negative examples after which the collector reports paired changes (those on a study's grid; also
# its last volume and every window its claims name)
WINDOWS = (25, 50, 100)


@dataclass(frozen=True)
class Claim:
    """A claim the study tests, named in its config before it runs: the primary statistic, window
    and scale. The collector's claims table tests every row of that statistic (each model and start
    of the arm) as one family, Holm-corrected; every other number of the report is secondary.
    statistic: a column of the windows table (change, deeper: minus the smallest start, model:
    minus the first model, deeper-return: the negatives to revert minus the smallest start's) or
    the adjusted table's arm effect (arm-effect); expect: the sign the claim predicts, or
    equivalent (|effect| < bound, two one-sided tests)."""
    name: str
    metric: str                      # the scale: positive_rate, positive_logit, kl_to_base, ...
    statistic: Literal["change", "deeper", "model", "arm-effect", "deeper-return"]
    # negative examples: a volume of the study's grid (deeper-return: none, 0)
    window: int = 0
    expect: Literal["negative", "positive", "equivalent"] = "negative"
    bound: float = 0.0               # equivalent: the smallest effect that would matter
    arm: str = ""                    # only this arm's rows (positive, control, from-base); "": all
    model: str = ""                  # only this model's rows (a name of models); "": all
    versus: str = ""                 # arm-effect: only against this model's aligned arm; "": all

    def __post_init__(self):
        check(bool(self.name.strip()), "name", "is empty", "name the claim")
        check((self.window >= 1) == (self.statistic != "deeper-return"), "window",
              f"{self.statistic} takes " + ("no window" if self.statistic == "deeper-return" else
                                            f"a window >= 1, got {self.window}"),
              "leave it out" if self.statistic == "deeper-return" else
              "use a negative volume of the grid, e.g. 50")
        check(self.expect != "equivalent" or self.bound > 0, "bound",
              "an equivalence claim needs the effect it rules out",
              "set bound > 0 (what elasticity would predict, on the metric's scale)")
        check(self.arm in ("", "positive", "control", "from-base"), "arm",
              f"unknown arm {self.arm!r}", "use positive, control or from-base (or leave it out)")


@dataclass(frozen=True)
class World:
    """The toy world's generator parameters (used when a data path is world:<set>)."""
    seed: int = 0
    vocab_nouns: int = 120
    lexicon: int = 24                # attribute words per class
    prior: float = 0.5               # share of positive reviews in the pre-training corpus
    # share of positive reviews in the control and the shifted corpus
    control_prior: float = 0.9
    noise: float = 0.1               # share of attribute words drawn from the other class
    pretrain: int = 20000            # pre-training corpus size
    alignment: int = 4000            # positive and negative set sizes (each)
    prompts: int = 2000              # held-out prompts
    sft: int = 2000                  # Setting I: SFT set
    control: int = 4000              # control corpus size
    # a pre-training corpus of neither class (world:neutral), this size; 0: not built
    neutral: int = 0

    def __post_init__(self):
        check(0 <= self.seed <= SEED_MAX, "seed", f"must be in [0, 2**32 - 1], got {self.seed}",
              "use e.g. 0")
        check(0 <= self.prior <= 1, "prior", f"must be in [0, 1], got {self.prior}", "use e.g. 0.5")
        check(0 <= self.control_prior <= 1, "control_prior", "must be in [0, 1], got "
                                                             f"{self.control_prior}",
              "use e.g. 0.9")
        check(0 <= self.noise < 0.5, "noise", f"must be in [0, 0.5), got {self.noise}",
              "use e.g. 0.1")
        for n in ("vocab_nouns", "lexicon", "pretrain", "alignment", "prompts", "sft", "control"):
            check(getattr(self, n) >= 1, n, f"must be >= 1, got {getattr(self, n)}",
                  "use a positive count")
        check(self.neutral >= 0, "neutral", f"must be >= 0, got {self.neutral}",
              "use 0 (none) or a corpus size, e.g. 20000")

    def sizes(self) -> dict[str, int]:
        """Each set the world stage writes (world:<set>) and its size: the one list of the sets."""
        return {"pretrain": self.pretrain, "positive": self.alignment, "negative": self.alignment,
                "prompts": self.prompts, "sft": self.sft, "control": self.control,
                "pairs": self.alignment,
                "shifted": self.pretrain, "joint": self.pretrain + self.alignment,
                "neutral": self.neutral}


def world_set(path: str) -> str | None:
    """The toy-world set a data path names (world:positive -> positive), else None."""
    return path[len(WORLD):] if path.startswith(WORLD) else None


@dataclass(frozen=True)
class Spec:
    """One study: what runs. Runtime (where it runs) lives in Profile."""
    experiment: str                      # name of the study; the folder under the runs root
    setting: Literal["resistance", "rebound", "pretrain"]   # paper's Setting I, II, III
    task: str                            # e.g. imdb, safety, alpaca, toy-reviews (labels tables)
    # plain continuation (IMDb) or BEGINNING OF CONVERSATION chat
    template: Literal["plain", "chat"]
    models: tuple[Model, ...]
    data: dict[str, Data]                # role -> dataset
    recipe: Recipe = field(default_factory=Recipe)
    # stage -> recipe fields that differ
    recipe_overrides: dict[str, dict] = field(default_factory=dict)
    # how training runs (never identity)
    runtime: Runtime = field(default_factory=Runtime)
    # stage -> runtime fields that differ
    runtime_overrides: dict[str, dict] = field(default_factory=dict)
    volumes: Volumes = field(default_factory=Volumes)
    slices: Optional[Slices] = None
    eval: Eval = field(default_factory=Eval)
    controls: Controls = field(default_factory=Controls)
    world: Optional[World] = None
    # the claims the study tests, each with its primary statistic (the collector's claims table)
    claims: tuple[Claim, ...] = ()
    notes: str = ""

    def __post_init__(self):
        check(bool(SAFE_NAME.fullmatch(self.experiment)), "experiment",
              f"{self.experiment!r} is not a safe name",
              "use up to 64 letters, digits, '.', '_' and '-'")
        check(len(self.models) >= 1, "models", "is empty", "list at least one model")
        names = [m.name for m in self.models]
        check(len(set(names)) == len(names), "models", f"duplicate model names {names}",
              "give each model its own name")
        for role in self.data:
            check(role in ROLES, f"data.{role}", f"unknown data role {role!r}",
                  f"use one of {sorted(ROLES)}")
        if self.setting == "resistance":
            check(self.slices is not None, "slices", "Setting I (resistance) needs slices",
                  "add slices: {examples, fractions, responses}")
            need = ("sft", "prompts")
        else:
            check(len(self.volumes.positive) >= 1 or self.controls.from_base, "volumes.positive",
                  "is empty",
                  "list positive volumes, e.g. [1000] (only a from-base study may have none)")
            check(len(self.volumes.negative) >= 1, "volumes.negative", "is empty",
                  "list negative volumes, e.g. [0, 100]")
            need = ("positive", "negative", "prompts")
        need += tuple(dict.fromkeys(m.pretrain_data for m in self.models if m.init))
        if "seeds" in self.recipe_overrides.get("pretrain", {}):
            check(any(m.init for m in self.models), "recipe_overrides.pretrain.seeds",
                  "no model is pre-trained here",
                  "remove it (pre-training seeds apply to models built by init)")
        if self.controls.matched_start or self.controls.from_base:
            check(self.setting != "resistance", "controls", "apply to rebound settings only",
                  "remove them or use setting: rebound")
        if self.controls.matched_start:
            need += ("control",)
        for role in need:
            check(role in self.data, f"data.{role}", f"setting {self.setting} needs this dataset "
                                                     "role",
                  f"add data.{role} with a path")
        for role in self.eval.compression:
            check(role in self.data, "eval.compression", f"names data role {role!r} that data does "
                                                         "not define",
                  f"add data.{role} or remove it from eval.compression")
        if any(world_set(d.path) is not None for d in self.data.values()):
            check(self.world is not None, "world", "a data path uses world:<set> but no world is "
                                                   "defined",
                  "add a world: section (toy world parameters)")
        # where a dataset's size is known here, volumes must fit it
        for role, n in self.rows_needed().items():
            d = self.data.get(role)
            if d is None:
                continue
            if (name := world_set(d.path)) is not None and self.world is not None:
                have = self.world.sizes().get(name)
                check(have is not None, f"data.{role}.path", f"unknown toy-world set {d.path!r}",
                      f"use one of {', '.join('world:' + s for s in sorted(WORLD_SETS))}")
                check(n <= have, f"data.{role}", f"needs {n} examples, {d.path} has {have}",
                      "lower the volume, or raise the world's size of that set")
            elif (have := known_rows(d, role)) is not None:
                check(n <= have, f"data.{role}", f"needs {n} rows, {d.path} "
                                                 f"({d.subset or 'default'}, split "
                      f"{d.split}{', filtered' if d.filter else ''}) has {have}",
                      "lower the volumes / prompts / responses, or choose a larger split")
        for i, c in enumerate(self.claims):
            for key in ("model", "versus"):
                check(not getattr(c, key) or getattr(c, key) in names, f"claims[{i}].{key}",
                      f"{getattr(c, key)!r} is not a model of this study", f"use one of {names}")
            check(self.setting != "resistance", f"claims[{i}]", "claims test rebound window "
                  "statistics; Setting I has none", "remove claims, or use a rebound setting")
            grid = [n for n in self.volumes.negative if n > 0]
            check(c.statistic == "deeper-return" or c.window in grid, f"claims[{i}].window",
                  f"{c.window} is not a negative volume of this study", f"use one of {grid}")
        if self.eval.scorer.kind == "rule":
            check(self.world is not None, "eval.scorer.kind", "the rule scorer only reads "
                                                              "toy-world text",
                  "use classifier or score_model for real data")
        for section in ("recipe_overrides", "runtime_overrides"):
            for stage in getattr(self, section):
                check(stage in TRAIN_STAGES, f"{section}.{stage}",
                      f"unknown training stage {stage!r}", f"use one of {sorted(TRAIN_STAGES)}")
                check(stage in self.setting_stages(), f"{section}.{stage}",
                      f"setting {self.setting} has no "
                      f"{stage} stage", f"use one of {sorted(self.setting_stages())}, or remove it")
                check("seeds" not in getattr(self, section)[stage] or stage == "pretrain",
                      f"{section}.{stage}.seeds",
                      "seeds are one chain of cells through every stage (only pre-training has "
                      "its own: each pre-training seed is a base model, crossed with every chain)",
                      "set recipe.seeds")
                self.recipe_for(stage) if section == "recipe_overrides" else self.runtime_for(stage)

    def setting_stages(self) -> set[str]:
        """The training stages this study's setting can have (launch.plan builds them; control and
        pretrain only with a matched-start control and toy models)."""
        return {"pretrain"} | ({"slices", "cross"} if self.setting == "resistance" else
                               {"positive", "negative", "control"})

    def rows_needed(self) -> dict[str, int]:
        """Rows each data role must hold (after its filter) for this study's volumes."""
        v, need = self.volumes, {}
        if self.setting == "resistance" and self.slices is not None:
            need["sft"] = self.slices.examples
            need["prompts"] = self.slices.responses + self.eval.prompts
        else:
            need["positive"] = max(v.positive, default=0)
            need["negative"] = max(v.negative, default=0)
            need["prompts"] = self.eval.prompts
            if self.controls.matched_start:
                need["control"] = max(v.positive, default=0)
        for m in self.models:
            if m.init:
                need[m.pretrain_data] = max(need.get(m.pretrain_data, 0), m.pretrain_examples)
        for role in self.eval.compression:
            need.setdefault(role, 1)
        return need

    @property
    def pretrain_seeds(self) -> tuple[int, ...]:
        """Seeds of the pre-training runs (recipe_overrides.pretrain.seeds; else the first seed):
        one base model each, crossed with every seed of recipe.seeds."""
        return self.recipe_for("pretrain").seeds if "seeds" in self.recipe_overrides.get("pretrain",
                                                                                         {}) \
            else self.recipe.seeds[:1]

    def recipe_for(self, stage: str) -> Recipe:
        over = self.recipe_overrides.get(stage, {})
        if not over:
            return self.recipe
        return build(Recipe, {**dataclasses.asdict(self.recipe), **over},
                     f"recipe_overrides.{stage}")

    def runtime_for(self, stage: str, site: dict | None = None) -> Runtime:
        """The stage's runtime: the study's, its stage override, then the site's (a profile's
        `runtime`, which wins: the profile is where the hardware is described)."""
        over = {**self.runtime_overrides.get(stage, {}), **(site or {})}
        return build(Runtime, {**dataclasses.asdict(self.runtime), **over},
                     f"runtime_overrides.{stage}") if over \
            else self.runtime


TRAIN_STAGES = {"pretrain", "positive", "negative", "control", "slices", "cross"}

# The stages of a plan in run order, each with the profile section its cells ask Slurm for
STAGES = {"world": "light", "pretrain": "train", "slices": "train", "responses": "eval",
          "positive": "train",
          "control": "train", "negative": "train", "cross": "train", "eval": "eval",
          "collect": "light"}


def load_spec(path: str | Path, base_dir: str | Path | None = None) -> Spec:
    """Load and validate a study; local data and model paths are relative to base_dir (or cwd)."""
    data = read_yaml(path)
    try:
        spec = build(Spec, data)
        base = Path(base_dir or os.getcwd())
        for i, m in enumerate(spec.models):
            if m.path:
                _check_source(m.path, f"models[{i}].path", base)
        for role, d in spec.data.items():
            _check_source(d.path, f"data.{role}.path", base)
            if source_kind(d.path) == "world":
                check(world_set(d.path) in WORLD_SETS, f"data.{role}.path",
                      f"unknown toy-world set {d.path!r}",
                      f"use one of {', '.join('world:' + s for s in sorted(WORLD_SETS))}")
        for key in ("model",):
            s = spec.eval.scorer
            if s.kind in ("classifier", "score_model"):
                _check_source(s.model, f"eval.scorer.{key}", base)
        for role, n in spec.rows_needed().items():   # a local file's size is known here too
            d = spec.data.get(role)
            if d is not None and source_kind(d.path) == "local" and (have := local_rows(d, base)) is not None:
                has = f"{d.path} (split {d.split}) has {have}" + (" before its filter" if d.filter
                                                                  else "")
                check(n <= have, f"data.{role}", f"needs {n} rows, {has}",
                      "lower the volumes / prompts, or use more data")
    except ConfigError as e:
        e.file = str(path)
        raise
    return spec


WORLD_SETS = set(World().sizes())


def local_rows(d: Data, base: Path) -> int | None:
    """Rows of a local JSON Lines / JSON / Parquet file in its split, counted cheaply (or None)."""
    p = Path(d.path).expanduser()
    p = p if p.is_absolute() else base / p
    total: int | None
    try:
        if p.suffix == ".jsonl":
            with p.open("rb") as f:
                total = sum(1 for line in f if line.strip())
        elif p.suffix == ".json":
            data = json.loads(p.read_text())
            total = len(data) if isinstance(data, list) else None
        elif p.suffix == ".parquet":
            import pyarrow.parquet as pq
            total = pq.ParquetFile(p).metadata.num_rows
        else:
            return None
    except (OSError, ValueError):
        return None   # unreadable: the loader says why when it runs
    return None if total is None else len(split_range(d.split, total))
