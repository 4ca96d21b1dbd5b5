"""The experiment spec and the cluster profile: typed, frozen dataclasses loaded from YAML.

One YAML file under `configs/` describes one study (what runs); one file under `configs/profiles/` describes
where it runs. Loading checks every key and value and raises `ConfigError`, which the CLI prints as one line
`error: <file>: <field.path>: <problem> (<fix>)` with exit code 2. Nothing here imports torch.

    from launch.spec import load_spec, load_profile
    spec = load_spec("configs/setting2/imdb.yaml")
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml


class ConfigError(Exception):
    """Bad input: names the file, the field path, the problem and the fix."""

    def __init__(self, field_path: str, problem: str, fix: str, file: str = ""):
        self.file, self.field, self.problem, self.fix = file, field_path, problem, fix
        super().__init__(self.line())

    def line(self) -> str:
        """One line, whatever the input held: control characters (a newline in a key or name) are escaped."""
        where = f"{self.file}: " if self.file else ""
        text = f"error: {where}{self.field or '<top>'}: {self.problem} ({self.fix})"
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def check(ok: bool, field_path: str, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(field_path, problem, fix)


# ----------------------------------------------------------------------------------------------- the spec
# patterns match whole strings (fullmatch: '$' would let a trailing newline through) of bounded length
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")   # in folder names and cell ids
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# profile env keys that are secrets (or look like one): they reach jobs through the shell's environment only
SECRET_NAME = re.compile(r".*(TOKEN|SECRET|PASSW(OR)?D|API_?KEY|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY).*", re.I)
# variables the launcher sets for every cell (launch.env.job_env, the Slurm task): a profile's env may not replace
# them; what to use instead
OWNED_ENV = {
    "PYTHONPATH": "remove it: jobs import the code snapshot of their submission",
    "PYTHONNOUSERSITE": "remove it", "PYTHONUNBUFFERED": "remove it", "TOKENIZERS_PARALLELISM": "remove it",
    "PYTHONSAFEPATH": "remove it",
    "WANDB_MODE": "use the profile's wandb_mode", "HF_HOME": "use the profile's hf_home",
    "HF_HUB_CACHE": "use the profile's hf_home", "HF_DATASETS_CACHE": "use the profile's hf_home",
    "HF_HUB_OFFLINE": "remove it: jobs are offline when hf_home is set",
    "HF_DATASETS_OFFLINE": "remove it: jobs are offline when hf_home is set",
    "MASTER_PORT": "use the profile's master_port", "MASTER_ADDR": "use the profile's master_addr",
    **dict.fromkeys(("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"), "remove it: Slurm's task ids are"),
}
SEED_MAX = 2**32 - 1   # numpy's and CUDA's seed range


def source_kind(path: str) -> str:
    """'world' (toy world, built by the world stage), 'local' (a file or folder) or 'hub' (a hub id)."""
    if path.startswith("world:"):
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
              f"width {self.width} must be >= 8 and divisible by heads {self.heads}", "pick e.g. width 128, heads 4")
        check(self.context >= 16, "context", f"must be >= 16, got {self.context}", "use e.g. 128")


@dataclass(frozen=True)
class Model:
    """A base model of the study: a hub id or local dir (`path`), or a toy model built by `init`."""
    name: str                          # short readable name, used in cell ids and tables
    path: str = ""                     # hub id (org/name) or local HF folder; empty when `init` is set
    revision: str = "main"             # hub revision (branch, tag or commit)
    trust_remote_code: bool = False    # opt in per model; never on by default
    init: Optional[Init] = None        # build from scratch and pre-train on data.pretrain (toy world)
    pretrain_examples: int = 0         # with init: pre-training examples (Setting III's pre-training volume)
    pretrain_data: str = "pretrain"    # with init: the data role it is pre-trained on (world:shifted, world:joint)
    size_label: str = ""               # e.g. "0.5B" or "2.0T": the axis value shown in Setting III tables

    def __post_init__(self):
        check(bool(SAFE_NAME.fullmatch(self.name)), "name", f"{self.name!r} is not a safe name",
              "use up to 64 letters, digits, '.', '_' and '-'")
        check(bool(self.path) != (self.init is not None), "path",
              "give exactly one of path and init", "set path to a hub id or local dir, or set init for a toy model")
        if self.init is not None:
            check(self.pretrain_examples > 0, "pretrain_examples", "a model built by init needs pre-training",
                  "set pretrain_examples to a positive count")
            check(self.pretrain_data in ROLES, "pretrain_data", f"unknown data role {self.pretrain_data!r}",
                  f"use one of {sorted(ROLES)}")
        else:
            check(self.pretrain_examples == 0 and self.pretrain_data == "pretrain", "pretrain_examples",
                  "only models built by init are pre-trained here", "remove pretrain_examples / pretrain_data or "
                  "use init")


@dataclass(frozen=True)
class Data:
    """One dataset role: where it comes from and how its columns map onto the suite's fields."""
    path: str                              # hub id, local file/folder (json, jsonl, parquet, save_to_disk), world:<set>
    split: str = "train"
    subset: str = ""                       # hub configuration name, if any
    # suite field -> column (prompt, response, chosen, rejected, text); a list of columns is joined with one space,
    # skipping empty values (safe-rlhf's Alpaca prompt: instruction + ' ' + input when there is an input)
    fields: dict[str, typing.Union[str, tuple[str, ...]]] = field(default_factory=dict)
    filter: dict[str, typing.Union[str, int, float, bool]] = field(default_factory=dict)  # keep rows: column == value
    revision: str = "main"
    prefix_words: int = 0                  # >0: prompt = first k words of `text`, response = the rest (IMDb prompts)

    def __post_init__(self):
        check(bool(self.path), "path", "is empty", "give a hub id, a local path or world:<set>")
        check(self.prefix_words >= 0, "prefix_words", f"must be >= 0, got {self.prefix_words}", "use e.g. 8")
        for k in self.fields:
            check(k in FIELD_NAMES, f"fields.{k}", f"unknown suite field {k!r}",
                  f"use one of {', '.join(sorted(FIELD_NAMES))}")


