"""Shared fixtures: a tiny toy world and tiny real-architecture models built locally (no hub), and a
helper that runs a cell as real processes (1 or 2 ranks, gloo) exactly as the executors do.

    .venv/bin/python -m pytest -q tests
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one float-summation order everywhere (local, 2 ranks, Slurm)
os.environ.setdefault("OMP_NUM_THREADS", "1")
for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
    os.environ.setdefault(var, str(ROOT / ".cache" / "wandb"))


@pytest.fixture(scope="session")
def exp_dir(tmp_path_factory) -> Path:
    """An experiment folder with a small toy world (world/data/*.jsonl, world/tokenizer) and tiny
    models."""
    from launch.core.spec import World
    from train.toyworld import write_world
    exp = tmp_path_factory.mktemp("exp")
    write_world(World(pretrain=600, alignment=400, prompts=64, sft=200, control=200), exp / "world")
    for arch in ("gpt2", "llama"):
        save_tiny_model(arch, exp / "world" / "tokenizer", exp / "models" / arch)
    return exp


def save_tiny_model(arch: str, tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer
    from launch.core.jobs import ModelRef
    from launch.core.spec import Init
    from train.models import load_model
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = load_model(ModelRef(path="", init=Init(arch=arch, layers=2, width=32, heads=4,
                                                   context=64)), out, tok, seed)
    with torch.no_grad():
        model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# what the trainer tests run with unless they say
TEST_RUNTIME = {"micro_batch": 4, "save_every_steps": 1000}


def write_cell(cell_dir: Path, job, kind: str = "train", stage: str = "positive", outputs=(),
               runtime=None) -> Path:
    """A cell folder with the job.json the executors write (launch.plan.Cell.meta)."""
    from launch.plan import Cell
    from launch.worker import write_job
    cell = Cell(stage, kind, cell_dir.name, job, outputs=tuple(outputs))
    cell_dir.mkdir(parents=True, exist_ok=True)
    write_job(cell_dir, cell.meta({**TEST_RUNTIME, **(runtime or {})} if kind == "train" else {}))
    return cell_dir


def run_cell_procs(cell_dir: Path, ranks: int = 1, env: dict | None = None, wait: bool = True):
    """Run `python -m launch run-cell` as `ranks` real processes; returns their
    CompletedProcess/Popen objects."""
    port = free_port()
    procs = []
    for r in range(ranks):
        e = dict(os.environ, PYTHONUNBUFFERED="1")
        e.update(env or {})
        if ranks > 1:
            e.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "launch", "run-cell", str(cell_dir)],
                                      cwd=ROOT, env=e,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    if not wait:
        return procs
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        outs.append((p.returncode, out))
    return outs


def reduced_config(tmp_path: Path) -> Path:
    """The toy Setting II study at its smallest: what the reduced-demo, reliability and Slurm tests
    run."""
    import yaml
    cfg = yaml.safe_load((ROOT / "configs/toy/setting2.yaml").read_text())
    cfg["experiment"] = "toy-reduced"
    cfg["world"].update(pretrain=4000, alignment=200, prompts=200, control=200)
    cfg["models"][0].update(init={"arch": "gpt2", "layers": 2, "width": 64, "heads": 4,
                                  "context": 64},
                            pretrain_examples=4000)
    cfg["volumes"] = {"positive": [32, 64], "negative": [0, 16, 32]}
    cfg["eval"].update(prompts=200, compression_examples=50)
    # rolling checkpoints often, so that a kill finds one to resume
    cfg["runtime"]["save_every_steps"] = 4
    cfg["recipe_overrides"]["pretrain"].update(lr=3e-3)
    p = tmp_path / "reduced.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="session")
def reduced_run(tmp_path_factory):
    """The reduced toy study run once per test process (each pytest-xdist worker its own: sharing
    one made a worker wait for the other), undisturbed, through the local executor: (plan, runs
    root)."""
    from launch.local import run_plan
    from launch.plan import make_plan
    from launch.core.profile import load_profile
    from launch.core.spec import load_spec
    tmp = tmp_path_factory.mktemp("reduced")
    plan = make_plan(load_spec(reduced_config(tmp)))
    runs = tmp / "runs"
    assert run_plan(plan, runs, load_profile(ROOT / "configs/profiles/local-cpu.yaml")) == 0
    return plan, runs


@pytest.fixture(scope="session")
def cluster():
    """The real one-machine Slurm cluster (tests/slurm/up.sh, idempotent): every test that needs
    Slurm takes this fixture, so that `make test` alone works on a machine where nothing was
    installed before."""
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (tests/slurm/up.sh)")
    # to check that no other test needs Slurm (README, "make test")
    if os.environ.get("ELASTICA_NO_SLURM"):
        pytest.skip("ELASTICA_NO_SLURM is set")
    r = subprocess.run(["bash", str(ROOT / "tests/slurm/up.sh")],
                       env=dict(os.environ, WITH_DBD="1", CPUS="8", NODES="2"),
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"tests/slurm/up.sh failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return True


# a job comment with spaces and shell metacharacters, no quotes: what sbatch must read whole
COMMENT = "a study (x&y|z) <10%> @site: 2 x 8 GPUs, ZeRO-3"


def slurm_profile(tmp_path: Path, **over) -> Path:
    """The local-slurm profile with the runs root under tmp_path; mapping values merge into the
    profile's."""
    import yaml
    prof = yaml.safe_load((ROOT / "configs/profiles/local-slurm.yaml").read_text())
    prof["runs_root"] = str(tmp_path / "runs")
    for k, v in over.items():
        prof[k] = {**prof.get(k, {}), **v} if isinstance(v, dict) and isinstance(prof.get(k),
                                                                                 dict) else v
    p = tmp_path / "profile.yaml"
    p.write_text(yaml.safe_dump(prof))
    return p


# tiny models, a whole study, the Slurm cluster
HEAVY_FIXTURES = {"exp_dir", "reduced_run", "cluster"}


# make test runs the files in pytest-xdist workers, a file's tests in one worker, the longest files
# first so that none of them starts last (within a file the short tests last: see below). A session
# fixture is built once per worker, so the files that share an expensive one run in the same worker:
# every test that needs the Slurm cluster is in test_slurm.py (its nodes and queue are shared), and
# the files that read the reduced study's run are one unit of work (SHARED_RUNS: it takes 2-3
# minutes to make).
LONGEST_FIRST = ("test_slurm.py", "test_trainer.py", "test_reliability.py",
                 "test_paper_configs.py", "test_gpu_check.py", "test_containers.py",
                 "test_gpu_path.py")
SHARED_RUNS = ("test_reliability.py", "test_toyworld.py", "test_spec_plan.py")


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's file scheduling, with the files of SHARED_RUNS as one unit (its group marks,
    `--dist loadgroup`, do not reach pytest 9's node ids)."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "reduced_run" if Path(path).name in SHARED_RUNS else path
    return SharedFixtureScheduling(config, log)


def pytest_collection_modifyitems(items):
    """The test tiers: a test that takes a heavy fixture is `slow` (make test-fast runs the others,
    under a minute); modules that run training, images or subprocess studies mark themselves
    (pytestmark). The files in LONGEST_FIRST's order, then the others."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if HEAVY_FIXTURES & names:
            item.add_marker(pytest.mark.slow)
        if "cluster" in names and item.path.name != LONGEST_FIRST[0]:
            raise pytest.UsageError(f"{item.nodeid} takes the Slurm cluster: move it to "
                                    f"tests/{LONGEST_FIRST[0]} (one xdist worker shares it)")
        if "reduced_run" in names and item.path.name not in SHARED_RUNS:
            raise pytest.UsageError(f"{item.nodeid} takes reduced_run: move it to one of "
                                    f"{', '.join(SHARED_RUNS)} (one xdist worker makes it)")
    # within a file, the tests without a heavy fixture last: a worker is handed its next file when
    # two tests of its current one are left, and those should be short
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)),
                                 not HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))))
