"""The cluster profile: where and how a study runs (executor, partition, resources per stage, image,
binds, caches, site options, cost rates), loaded from one YAML file under `configs/profiles/`. Never
part of a cell's identity: changing it never re-addresses a result. Every string that can reach a
job script is checked here.

    from launch.core.profile import load_profile
    profile = load_profile("configs/profiles/example-gpu.yaml")
"""
from __future__ import annotations

import dataclasses
import difflib
import getpass
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from launch.core.schema import SAFE_NAME, ConfigError, build, check, read_yaml
from launch.core.spec import STAGES, Runtime

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# profile env keys that are (or look like) secrets: they reach jobs through the shell's env only
SECRET_NAME = re.compile(r".*(TOKEN|SECRET|PASSW(OR)?D|API_?KEY|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY).*", re.I)
# variables the launcher sets for every cell (launch.core.env.job_env, the Slurm task): a profile's
# env may not replace them; what to use instead
OWNED_ENV = {
    "PYTHONPATH": "remove it: jobs import the code snapshot of their submission",
    "PYTHONNOUSERSITE": "remove it", "PYTHONUNBUFFERED": "remove it",
             "TOKENIZERS_PARALLELISM": "remove it",
    "PYTHONSAFEPATH": "remove it",
    "WANDB_MODE": "use the profile's wandb_mode", "HF_HOME": "use the profile's hf_home",
    "HF_HUB_CACHE": "use the profile's hf_home", "HF_DATASETS_CACHE": "use the profile's hf_home",
    "HF_HUB_OFFLINE": "remove it: jobs are offline when hf_home is set",
    "HF_DATASETS_OFFLINE": "remove it: jobs are offline when hf_home is set",
    "MASTER_PORT": "use the profile's master_port", "MASTER_ADDR": "use the profile's master_addr",
    **dict.fromkeys(("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
                    "remove it: Slurm's task ids are"),
}
PARTITION = re.compile(r"[A-Za-z0-9_.,-]{0,128}")


@dataclass(frozen=True)
class Resources:
    """What one cell of a stage asks Slurm for."""
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 4
    mem_gb: int = 0                       # 0: the partition's default
    time_min: int = 60                    # per task: with cells_per_task k, the time of k cells
    # eval stages: cells one array task runs in turn (the scorer loads once)
    cells_per_task: int = 1

    def __post_init__(self):
        check(self.nodes >= 1, "nodes", f"must be >= 1, got {self.nodes}", "use 1 or more")
        check(self.gpus_per_node >= 0, "gpus_per_node", f"must be >= 0, got {self.gpus_per_node}",
              "use 0 on CPU")
        check(self.cpus_per_task >= 1, "cpus_per_task", f"must be >= 1, got {self.cpus_per_task}",
              "use e.g. 8")
        check(self.mem_gb >= 0, "mem_gb", f"must be >= 0, got {self.mem_gb}",
              "use 0 for the default")
        check(self.time_min >= 1, "time_min", f"must be >= 1, got {self.time_min}",
              "use minutes, e.g. 240")
        check(self.cells_per_task >= 1, "cells_per_task",
              f"must be >= 1, got {self.cells_per_task}", "use e.g. 8")


# world and collect cells
LIGHT = Resources(nodes=1, gpus_per_node=0, cpus_per_task=2, time_min=60)


SBATCH_OWNED = {"job-name", "time", "nodes", "ntasks-per-node", "cpus-per-task", "gpus-per-node",
                "gres", "mem",
                "partition", "account", "qos", "array", "dependency", "output", "error", "signal",
                "open-mode",
                "wckey", "kill-on-invalid-dep", "constraint", "exclusive", "reservation",
                "mail-user", "mail-type",
                "comment", "export", "chdir", "wrap", "requeue", "no-requeue", "ntasks", "input",
                "parsable"}
SRUN_OWNED = {"export", "output", "error", "input", "ntasks", "ntasks-per-node", "nodes",
              "cpus-per-task",
              "kill-on-bad-exit", "unbuffered", "gpus-per-node", "gres", "mem", "time", "job-name",
              "dependency", "signal", "open-mode", "chdir", "jobid", "overlap", "label"}
SBATCH_VALUE = re.compile(r"[^'\"\\#$`]{0,256}")
# a secret written into a value: NAME=... with a secret's name, or a Hugging Face / W&B token
SECRET_VALUE = re.compile(r"(?i:[A-Z_]*(TOKEN|SECRET|PASSW(OR)?D|API_?KEY|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY)[A-Z_]*=)"
                          r"|\bhf_[A-Za-z0-9]{30,}|\b[0-9a-f]{40}\b")
# slurmctld signals at its first 30-s check after (limit - delay - 30 s): measured
SLURM_SIGNAL_SLACK_S = 30
# a task's Python installs its USR2 handler well within this after the job starts
STARTUP_S = 5


@dataclass(frozen=True)
class Profile:
    """Where a study runs. Never part of a cell's identity: changing it re-addresses no result."""
    RENAMED: typing.ClassVar[dict] = {"train_examples_per_gpu_hour": "train_tokens_per_gpu_hour, "
                                      "train_fixed_minutes and train_minutes_per_checkpoint "
                                      "(launch rates RUN "
                                      "measures them)"}
    name: str
    executor: Literal["slurm", "local"] = "local"
    runs_root: str = "runs"
    partition: str = ""
    account: str = ""
    qos: str = ""
    train: Resources = field(default_factory=Resources)       # training stages
    eval: Resources = field(default_factory=Resources)        # generation / eval stages
    # per stage, any of the fields above over its section (train, eval, or the CPU-only
    # world/collect cells), e.g. {negative: {nodes: 1, time_min: 90}}; a training or eval stage
    # without its own time_min asks for the plan's estimate (launch.costs.stage_time_min) where the
    # profile has cost rates, never more than its section's
    stages: dict[str, dict[str, int]] = field(default_factory=dict)
    image: str = ""                       # Apptainer .sif; empty runs on the host Python
    binds: tuple[str, ...] = ()           # apptainer --bind paths
    env: dict[str, str] = field(default_factory=dict)         # extra environment for every task
    hf_home: str = ""                     # shared HF cache (prefetched on the login node)
    array_parallelism: int = 64
    signal_delay_s: int = 120
    max_num_timeout: int = 10
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    # torch.distributed's rendezvous port (firewalled sites); 0: from the job id
    master_port: int = 0
    # where the ranks meet; empty: the job's first node (fake nodes: 127.0.0.1)
    master_addr: str = ""
    # What sites ask of a job script. GPUs as --gpus-per-node=N or --gres=gpu:N (or gpu:<type>:N
    # with gpu_type).
    gpu_request: Literal["gpus_per_node", "gres"] = "gpus_per_node"
    gpu_type: str = ""                    # e.g. a100 (only with gpu_request: gres)
    constraint: str = ""                  # --constraint (node features, e.g. "a100&ib")
    exclusive: bool = False               # --exclusive: whole nodes for training jobs
    reservation: str = ""
    mail_user: str = ""
    mail_type: str = ""                   # e.g. END,FAIL
    comment: str = ""
    # --wckey where the site accounts by workload key (none by default)
    wckey: str = ""
    cpu_partition: str = ""               # the CPU-only stages (world, collect); default: partition
    # any other sbatch option: {begin: now+1hour}
    sbatch_extra: dict[str, str] = field(default_factory=dict)
    srun_args: tuple[str, ...] = ()       # extra srun arguments (e.g. --mpi=pmix)
    # Cost estimate for `plan` (launch.costs), measured on your cluster (`launch rates RUN` prints
    # all four from a finished study), never part of a result: training tokens one GPU processes per
    # hour in the step loop, the minutes a training cell spends loading and initialising, the
    # minutes per checkpoint, the minutes per eval cell.
    train_tokens_per_gpu_hour: float = 0.0
    train_fixed_minutes: float = 0.0
    train_minutes_per_checkpoint: float = 0.0
    eval_minutes_per_cell: float = 0.0
    # Runtime fields (micro_batch, gradient_checkpointing, save_every_steps) for this cluster's
    # GPUs: they override the study's for every training stage, never a cell id (spec.Runtime)
    runtime: dict[str, typing.Union[int, bool]] = field(default_factory=dict)

    def __post_init__(self):
        check(bool(SAFE_NAME.fullmatch(self.name)), "name", f"{self.name!r} is not a safe name",
              "use up to 64 letters, digits, '.', '_' and '-'")
        check(self.eval.nodes == 1 and self.eval.gpus_per_node <= 1, "eval.gpus_per_node",
              f"an eval cell runs on one GPU ({self.eval.nodes} node(s) x "
              f"{self.eval.gpus_per_node} GPUs asked): "
              "generation is not sharded across ranks, so more would only duplicate it",
              "use eval: {nodes: 1, gpus_per_node: 1}; eval cells run in parallel as array tasks")
        check(self.train.cells_per_task == 1, "train.cells_per_task",
              "a training cell is a multi-rank DeepSpeed "
              "run with its own array task", "use eval.cells_per_task to pack eval cells")
        for key in ("train_tokens_per_gpu_hour", "train_fixed_minutes",
                    "train_minutes_per_checkpoint", "eval_minutes_per_cell"):
            check(getattr(self, key) >= 0, key, "cost rates must be >= 0",
                  "use 0 (no estimate) or a measured rate")
        for key in ("partition", "account", "qos", "reservation", "cpu_partition", "gpu_type",
                    "wckey"):
            val = getattr(self, key)
            check(bool(PARTITION.fullmatch(val)), key, f"{val!r} has characters Slurm names never "
                                                       "have",
                  "use letters, digits, '_', '-', '.' and ','")
        check(not self.gpu_type or self.gpu_request == "gres", "gpu_type",
              "a GPU type needs gpu_request: gres", "set gpu_request: gres, or remove gpu_type")
        check(not self.mail_user or bool(re.fullmatch(r"[\w.+-]+@[\w.-]+", self.mail_user)),
              "mail_user", f"{self.mail_user!r} is not an e-mail address", "write name@example.org")
        check(bool(re.fullmatch(r"[A-Z_,]*", self.mail_type)), "mail_type",
              f"{self.mail_type!r} is not a mail type list", "use e.g. END,FAIL")
        for key, val in profile_strings(self):   # every string that can reach a job script
            check(val.isprintable(), key, f"{val!r} has a newline or control character (it would "
                                          "split a line of "
                  "the job script)", "write the value on one line")
            check(not SECRET_VALUE.search(val), key, "holds what looks like a secret, and profiles "
                                                     "are written "
                  "into job scripts", "export it in your shell; jobs inherit it")
        # #SBATCH lines: sbatch's own parser groups quotes and reads a backslash as an escape even
        # inside quotes, so these values keep to a character set that the shell's quoting renders
        # the same for sbatch
        for key, val in (("constraint", self.constraint), ("comment", self.comment),
                         *((f"sbatch_extra.{k}", v) for k, v in self.sbatch_extra.items())):
            check(bool(SBATCH_VALUE.fullmatch(val)), key, f"{val!r} has a quote, backslash, '#', "
                                                          "'$' or '`', or "
                  "is over 256 characters: sbatch would read another option out of it",
                  "write it without them")
        for k in self.sbatch_extra:
            check(bool(re.fullmatch(r"[a-z][a-z0-9-]*", k)), f"sbatch_extra.{k}",
                  "is not an sbatch option name",
                  "write the long option without dashes, e.g. begin or exclude")
            check(k not in SBATCH_OWNED, f"sbatch_extra.{k}", "is set by the launcher or by a "
                                                              "profile field",
                  "use the profile's own field (partition, train.time_min, ...)")
        # options only: srun runs the first word that is not one
        for i, arg in enumerate(self.srun_args):
            m = re.fullmatch(r"--([a-z][a-z0-9-]*)(=[^\s'\"\\`$#]+)?", arg)
            check(m is not None, f"srun_args[{i}]", f"{arg!r} is not an srun option (--name or "
                                                    "--name=value)",
                  "give options only, e.g. --mpi=pmix; srun runs the project's command")
            check(m.group(1) not in SRUN_OWNED, f"srun_args[{i}]",
                  f"--{m.group(1)} is set by the launcher",
                  "remove it (the profile's own fields set resources and the environment)")
        check(self.array_parallelism >= 1, "array_parallelism", "must be >= 1", "use e.g. 64")
        check(self.signal_delay_s >= 0, "signal_delay_s", "must be >= 0", "use e.g. 120")
        for stage, over in self.stages.items():
            close = difflib.get_close_matches(stage, list(STAGES), n=1)
            check(stage in STAGES, f"stages.{stage}", "is not a stage",
                  f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(STAGES)}")
            base = {"train": self.train, "eval": self.eval, "light": LIGHT}[STAGES[stage]]
            build(Resources, {**dataclasses.asdict(base), **over}, f"stages.{stage}")
            res = self.resources(stage)
            check(STAGES[stage] == "train" or (res.nodes == 1 and res.gpus_per_node <= 1),
                  f"stages.{stage}.gpus_per_node", "its cells run on one node and at most one GPU",
                  "use nodes: 1 and gpus_per_node: 0 or 1")
            check(STAGES[stage] != "train" or self.resources(stage).cells_per_task == 1,
                  f"stages.{stage}.cells_per_task", "a training cell has its own array task",
                  "remove it")
        for stage, res in (("train", self.train), ("eval", self.eval),
                           *((f"stages.{k}", self.resources(k)) for k in self.stages)):
            latest = res.time_min * 60 - SLURM_SIGNAL_SLACK_S - STARTUP_S
            check(self.signal_delay_s <= latest, "signal_delay_s",
                  f"{self.signal_delay_s} s with {stage}.time_min={res.time_min}: Slurm may send "
                  "the signal as the job starts, before the handler that saves and requeues is "
                  "installed",
                  f"use signal_delay_s <= {max(latest, 0)} or a longer {stage}.time_min")
        check(self.max_num_timeout >= 0, "max_num_timeout", "must be >= 0", "use e.g. 10")
        check(bool(re.fullmatch(r"[A-Za-z0-9.:-]*", self.master_addr)), "master_addr",
              f"{self.master_addr!r} is not a host name or address",
              "use e.g. 127.0.0.1, or leave it empty")
        check(self.master_port == 0 or 1024 <= self.master_port <= 65535, "master_port",
              f"must be 0 or a port in 1024..65535, got {self.master_port}", "use e.g. 29500, or 0")
        for k in self.env:
            check(bool(ENV_NAME.fullmatch(k)), f"env.{k}", "is not a valid variable name",
                  "use letters, digits and _")
            owned = k.removeprefix("APPTAINERENV_")
            check(owned not in OWNED_ENV and not owned.startswith("ELASTICA_"), f"env.{k}",
                  "is set by the launcher for every cell (a profile value would replace it)",
                  OWNED_ENV.get(owned, "remove it"))
            check(not SECRET_NAME.fullmatch(k), f"env.{k}", "looks like a secret, and secrets "
                                                            "never go into a profile "
                  "(they would be written into job scripts)", "export it in your shell; jobs "
                                                              "inherit it")
            check(self.env[k].isprintable(), f"env.{k}", "has a newline or control character",
                  "write the value on one line")
        build(Runtime, dict(self.runtime), "runtime")
        # what jobs in the image read and write must be bound into it
        for key in ("runs_root", "hf_home"):
            path = getattr(self, key)
            check(not self.image or not path or self.in_image(path), key,
                  f"{path} is not under any of binds {list(self.binds)} (nor apptainer's own: "
                  "$HOME, /tmp, the working folder): jobs in the image would not find it",
                  f"add {'/' + Path(path).parts[1] if Path(path).is_absolute() else path} to binds")
        if self.executor == "local":
            check(self.train.nodes == 1 and self.eval.nodes == 1, "train.nodes",
                  "the local executor has one node", "use nodes: 1, or executor: slurm")
            check(not self.stages, "stages", "the local executor asks no scheduler for resources",
                  "remove stages, or use executor: slurm")

    def resources(self, stage: str) -> Resources:
        """A `stage` cell's Slurm ask: train, eval or LIGHT, with the stage's overrides."""
        base = {"train": self.train, "eval": self.eval, "light": LIGHT}[STAGES[stage]]
        over = self.stages.get(stage)
        return dataclasses.replace(base, **over) if over else base

    def in_image(self, path: str) -> bool:
        """Whether `path` is visible inside the image: under a bind (src[:dst[:opts]]) or a folder
        apptainer binds by default ($HOME, /tmp, /var/tmp, the working folder)."""
        p = Path(path).expanduser().absolute()
        roots = [Path(b.split(":")[0]).expanduser().absolute() for b in self.binds]
        roots += [Path.home(), Path("/tmp"), Path("/var/tmp"), Path.cwd()]
        return any(p == r or r in p.parents for r in roots)


# the only variables a profile path expands
SITE_VARS = ("USER", "HOME", "SCRATCH", "WORK", "TMPDIR", "PROJECT")


def profile_strings(obj, prefix: str = ""):
    """(field path, value) of every string in a profile, nested sections and lists included."""
    items = dataclasses.asdict(obj).items() if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else \
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
    """Expand $USER / ${HOME}-style site variables of SITE_VARS; any other variable is refused (a
    profile path must never pull $HF_TOKEN or $WANDB_API_KEY into a job script)."""
    def sub(m):
        name = m.group(1) or m.group(2)
        check(name in SITE_VARS, where, f"${name} is not a variable a profile may expand",
              f"use {', '.join('$' + v for v in SITE_VARS)}, or write the path out")
        # unset in some batch and container shells
        if name not in os.environ and name in ("USER", "HOME"):
            return getpass.getuser() if name == "USER" else str(Path.home())
        check(name in os.environ, where, f"${name} is not set in this shell",
              "set it, or write the path out")
        return os.environ[name]
    # the HF libraries expand it too
    value = os.path.expanduser(value) if value.startswith("~") else value
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", sub, value)


def load_profile(path: str | Path) -> Profile:
    data = read_yaml(path)
    try:
        if "name" not in data:
            data = {"name": Path(path).stem, **data}
        # $USER, $SCRATCH... are site facts, expanded here
        for key in ("runs_root", "image", "hf_home"):
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
        raise ConfigError("", "the profile nests too deeply", "flatten it",
                          file=str(path)) from None