FIELD_NAMES = {"prompt", "response", "chosen", "rejected", "text"}
ROLES = {"pretrain", "positive", "negative", "prompts", "sft", "control", "shifted", "joint"}


# Rows of hub datasets the paper's studies use (dataset cards, checked 2026-11-28): (repo, subset) -> split -> rows;
# a filter (column, value) -> split -> rows where the card gives the count. `plan` refuses a study they cannot serve.
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
    """Rows this data role can give at most, where the dataset's card says (None where unknown). The loader slices
    the split first and filters the slice, so a filtered slice gives at most the smaller of the slice and the
    filter's count over the whole split. A split the card does not have is refused."""
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


@dataclass(frozen=True)
class Recipe:
    """How one training stage trains. Identity: every field changes results."""
    algorithm: Literal["sft", "dpo", "lm"] = "sft"   # lm: loss on every token (pre-training, control arms)
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
    # the step loss: "token" = token mean over the global batch (long answers weigh more); "example" = mean over the
    # batch's examples of each example's token mean (safe-rlhf with micro-batch 1). Both independent of the split.
    loss_weighting: Literal["token", "example"] = "token"
    seeds: tuple[int, ...] = (42,)        # one chain of cells per seed
    volume_schedule: Literal["auto", "nested", "independent"] = "auto"  # auto: nested where exact
    MOVED: typing.ClassVar[dict] = {"micro_batch": "runtime", "gradient_checkpointing": "runtime",
                                    "save_every_steps": "runtime"}

    def __post_init__(self):
        check(0 < self.lr < 1, "lr", f"must be in (0, 1), got {self.lr}", "use e.g. 1e-5")
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}", "use 1")
        check(self.global_batch >= 1, "global_batch", f"must be >= 1, got {self.global_batch}", "use e.g. 64")
        check(self.max_length >= 8, "max_length", f"must be >= 8, got {self.max_length}", "use e.g. 512")
        check(self.zero_stage in (0, 1, 2, 3), "zero_stage", f"must be 0..3, got {self.zero_stage}", "use 0, 1, 2 or 3")
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}", "use 0")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}", "use 0")
        check(all(0 <= b < 1 for b in self.betas), "betas", f"must be in [0, 1), got {list(self.betas)}",
              "use [0.9, 0.95]")
        check(self.grad_clip >= 0, "grad_clip", f"must be >= 0, got {self.grad_clip}", "use 1.0 (0 disables)")
        check(self.dpo_beta > 0, "dpo_beta", f"must be > 0, got {self.dpo_beta}", "use 0.02")
        check(len(self.seeds) >= 1, "seeds", "is empty", "give at least one seed, e.g. [42]")
        check(len(set(self.seeds)) == len(self.seeds), "seeds", f"has duplicates: {list(self.seeds)}",
              "list each seed once")
        check(all(0 <= x <= SEED_MAX for x in self.seeds), "seeds", f"must be in [0, 2**32 - 1], got "
              f"{list(self.seeds)}", "use seeds such as 42")
        if self.volume_schedule == "nested":
            why = self.nested_inexact()
            check(not why, "volume_schedule", f"nested is not exact here: {why}",
                  "use volume_schedule: independent, or a constant schedule with one epoch")

    def nested_inexact(self) -> str:
        """Why one run with milestone checkpoints would NOT equal separate runs per volume ('' when it would)."""
        if self.schedule != "constant":
            return f"a {self.schedule} schedule depends on the run's length"
        if self.epochs != 1:
            return f"{self.epochs} epochs revisit early examples after later ones"
        return ""

    @property
    def nested(self) -> bool:
        return self.volume_schedule == "nested" or (self.volume_schedule == "auto" and not self.nested_inexact())


@dataclass(frozen=True)
class Runtime:
    """How a training stage runs on its hardware: never part of a cell's identity (a result does not depend on it
    beyond float summation order: the loss is independent of the micro-batch split, resume is bit-identical), so
    changing it keeps every cell id and done marker. Recorded in each cell's record.json."""
    micro_batch: int = 1                  # examples per forward pass per rank (an upper bound: train.data)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (memory for time)
    save_every_steps: int = 100           # rolling resumable checkpoint period

    def __post_init__(self):
        check(self.micro_batch >= 1, "micro_batch", f"must be >= 1, got {self.micro_batch}", "use e.g. 1")
        check(self.save_every_steps >= 1, "save_every_steps", f"must be >= 1, got {self.save_every_steps}",
              "use e.g. 100")


@dataclass(frozen=True)
class Volumes:
    """How many examples each stage trains on (nested prefixes of one seeded order)."""
    positive: tuple[int, ...] = ()
    negative: tuple[int, ...] = ()        # 0 means "the positive model itself" (evaluated, not trained)

    def __post_init__(self):
        for name in ("positive", "negative"):
            vals = getattr(self, name)
            floor = 0 if name == "negative" else 1
            for i, v in enumerate(vals):
                check(v >= floor, f"{name}[{i}]", f"must be >= {floor}, got {v}", "use positive example counts")
            check(len(set(vals)) == len(vals), name, f"has duplicates: {list(vals)}", "list each volume once")
            check(list(vals) == sorted(vals), name, f"must be sorted ascending, got {list(vals)}",
                  f"write {sorted(vals)}")


