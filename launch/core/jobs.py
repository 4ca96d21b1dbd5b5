"""The cell contract: job configs (one per cell kind), the kind registry, output checks, the
worker's exit codes.

A job holds everything that defines a cell's result (its identity) and nothing about where or how
fast it runs (that is `launch.core.spec.Runtime` and the profile). Paths to other cells' outputs are
`@stage/cell/...` references (see launch.core.layout.resolve). Jobs travel as JSON (`job.json` in
the cell folder, and the record) and are rebuilt with `launch.core.schema.build`, which validates
them. `KINDS` is the one table of what each kind of cell is: its job class, the function the worker
calls, its outputs and its output check (what a cell asks Slurm for is its stage's:
`launch.core.spec.STAGES`). Everything below `launch` (train, eval) imports this module; nothing
here imports them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

from launch.core.schema import ConfigError
from launch.core.spec import Claim, Data, Eval, Init, Recipe, Runtime, World

EXIT_BAD_INPUT = 2     # one `error:` line on stderr: what a config, path or flag can fix
# one `error:` line on stderr: a model, tokenizer, dataset or scorer that exists failed to load
EXIT_LOAD = 3
# the cell saved after a signal: run it again to resume (the job script requeues)
EXIT_PREEMPTED = 75


class Preempted(Exception):
    """The cell saved its resumable state after a signal; rerun it to continue."""


class LoadError(Exception):
    """A source that exists failed to load (out of memory, torn weights, a library's error): not bad
    input, so never a ConfigError. One line with the real cause; the worker exits EXIT_LOAD."""

    def __init__(self, what: str, path: str, cause: BaseException):
        self.text = f"error: cannot load {what} from {path}: {type(cause).__name__}: " + \
            (str(cause).strip().splitlines() or [""])[0][:200]
        super().__init__(self.text)

    def line(self) -> str:
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in self.text)


def load_failure(what: str, path: str, e: Exception, field: str, fix: str) -> Exception:
    """The one-line error for a failed load: a missing path, hub id or cache entry (OSError: what
    the config or a prefetch fixes) is a ConfigError naming `field`; else a LoadError, its cause."""
    if isinstance(e, ConfigError):
        return e
    if isinstance(e, OSError) and not _is_memory(e):
        return ConfigError(field, f"cannot load {what} from {path}: {type(e).__name__}: "
                           f"{(str(e).strip().splitlines() or [''])[0][:160]}", fix)
    return LoadError(what, path, e)


def _is_memory(e: BaseException) -> bool:
    return "out of memory" in str(e).lower()


@dataclass(frozen=True)
class ModelRef:
    """Where a stage's starting weights come from."""
    # hub id, local dir, or @stage/cell/checkpoints/<milestone>; "" with init
    path: str
    revision: str = "main"
    trust_remote_code: bool = False
    init: Optional[Init] = None           # build from scratch with the world's tokenizer
    # tokenizer location when it differs from path (init models)
    tokenizer: str = ""


@dataclass(frozen=True)
class TrainJob:
    """One training run: from `model`, on the first max(milestones) examples of the seeded order."""
    model: ModelRef
    data: Data
    recipe: Recipe
    seed: int
    template: Literal["plain", "chat"]
    # example counts at which weights are saved (the last ends the run)
    milestones: tuple[int, ...]
    stage: str = "train"


@dataclass(frozen=True)
class GenerateJob:
    """Setting I: a slice answers held-out prompts, which become a dataset (train, heldout)."""
    model: ModelRef
    prompts: Data
    eval: Eval
    template: Literal["plain", "chat"]
    train_count: int                      # answers written to train.jsonl
    heldout_count: int                    # answers written to heldout.jsonl
    seed: int


@dataclass(frozen=True)
class EvalJob:
    """Score one checkpoint: scored generations, bits/token per dataset, KL to the base."""
    model: ModelRef
    base: ModelRef
    prompts: Data
    eval: Eval
    template: Literal["plain", "chat"]
    compression: dict[str, Data] = field(default_factory=dict)
    seed: int = 0
    max_length: int = 512
    # toy world: also bits/token on attribute words ('+'/'-' tokens)
    attribute_tokens: bool = False


@dataclass(frozen=True)
class WorldJob:
    """Toy world: generate the synthetic datasets and the word-level tokenizer."""
    world: World
    template: Literal["plain", "chat"]
    # WORLD_GENERATOR of the code that builds it (the planner sets it)
    generator: int = 0

    # a job planned by other code: this code would build another world under its id
    def __post_init__(self):
        if self.generator != WORLD_GENERATOR:
            raise ConfigError("generator", "this code builds toy-world generator "
                                           f"{WORLD_GENERATOR}, the job asks "
                              f"for {self.generator}", "plan the study again with this code (a new "
                                                       "world cell)")


# The version of train/toyworld.build_world's output: part of the world cell's identity, like a hub
# dataset's revision. Bump it with any change to what the generator writes for a given World (a new
# set can change the held-out prompts: they avoid every training set's); test_toyworld pins the
# output of each version.
WORLD_GENERATOR = 2


@dataclass(frozen=True)
class Context:
    """What the worker hands a cell's entry point once, with its job (`entry(job, ctx)`), from the
    cell's job.json: where the cell sits in its study and how it runs. Work code never reads the
    orchestrator's files back."""
    key: str                              # <stage>/<cell id>
    # its table coordinates (model, seed, positive, negative, ...)
    coords: dict
    upstream: tuple[str, ...]             # stage/cell keys of the cells it reads
    out_dir: Path                         # its folder
    # the study's folder (@stage/... references resolve against it)
    exp_dir: Path
    # how a training stage runs on this hardware (never identity)
    runtime: Runtime = Runtime()

    @property
    def stage(self) -> str:
        return self.key.split("/", 1)[0]


@dataclass(frozen=True)
class CollectJob:
    """Turn every cell's results into tables and plots, and test the study's claims."""
    experiment: str
    setting: str
    task: str
    claims: tuple[Claim, ...] = ()


_FIELDS: dict[type, tuple[str, ...]] = {}


def _plain(obj):
    """dataclasses.asdict without deep copies (jobs share frozen sub-configs; none is mutated)."""
    names = _FIELDS.get(type(obj))
    if names is None and dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = _FIELDS[type(obj)] = tuple(f.name for f in dataclasses.fields(obj))
    if names is not None:
        return {n: _plain(getattr(obj, n)) for n in names}
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def jsonable(obj):
    """A job (or any config dataclass) as plain JSON (tuples become lists)."""
    return json.loads(json.dumps(_plain(obj), default=list))


# -------------------------------------------------------------------------------- output checks
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


def json_problem(data, name: str, kind: str) -> str | None:
    """The schema part of an output check, on a JSON output already parsed (the collector reads each
    file once): result.json is a non-empty list of metrics with name, finite value, stderr and n; a
    training cell's summary.json has a finite mean_loss."""
    if not isinstance(data, dict):
        return f"{name} is not a JSON object"
    if name == "result.json":
        ms = data.get("metrics")
        if not isinstance(ms, list) or not ms:
            return "result.json has no metrics"
        return next((f"result.json: {w}" for w in map(metric_problem, ms) if w), None)
    if name == "summary.json" and kind == "train":
        return None if _finite(data.get("mean_loss")) else "summary.json has no finite mean_loss"
    return None


def _file_problem(cell_dir: str | Path, name: str, kind: str) -> str | None:
    """JSON has its schema, JSON Lines holds records, anything else exists."""
    p = Path(cell_dir) / name
    if p.suffix not in (".json", ".jsonl"):
        return None if p.exists() else f"{name} is missing"
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else [json.loads(l) for l in text.splitlines() if l.strip()]
    except (OSError, ValueError):
        return f"{name} is missing or not valid JSON"
    if p.suffix == ".jsonl":
        return None if data and all(isinstance(r, dict)
                                    for r in data) else f"{name} holds no records"
    return json_problem(data, name, kind)


def safetensors_header(path: str | Path) -> dict | None:
    """A safetensors file's header (tensor name -> dtype, shape, data_offsets), read without its
    weights; None when the file is not whole (empty, truncated, or its header not matching size)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:   # two positioned reads, no buffered file object: the collector checks 10,000 (bench P5)
        size = os.fstat(fd).st_size
        n = int.from_bytes(os.pread(fd, 8, 0), "little") if size >= 8 else -1
        if not 2 <= n <= size - 8:
            return None
        header = json.loads(os.pread(fd, n, 8))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        return header if header and 8 + n + max(ends, default=0) == size else None
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    finally:
        os.close(fd)


def _checkpoint_problem(cell_dir: str | Path, name: str, kind: str) -> str | None:
    """A checkpoint is done when its config is there and every weights file is whole."""
    try:
        with os.scandir(os.path.join(cell_dir, "checkpoints", name)) as found:
            files = {e.name: e for e in found}
    except OSError:
        files = {}
    weights = sorted(f for f in files if f.endswith(".safetensors"))
    if "config.json" not in files or not files["config.json"].is_file() or not weights:
        return f"checkpoint {name} lacks its config or weights"
    bad = [w for w in weights if safetensors_header(files[w].path) is None]
    return f"checkpoint {name}: {', '.join(bad)} is not a whole safetensors file" if bad else None


# --------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Kind:
    """What one kind of cell is, for the planner, worker, executors, layout and collector."""
    name: str
    job: type                             # its job dataclass (job.json's "job" is rebuilt into it)
    entry: str                            # "module:function" the worker calls: f(job, ctx: Context)
    # what its folder holds when done; train cells: their milestones
    outputs: tuple[str, ...]
    # (cell_dir, output, kind) -> None when valid, else why
    check: Callable[[str | Path, str, str], Optional[str]]
    # a done cell may be reused by another study with the same cell (Plan.adopt)
    shared: bool = True


KINDS = {k.name: k for k in (
    Kind("world", WorldJob, "train.toyworld:main", ("data", "tokenizer"), _file_problem),
    # own ranks
    Kind("train", TrainJob, "train.trainer:main", (), _checkpoint_problem),
    Kind("generate", GenerateJob, "eval.evaluate:generate_main",
         ("result.json", "train.jsonl", "heldout.jsonl"), _file_problem),
    Kind("eval", EvalJob, "eval.evaluate:main", ("result.json",), _file_problem),
    Kind("collect", CollectJob, "eval.collect:cell_main", ("summary.json",), _file_problem,
         shared=False),   # it writes its study's report/
)}


def output_problem(cell_dir: str | Path, name: str, kind: str) -> str | None:
    """The one check of every cell output (worker, status, collector): None when valid."""
    k = KINDS.get(kind)
    return (k.check if k else _file_problem)(cell_dir, name, kind)