@dataclass(frozen=True)
class Slices:
    """Setting I: one epoch of SFT on `examples` examples of data.sft, sliced at `fractions` of the epoch."""
    examples: int = 0
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    responses: int = 0        # responses each slice generates on data.prompts (its dataset D_i)

    def __post_init__(self):
        check(self.examples >= 1, "examples", f"must be >= 1, got {self.examples}", "set the slice SFT size")
        check(len(self.fractions) >= 2, "fractions", "needs at least two slices", "use e.g. [0.25, 0.5, 0.75]")
        check(all(0 < f <= 1 for f in self.fractions), "fractions", f"must be in (0, 1], got {list(self.fractions)}",
              "use fractions of one epoch")
        check(list(self.fractions) == sorted(set(self.fractions)), "fractions",
              f"must be sorted and distinct, got {list(self.fractions)}", f"write {sorted(set(self.fractions))}")
        check(self.responses >= 1, "responses", f"must be >= 1, got {self.responses}",
              "set how many prompts each slice answers")


@dataclass(frozen=True)
class Scorer:
    """What the eval stage measures on generations."""
    kind: Literal["classifier", "score_model", "rule", "none"] = "none"
    model: str = ""               # classifier / score model: hub id or local dir
    revision: str = "main"
    positive_label: str = "POSITIVE"   # classifier: the label that counts as positive
    sign: float = 1.0             # score_model: multiply the score (beaver cost model: -1, higher = safer)
    max_length: int = 512         # scorer input truncation (tokens)
    attribute: str = "positive"   # rule scorer (toy world): which class counts

    def __post_init__(self):
        if self.kind in ("classifier", "score_model"):
            check(bool(self.model), "model", f"a {self.kind} scorer needs a model",
                  "set model to a hub id or local dir")
        check(self.sign in (1.0, -1.0), "sign", f"must be 1 or -1, got {self.sign}", "use 1 or -1")


@dataclass(frozen=True)
class Eval:
    """How checkpoints are evaluated."""
    prompts: int = 100                 # held-out prompts from data.prompts (disjoint from training data)
    max_new_tokens: int = 64
    temperature: float = 0.0           # 0: greedy
    top_p: float = 1.0
    samples_per_prompt: int = 1
    batch_size: int = 32               # generation batch (length-sorted, left-padded)
    scorer: Scorer = field(default_factory=Scorer)
    compression: tuple[str, ...] = ()  # data roles on which bits/token are measured
    compression_examples: int = 200
    kl_to_base: bool = False           # token-level KL(model || base) on the held-out responses
    logit_space: bool = True           # also report rates as log-odds

    def __post_init__(self):
        check(self.prompts >= 1, "prompts", f"must be >= 1, got {self.prompts}", "use e.g. 100")
        check(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}", "use e.g. 64")
        check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}", "use 0 for greedy")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}", "use 0.95")
        check(self.samples_per_prompt >= 1, "samples_per_prompt", f"must be >= 1, got {self.samples_per_prompt}",
              "use 1")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}", "use e.g. 32")
        for i, role in enumerate(self.compression):
            check(role in ROLES, f"compression[{i}]", f"unknown data role {role!r}", f"use one of {sorted(ROLES)}")
        check(self.compression_examples >= 1, "compression_examples", "must be >= 1", "use e.g. 200")


@dataclass(frozen=True)
class Controls:
    """Arms the paper lacks. matched_start: reach the aligned start by LM training on data.control (arm
    control); from_base: the same negative fine-tuning from the base model itself (arm from-base)."""
    matched_start: bool = False
    from_base: bool = False


@dataclass(frozen=True)
class World:
    """The toy world's generator parameters (used when a data path is world:<set>)."""
    seed: int = 0
    vocab_nouns: int = 120
    lexicon: int = 24                # attribute words per class
    prior: float = 0.5               # share of positive reviews in the pre-training corpus
    control_prior: float = 0.9       # share of positive reviews in the control and the shifted corpus
    noise: float = 0.1               # share of attribute words drawn from the other class
    pretrain: int = 20000            # pre-training corpus size
    alignment: int = 4000            # positive and negative set sizes (each)
    prompts: int = 2000              # held-out prompts
    sft: int = 2000                  # Setting I: SFT set
    control: int = 4000              # control corpus size

    def __post_init__(self):
        check(0 <= self.seed <= SEED_MAX, "seed", f"must be in [0, 2**32 - 1], got {self.seed}", "use e.g. 0")
        check(0 <= self.prior <= 1, "prior", f"must be in [0, 1], got {self.prior}", "use e.g. 0.5")
        check(0 <= self.control_prior <= 1, "control_prior", f"must be in [0, 1], got {self.control_prior}",
              "use e.g. 0.9")
        check(0 <= self.noise < 0.5, "noise", f"must be in [0, 0.5), got {self.noise}", "use e.g. 0.1")
        for n in ("vocab_nouns", "lexicon", "pretrain", "alignment", "prompts", "sft", "control"):
            check(getattr(self, n) >= 1, n, f"must be >= 1, got {getattr(self, n)}", "use a positive count")


@dataclass(frozen=True)
class Spec:
    """One study: what runs. Runtime (where it runs) lives in Profile."""
    experiment: str                      # name of the study; the folder under the runs root
    setting: Literal["resistance", "rebound", "pretrain"]   # paper's Setting I, II, III
    task: str                            # e.g. imdb, safety, alpaca, toy-reviews (labels tables)
    template: Literal["plain", "chat"]   # plain continuation (IMDb) or BEGINNING OF CONVERSATION chat
    models: tuple[Model, ...]
    data: dict[str, Data]                # role -> dataset
    recipe: Recipe = field(default_factory=Recipe)
    recipe_overrides: dict[str, dict] = field(default_factory=dict)   # stage -> recipe fields that differ
    runtime: Runtime = field(default_factory=Runtime)                  # how training runs (never identity)
    runtime_overrides: dict[str, dict] = field(default_factory=dict)  # stage -> runtime fields that differ
    volumes: Volumes = field(default_factory=Volumes)
    slices: Optional[Slices] = None
    eval: Eval = field(default_factory=Eval)
    controls: Controls = field(default_factory=Controls)
    world: Optional[World] = None
    notes: str = ""

    def __post_init__(self):
        check(bool(SAFE_NAME.fullmatch(self.experiment)), "experiment", f"{self.experiment!r} is not a safe name",
              "use up to 64 letters, digits, '.', '_' and '-'")
        check(len(self.models) >= 1, "models", "is empty", "list at least one model")
        names = [m.name for m in self.models]
        check(len(set(names)) == len(names), "models", f"duplicate model names {names}", "give each model its own name")
        for role in self.data:
            check(role in ROLES, f"data.{role}", f"unknown data role {role!r}", f"use one of {sorted(ROLES)}")
        if self.setting == "resistance":
            check(self.slices is not None, "slices", "Setting I (resistance) needs slices",
                  "add slices: {examples, fractions, responses}")
            need = ("sft", "prompts")
        else:
            check(len(self.volumes.positive) >= 1 or self.controls.from_base, "volumes.positive", "is empty",
                  "list positive volumes, e.g. [1000] (only a from-base study may have none)")
            check(len(self.volumes.negative) >= 1, "volumes.negative", "is empty",
                  "list negative volumes, e.g. [0, 100]")
            need = ("positive", "negative", "prompts")
        need += tuple(dict.fromkeys(m.pretrain_data for m in self.models if m.init))
        if "seeds" in self.recipe_overrides.get("pretrain", {}):
            check(any(m.init for m in self.models), "recipe_overrides.pretrain.seeds", "no model is pre-trained here",
                  "remove it (pre-training seeds apply to models built by init)")
        if self.controls.matched_start or self.controls.from_base:
            check(self.setting != "resistance", "controls", "apply to rebound settings only",
                  "remove them or use setting: rebound")
        if self.controls.matched_start:
            need += ("control",)
        for role in need:
            check(role in self.data, f"data.{role}", f"setting {self.setting} needs this dataset role",
                  f"add data.{role} with a path")
        for role in self.eval.compression:
            check(role in self.data, "eval.compression", f"names data role {role!r} that data does not define",
                  f"add data.{role} or remove it from eval.compression")
        if any(d.path.startswith("world:") for d in self.data.values()):
            check(self.world is not None, "world", "a data path uses world:<set> but no world is defined",
                  "add a world: section (toy world parameters)")
        for role, n in self.rows_needed().items():   # where a dataset's size is known here, volumes must fit it
            d = self.data.get(role)
            if d is None:
                continue
            if d.path.startswith("world:") and self.world is not None:
                w = self.world
                have = {"positive": w.alignment, "negative": w.alignment, "pairs": w.alignment, "control": w.control,
                        "pretrain": w.pretrain, "prompts": w.prompts, "sft": w.sft, "shifted": w.pretrain,
                        "joint": w.pretrain + w.alignment}.get(d.path[6:])
                check(have is not None, f"data.{role}.path", f"unknown toy-world set {d.path!r}",
                      f"use one of {', '.join('world:' + s for s in sorted(WORLD_SETS))}")
                check(n <= have, f"data.{role}", f"needs {n} examples, {d.path} has {have}",
                      "lower the volume, or raise the world's size of that set")
            elif (have := known_rows(d, role)) is not None:
                check(n <= have, f"data.{role}", f"needs {n} rows, {d.path} ({d.subset or 'default'}, split "
                      f"{d.split}{', filtered' if d.filter else ''}) has {have}",
                      "lower the volumes / prompts / responses, or choose a larger split")
        if self.eval.scorer.kind == "rule":
            check(self.world is not None, "eval.scorer.kind", "the rule scorer only reads toy-world text",
                  "use classifier or score_model for real data")
        for section in ("recipe_overrides", "runtime_overrides"):
            for stage in getattr(self, section):
                check(stage in TRAIN_STAGES, f"{section}.{stage}", f"unknown training stage {stage!r}",
                      f"use one of {sorted(TRAIN_STAGES)}")
                check(stage in self.setting_stages(), f"{section}.{stage}", f"setting {self.setting} has no "
                      f"{stage} stage", f"use one of {sorted(self.setting_stages())}, or remove it")
                check("seeds" not in getattr(self, section)[stage] or stage == "pretrain", f"{section}.{stage}.seeds",
                      "seeds are one chain of cells through every stage (only pre-training has its own: each "
                      "pre-training seed is a base model, crossed with every chain)", "set recipe.seeds")
                self.recipe_for(stage) if section == "recipe_overrides" else self.runtime_for(stage)

    def setting_stages(self) -> set[str]:
        """The training stages this study's setting can have (launch.plan builds them; control and pretrain only
        with a matched-start control and toy models)."""
        return {"pretrain"} | ({"slices", "cross"} if self.setting == "resistance" else
                               {"positive", "negative", "control"})

    def rows_needed(self) -> dict[str, int]:
        """Rows each data role must hold (after its filter) for this study's volumes."""
        v, need = self.volumes, {}
        if self.setting == "resistance":
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
        """Seeds of the pre-training runs (recipe_overrides.pretrain.seeds; else the first seed): one base model
        each, crossed with every seed of recipe.seeds."""
        return self.recipe_for("pretrain").seeds if "seeds" in self.recipe_overrides.get("pretrain", {}) \
            else self.recipe.seeds[:1]

    def recipe_for(self, stage: str) -> Recipe:
        over = self.recipe_overrides.get(stage, {})
        if not over:
            return self.recipe
        return build(Recipe, {**dataclasses.asdict(self.recipe), **over}, f"recipe_overrides.{stage}")

    def runtime_for(self, stage: str, profile: Optional["Profile"] = None) -> Runtime:
        """The stage's runtime: the study's, its stage override, then the profile's (the profile wins: it is where
        the hardware is described)."""
        over = {**self.runtime_overrides.get(stage, {}), **(profile.runtime if profile else {})}
        return build(Runtime, {**dataclasses.asdict(self.runtime), **over}, f"runtime_overrides.{stage}") if over \
            else self.runtime


TRAIN_STAGES = {"pretrain", "positive", "negative", "control", "slices", "cross"}


# ---------------------------------------------------------------------------------------------- the profile
PARTITION = re.compile(r"[A-Za-z0-9_.,-]{0,128}")


@dataclass(frozen=True)
class Resources:
    """What one cell of a stage asks Slurm for."""
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 4
    mem_gb: int = 0                       # 0: the partition's default
    time_min: int = 60                    # per task: with cells_per_task k, the time of k cells
    cells_per_task: int = 1               # eval stages: cells one array task runs in turn (the scorer loads once)

    def __post_init__(self):
        check(self.nodes >= 1, "nodes", f"must be >= 1, got {self.nodes}", "use 1 or more")
        check(self.gpus_per_node >= 0, "gpus_per_node", f"must be >= 0, got {self.gpus_per_node}", "use 0 on CPU")
        check(self.cpus_per_task >= 1, "cpus_per_task", f"must be >= 1, got {self.cpus_per_task}", "use e.g. 8")
        check(self.mem_gb >= 0, "mem_gb", f"must be >= 0, got {self.mem_gb}", "use 0 for the default")
        check(self.time_min >= 1, "time_min", f"must be >= 1, got {self.time_min}", "use minutes, e.g. 240")
        check(self.cells_per_task >= 1, "cells_per_task", f"must be >= 1, got {self.cells_per_task}", "use e.g. 8")


SBATCH_OWNED = {"job-name", "time", "nodes", "ntasks-per-node", "cpus-per-task", "gpus-per-node", "gres", "mem",
                "partition", "account", "qos", "array", "dependency", "output", "error", "signal", "open-mode",
                "wckey", "kill-on-invalid-dep", "constraint", "exclusive", "reservation", "mail-user", "mail-type",
                "comment", "export", "chdir", "wrap", "requeue", "no-requeue", "ntasks", "input", "parsable"}
SRUN_OWNED = {"export", "output", "error", "input", "ntasks", "ntasks-per-node", "nodes", "cpus-per-task",
              "kill-on-bad-exit", "unbuffered", "gpus-per-node", "gres", "mem", "time", "job-name", "dependency",
              "signal", "open-mode", "chdir", "jobid", "overlap", "label"}
SBATCH_VALUE = re.compile(r"[^'\"\\#$`]{0,256}")
# a secret written into a value: NAME=... with a secret's name, or a Hugging Face / W&B token's shape
SECRET_VALUE = re.compile(r"(?i:[A-Z_]*(TOKEN|SECRET|PASSW(OR)?D|API_?KEY|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY)[A-Z_]*=)"
                          r"|\bhf_[A-Za-z0-9]{30,}|\b[0-9a-f]{40}\b")
SLURM_SIGNAL_SLACK_S = 30   # slurmctld signals at its first 30-s check after (limit - delay - 30 s): measured
STARTUP_S = 5               # a task's Python installs its USR2 handler well within this after the job starts


@dataclass(frozen=True)
class Profile:
    """Where a study runs. Never part of a cell's identity: changing it never re-addresses results."""
    RENAMED: typing.ClassVar[dict] = {"train_examples_per_gpu_hour": "train_tokens_per_gpu_hour, "
                                      "train_fixed_minutes and train_minutes_per_checkpoint (launch rates RUN "
                                      "measures them)"}
    name: str
    executor: Literal["slurm", "local"] = "local"
    runs_root: str = "runs"
    partition: str = ""
    account: str = ""
    qos: str = ""
    train: Resources = field(default_factory=Resources)       # training stages
    eval: Resources = field(default_factory=Resources)        # generation / eval stages
    image: str = ""                       # Apptainer .sif; empty runs on the host Python
    binds: tuple[str, ...] = ()           # apptainer --bind paths
    env: dict[str, str] = field(default_factory=dict)         # extra environment for every task
    hf_home: str = ""                     # shared HF cache (prefetched on the login node)
    array_parallelism: int = 64
    signal_delay_s: int = 120
    max_num_timeout: int = 10
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    master_port: int = 0                  # torch.distributed's rendezvous port (firewalled sites); 0: from the job id
    master_addr: str = ""                 # where the ranks meet; empty: the job's first node (fake nodes: 127.0.0.1)
    # What sites ask of a job script. GPUs as --gpus-per-node=N or --gres=gpu:N (or gpu:<type>:N with gpu_type).
    gpu_request: Literal["gpus_per_node", "gres"] = "gpus_per_node"
    gpu_type: str = ""                    # e.g. a100 (only with gpu_request: gres)
    constraint: str = ""                  # --constraint (node features, e.g. "a100&ib")
    exclusive: bool = False               # --exclusive: whole nodes for training jobs
    reservation: str = ""
    mail_user: str = ""
    mail_type: str = ""                   # e.g. END,FAIL
    comment: str = ""
    wckey: str = ""                       # --wckey where the site accounts by workload key (none by default)
    cpu_partition: str = ""               # the CPU-only stages (world, collect); default: partition
    sbatch_extra: dict[str, str] = field(default_factory=dict)   # any other sbatch option: {begin: now+1hour}
    srun_args: tuple[str, ...] = ()       # extra srun arguments (e.g. --mpi=pmix)
    # Cost estimate for `plan` (launch.costs), measured on your cluster (`launch rates RUN` prints all four from a
    # finished study), never part of a result: training tokens one GPU processes per hour in the step loop, the
    # minutes a training cell spends loading and initialising, the minutes per checkpoint, the minutes per eval cell.
    train_tokens_per_gpu_hour: float = 0.0
    train_fixed_minutes: float = 0.0
    train_minutes_per_checkpoint: float = 0.0
    eval_minutes_per_cell: float = 0.0
    # Runtime fields (micro_batch, gradient_checkpointing, save_every_steps) for this cluster's GPUs: they override
    # the study's for every training stage and never change a cell id (launch.spec.Runtime)
    runtime: dict[str, typing.Union[int, bool]] = field(default_factory=dict)

    def __post_init__(self):
        check(bool(SAFE_NAME.fullmatch(self.name)), "name", f"{self.name!r} is not a safe name",
              "use up to 64 letters, digits, '.', '_' and '-'")
        check(self.eval.nodes == 1 and self.eval.gpus_per_node <= 1, "eval.gpus_per_node",
              f"an eval cell runs on one GPU ({self.eval.nodes} node(s) x {self.eval.gpus_per_node} GPUs asked): "
              "generation is not sharded across ranks, so more would only duplicate it",
              "use eval: {nodes: 1, gpus_per_node: 1}; eval cells run in parallel as array tasks")
        check(self.train.cells_per_task == 1, "train.cells_per_task", "a training cell is a multi-rank DeepSpeed "
              "run with its own array task", "use eval.cells_per_task to pack eval cells")
        for key in ("train_tokens_per_gpu_hour", "train_fixed_minutes", "train_minutes_per_checkpoint",
                    "eval_minutes_per_cell"):
            check(getattr(self, key) >= 0, key, "cost rates must be >= 0", "use 0 (no estimate) or a measured rate")
        for key in ("partition", "account", "qos", "reservation", "cpu_partition", "gpu_type", "wckey"):
            val = getattr(self, key)
            check(bool(PARTITION.fullmatch(val)), key, f"{val!r} has characters Slurm names never have",
                  "use letters, digits, '_', '-', '.' and ','")
        check(not self.gpu_type or self.gpu_request == "gres", "gpu_type", "a GPU type needs gpu_request: gres",
              "set gpu_request: gres, or remove gpu_type")
        check(not self.mail_user or bool(re.fullmatch(r"[\w.+-]+@[\w.-]+", self.mail_user)), "mail_user",
              f"{self.mail_user!r} is not an e-mail address", "write name@example.org")
        check(bool(re.fullmatch(r"[A-Z_,]*", self.mail_type)), "mail_type", f"{self.mail_type!r} is not a mail type "
              "list", "use e.g. END,FAIL")
        for key, val in profile_strings(self):   # every string that can reach a job script
            check(val.isprintable(), key, f"{val!r} has a newline or control character (it would split a line of "
                  "the job script)", "write the value on one line")
            check(not SECRET_VALUE.search(val), key, "holds what looks like a secret, and profiles are written "
                  "into job scripts", "export it in your shell; jobs inherit it")
        # #SBATCH lines: sbatch's own parser groups quotes and reads a backslash as an escape even inside quotes,
        # so these values keep to a character set that the shell's quoting renders the same for sbatch
        for key, val in (("constraint", self.constraint), ("comment", self.comment),
                         *((f"sbatch_extra.{k}", v) for k, v in self.sbatch_extra.items())):
            check(bool(SBATCH_VALUE.fullmatch(val)), key, f"{val!r} has a quote, backslash, '#', '$' or '`', or "
                  "is over 256 characters: sbatch would read another option out of it", "write it without them")
        for k in self.sbatch_extra:
            check(bool(re.fullmatch(r"[a-z][a-z0-9-]*", k)), f"sbatch_extra.{k}", "is not an sbatch option name",
                  "write the long option without dashes, e.g. begin or exclude")
            check(k not in SBATCH_OWNED, f"sbatch_extra.{k}", "is set by the launcher or by a profile field",
                  "use the profile's own field (partition, train.time_min, ...)")
        for i, arg in enumerate(self.srun_args):   # options only: srun runs the first word that is not one
            m = re.fullmatch(r"--([a-z][a-z0-9-]*)(=[^\s'\"\\`$#]+)?", arg)
            check(m is not None, f"srun_args[{i}]", f"{arg!r} is not an srun option (--name or --name=value)",
                  "give options only, e.g. --mpi=pmix; srun runs the project's command")
            check(m.group(1) not in SRUN_OWNED, f"srun_args[{i}]", f"--{m.group(1)} is set by the launcher",
                  "remove it (the profile's own fields set resources and the environment)")
        check(self.array_parallelism >= 1, "array_parallelism", "must be >= 1", "use e.g. 64")
        check(self.signal_delay_s >= 0, "signal_delay_s", "must be >= 0", "use e.g. 120")
        for stage, res in (("train", self.train), ("eval", self.eval)):
            latest = res.time_min * 60 - SLURM_SIGNAL_SLACK_S - STARTUP_S
            check(self.signal_delay_s <= latest, "signal_delay_s",
                  f"{self.signal_delay_s} s with {stage}.time_min={res.time_min}: Slurm may send "
                  "the signal as the job starts, before the handler that saves and requeues is installed",
                  f"use signal_delay_s <= {max(latest, 0)} or a longer {stage}.time_min")
        check(self.max_num_timeout >= 0, "max_num_timeout", "must be >= 0", "use e.g. 10")
        check(bool(re.fullmatch(r"[A-Za-z0-9.:-]*", self.master_addr)), "master_addr",
              f"{self.master_addr!r} is not a host name or address", "use e.g. 127.0.0.1, or leave it empty")
        check(self.master_port == 0 or 1024 <= self.master_port <= 65535, "master_port",
              f"must be 0 or a port in 1024..65535, got {self.master_port}", "use e.g. 29500, or 0")
        for k in self.env:
            check(bool(ENV_NAME.fullmatch(k)), f"env.{k}", "is not a valid variable name", "use letters, digits and _")
            owned = k.removeprefix("APPTAINERENV_")
            check(owned not in OWNED_ENV and not owned.startswith("ELASTICA_"), f"env.{k}", "is set by the launcher "
                  "for every cell (a profile value would replace it)", OWNED_ENV.get(owned, "remove it"))
            check(not SECRET_NAME.fullmatch(k), f"env.{k}", "looks like a secret, and secrets never go into a profile "
                  "(they would be written into job scripts)", "export it in your shell; jobs inherit it")
            check(self.env[k].isprintable(), f"env.{k}", "has a newline or control character",
                  "write the value on one line")
        build(Runtime, dict(self.runtime), "runtime")
        for key in ("runs_root", "hf_home"):   # what jobs in the image read and write must be bound into it
            path = getattr(self, key)
            check(not self.image or not path or self.in_image(path), key, f"{path} is not under any of binds "
                  f"{list(self.binds)} (nor apptainer's own: $HOME, /tmp, the working folder): jobs in the image "
                  "would not find it", f"add {'/' + Path(path).parts[1] if Path(path).is_absolute() else path} "
                  "to binds")
        if self.executor == "local":
            check(self.train.nodes == 1 and self.eval.nodes == 1, "train.nodes", "the local executor has one node",
                  "use nodes: 1, or executor: slurm")

    def in_image(self, path: str) -> bool:
        """Whether `path` is visible inside the image: under a bind (src[:dst[:opts]]) or a folder apptainer binds
        by default ($HOME, /tmp, /var/tmp, the working folder)."""
        p = Path(path).expanduser().absolute()
        roots = [Path(b.split(":")[0]).expanduser().absolute() for b in self.binds]
        roots += [Path.home(), Path("/tmp"), Path("/var/tmp"), Path.cwd()]
        return any(p == r or r in p.parents for r in roots)


# ------------------------------------------------------------------------------------------------ loading
class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors/aliases: aliases are how YAML bombs multiply, and configs do not need them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            ev = self.peek_event()
            raise ConfigError(f"line {ev.start_mark.line + 1}", "YAML aliases (*name) are not allowed",
                              "write the value out in full")
        return super().compose_node(parent, index)


def _no_duplicate_keys(node, path: str = "") -> None:
    """A key given twice is refused, named by its field path and line (YAML would keep the last silently)."""
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            where = f"{path}.{key}" if path else str(key)
            if key is not None and key in seen:
                raise ConfigError(where, f"is given twice (line {key_node.start_mark.line + 1})", "keep one of them")
            seen.add(key)
            _no_duplicate_keys(value, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _no_duplicate_keys(item, f"{path}[{i}]")


MAX_CONFIG_BYTES = 1 << 20


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("", f"config file {str(path)!r} not found", "check the path", file=str(path))
    raw = p.read_bytes()
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError("", f"file is {len(raw)} bytes", "configs are under 1 MiB", file=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("", f"not UTF-8 (byte {e.start})", "save the file as UTF-8", file=str(path)) from None
    try:
        loader = _NoAliasLoader(text)
        try:
            node = loader.get_single_node()
            _no_duplicate_keys(node)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except ConfigError as e:
        e.file = str(path)
        raise
    except RecursionError:
        raise ConfigError("", "the YAML nests too deeply", "configs are a few levels deep: flatten it",
                          file=str(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(where, f"invalid YAML: {problem}", "fix the syntax", file=str(path)) from None
    if data is None:
        raise ConfigError("", "file is empty", "see configs/toy/setting2.yaml for an example", file=str(path))
    if not isinstance(data, dict):
        raise ConfigError("", f"top level is a {type(data).__name__}", "write a mapping of keys", file=str(path))
    return data


def _convert(tp, value, where: str):
    """Check and convert one YAML value to the annotated type; raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(map(str, args))}"
            raise ConfigError(where, f"{value!r} is not allowed", hint)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a mapping, got {type(value).__name__}", f"write {where}: {{...}}")
        return build(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):   # (tuples: a dataclass's own values, merged with overrides)
            raise ConfigError(where, f"expected a list, got {type(value).__name__}", f"write {where}: [...]")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(where, f"expected {len(args)} values, got {len(value)}", f"give {len(args)} values")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a mapping, got {type(value).__name__}", f"write {where}: {{...}}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"expected true or false, got {value!r}", "write true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"expected an integer, got {value!r}", "write a whole number")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-5 (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(where, f"expected a number, got {value!r}", "write a number such as 1.0e-5")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(where, f"expected text, got {value!r}", "quote the value")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a mapping, got {type(value).__name__}", "write a mapping")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def build(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from a mapping: unknown keys, wrong types and bad values raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields_ = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in fields_:
            close = difflib.get_close_matches(str(key), list(fields_), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(fields_)}"
            if key in getattr(cls, "RENAMED", {}):
                hint = f"replaced by {cls.RENAMED[key]}"
            if key in getattr(cls, "MOVED", {}):
                hint = f"{key} is how a stage runs, not what it computes: move it to {cls.MOVED[key]}: " \
                       f"(per stage: runtime_overrides)"
            raise ConfigError(f"{prefix}{key}", "unknown key", hint)
    kwargs = {}
    for name, f in fields_.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}", "is required", f"add {name}: to {where or 'the file'}")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # __post_init__ names fields relative to its own dataclass
        if prefix:
            e.field = f"{prefix}{e.field}" if e.field else where
        raise


def load_spec(path: str | Path, base_dir: str | Path | None = None) -> Spec:
    """Load and validate a study. Local data/model paths are checked relative to base_dir (default: cwd)."""
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
                check(d.path[6:] in WORLD_SETS, f"data.{role}.path", f"unknown toy-world set {d.path!r}",
                      f"use one of {', '.join('world:' + s for s in sorted(WORLD_SETS))}")
        for key in ("model",):
            s = spec.eval.scorer
            if s.kind in ("classifier", "score_model"):
                _check_source(s.model, f"eval.scorer.{key}", base)
        for role, n in spec.rows_needed().items():   # a local file's size is known here too
            d = spec.data.get(role)
            if d is not None and source_kind(d.path) == "local" and (have := local_rows(d, base)) is not None:
                check(n <= have, f"data.{role}", f"needs {n} rows, {d.path} (split {d.split}) has {have}"
                      f"{' before its filter' if d.filter else ''}", "lower the volumes / prompts, or use more data")
    except ConfigError as e:
        e.file = str(path)
        raise
    return spec


WORLD_SETS = {"pretrain", "positive", "negative", "prompts", "sft", "control", "pairs", "shifted", "joint"}


def local_rows(d: Data, base: Path) -> int | None:
    """Rows of a local JSON Lines / JSON / Parquet file in its split, counted cheaply (None where unknown)."""
    p = Path(d.path).expanduser()
    p = p if p.is_absolute() else base / p
    try:
        if p.suffix == ".jsonl":
            with p.open("rb") as f:
                total = sum(1 for line in f if line.strip())
        elif p.suffix == ".json":
            import json
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


SITE_VARS = ("USER", "HOME", "SCRATCH", "WORK", "TMPDIR", "PROJECT")   # the only variables a profile path expands


def profile_strings(obj, prefix: str = ""):
    """(field path, value) of every string in a profile, nested sections and lists included."""
    items = dataclasses.asdict(obj).items() if dataclasses.is_dataclass(obj) else \
        obj.items() if isinstance(obj, dict) else enumerate(obj)
    for k, v in items:
        path = f"{prefix}[{k}]" if isinstance(k, int) else f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, str):
            yield path, v
            if isinstance(obj, dict):
                yield f"{path} (key)", str(k)
        elif isinstance(v, (dict, list, tuple)):
            yield from profile_strings(v, path)


def expand_site_vars(value: str, where: str) -> str:
    """Expand $USER / ${HOME}-style site variables of SITE_VARS; any other variable is refused (a profile path must
    never pull $HF_TOKEN or $WANDB_API_KEY into a job script)."""
    def sub(m):
        name = m.group(1) or m.group(2)
        check(name in SITE_VARS, where, f"${name} is not a variable a profile may expand",
              f"use {', '.join('$' + v for v in SITE_VARS)}, or write the path out")
        if name not in os.environ and name in ("USER", "HOME"):   # unset in some batch and container shells
            import getpass
            return getpass.getuser() if name == "USER" else str(Path.home())
        check(name in os.environ, where, f"${name} is not set in this shell", "set it, or write the path out")
        return os.environ[name]
    value = os.path.expanduser(value) if value.startswith("~") else value   # the HF libraries expand it too
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", sub, value)


def load_profile(path: str | Path) -> Profile:
    data = read_yaml(path)
    try:
        if "name" not in data:
            data = {"name": Path(path).stem, **data}
        for key in ("runs_root", "image", "hf_home"):  # $USER, $SCRATCH... are site facts, expanded here
            if isinstance(data.get(key), str):
                data[key] = expand_site_vars(data[key], key)
        if isinstance(data.get("binds"), list):
            data["binds"] = [expand_site_vars(b, f"binds[{i}]") if isinstance(b, str) else b
                             for i, b in enumerate(data["binds"])]
        return build(Profile, data)
    except ConfigError as e:
        e.file = str(path)
        raise
    except RecursionError:
        raise ConfigError("", "the profile nests too deeply", "flatten it", file=str(path)) from None
