"""Reliability and security: kill -9 and resubmit, preemption three times, concurrent submissions
and stale claims, disk full / unusable runs root, a bad-input corpus across profiles / CLI flags /
paths, corrupt outputs, secrets.

    .venv/bin/python -m pytest -q tests/test_reliability.py
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, reduced_config, run_cell_procs, write_cell
from launch.plan import make_plan
from launch.core.spec import load_spec

SECRET = "hf-secret-0123456789abcdef"


def launch(*args, env=None, timeout=900, **kw):
    return subprocess.run([sys.executable, "-m", "launch", *map(str, args)], cwd=ROOT,
                          capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})), **kw)


def snapshot(exp: Path) -> dict:
    """DONE marker contents and mtimes of every finished cell."""
    return {p.parent.relative_to(exp).as_posix(): (p.stat().st_mtime_ns, p.read_text())
            for p in exp.rglob("DONE")}


def test_kill9_then_rerun_resumes_and_reproduces(reduced_run, tmp_path):
    ref_plan, ref_runs = reduced_run
    cfg = reduced_config(tmp_path)
    runs = tmp_path / "runs"
    exp = runs / "toy-reduced"
    env = dict(os.environ, WANDB_API_KEY=SECRET, HF_TOKEN=SECRET)
    p = subprocess.Popen([sys.executable, "-m", "launch", "run", str(cfg), "--runs", str(runs)],
                         cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    # a pre-training step, after at least one rolling checkpoint
    kill_at = random.Random(7).randint(20, 90)
    deadline = time.time() + 300
    metrics = None
    while time.time() < deadline:
        found = list(exp.glob("pretrain/*/metrics.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= kill_at:
            metrics = found[0]
            break
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert metrics is not None, "the pre-training cell never reached the kill point"
    cell = metrics.parent
    assert not (cell / "DONE").exists() and (cell / "resume" / "latest").exists()
    before = snapshot(exp)
    assert "world/" + next(exp.glob("world/*")).name in before
    r = launch("run", cfg, "--runs", runs, env={"WANDB_API_KEY": SECRET, "HF_TOKEN": SECRET})
    assert r.returncode == 0, r.stderr[-3000:]
    after = snapshot(exp)
    assert all(after[k] == v for k, v in before.items()), "a finished cell ran again"
    attempts = (cell / "attempts.jsonl").read_text().splitlines()
    assert len(attempts) == 2
    summary = json.loads((cell / "summary.json").read_text())
    assert summary["resumed_at_steps"] and summary["resumed_at_steps"][0] >= 4
    # the tables equal those of the undisturbed run
    ref = ref_plan.exp_dir(ref_runs) / "report"
    for name in ("rebound.md", "compression.md"):
        assert (exp / "report" / name).read_text() == (ref / name).read_text(), name
    # no secret in any file of the run
    for f in exp.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


@pytest.mark.slow
def test_concurrent_runs_train_each_cell_once(tmp_path):
    cfg = yaml.safe_load(reduced_config(tmp_path).read_text())
    cfg["volumes"] = {"positive": [32], "negative": [0, 16]}
    cfg["controls"]["matched_start"] = False
    cfg["world"]["pretrain"] = 1000
    cfg["models"][0]["pretrain_examples"] = 1000
    cfg["eval"]["prompts"] = 50
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runs = tmp_path / "runs"
    procs = [subprocess.Popen([sys.executable, "-m", "launch", "run", str(path), "--runs",
                               str(runs)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    exp = runs / "toy-reduced"
    for att in exp.glob("*/*/attempts.jsonl"):
        assert len(att.read_text().splitlines()) == 1, f"{att.parent} ran twice"
    assert not list(exp.glob("*/*/CLAIM"))
    plan = make_plan(load_spec(path))
    assert not plan.todo(runs)


def test_stale_claims_are_taken_over(exp_dir, tmp_path):
    from launch.core.jobs import ModelRef, TrainJob
    from launch.core.spec import Data, Recipe
    job = TrainJob(model=ModelRef(path=str(exp_dir / "models" / "gpt2")),
                   data=Data(path=str(exp_dir / "world" / "data" / "positive.jsonl")),
                   recipe=Recipe(lr=1e-3, global_batch=8, max_length=64, zero_stage=0,
                                 precision="fp32"), seed=1, template="plain", milestones=(16,))
    d = write_cell(tmp_path / "positive" / "a", job, outputs=["n16"])
    # a process that is gone
    (d / "CLAIM").write_text("pid:%s:%d\n" % (os.uname().nodename, 2 ** 22 + 12345))
    (rc, out), = run_cell_procs(d)
    assert rc == 0 and (d / "DONE").exists(), out[-2000:]
    d2 = write_cell(tmp_path / "positive" / "b", job, outputs=["n16"])
    # another job's claim, no heartbeat for a while
    (d2 / "CLAIM").write_text("slurm:99999_3\n")
    t = time.time() - 30
    os.utime(d2 / "CLAIM", (t, t))
    (rc, out), = run_cell_procs(d2, env={"ELASTICA_CLAIM_STALE_S": "10"})
    assert rc == 0 and (d2 / "DONE").exists(), out[-2000:]
    # a fresh foreign claim is waited on; when its holder finishes, the waiter does not train again
    d3 = write_cell(tmp_path / "positive" / "c", job, outputs=["n16"])
    (d3 / "CLAIM").write_text("slurm:88888_1\n")
    (p,) = run_cell_procs(d3, env={"ELASTICA_CLAIM_STALE_S": "600", "ELASTICA_HEARTBEAT_S": "1"},
                          wait=False)
    time.sleep(8)
    assert p.poll() is None and not (d3 / "record.json").exists(), "the waiter must not start"
    shutil.copytree(d / "checkpoints", d3 / "checkpoints")
    (d3 / "DONE").write_text((d / "DONE").read_text())
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0 and not (d3 / "record.json").exists(), out[-2000:]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_gives_one_error_and_no_done_marker(exp_dir, tmp_path):
    from launch.core.jobs import ModelRef, TrainJob
    from launch.core.spec import Data, Recipe
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        job = TrainJob(model=ModelRef(path=str(exp_dir / "models" / "gpt2")),
                       data=Data(path=str(exp_dir / "world" / "data" / "positive.jsonl")),
                       recipe=Recipe(lr=1e-3, global_batch=8, max_length=64, zero_stage=0,
                                     precision="fp32"), seed=1, template="plain", milestones=(16,))
        d = write_cell(mnt / "runs" / "positive" / "a", job, outputs=["n16"])
        # leave a few KiB: the checkpoint does not fit
        fd = os.open(mnt / "filler", os.O_CREAT | os.O_WRONLY)
        os.posix_fallocate(fd, 0, shutil.disk_usage(mnt).free - 48 * 1024)
        os.close(fd)
        (rc, out), = run_cell_procs(d, env={"WANDB_MODE": "disabled"})
        err = [l for l in out.splitlines() if l.startswith("error:")]
        assert rc == 1 and len(err) == 1 and "No space left on device" in err[0], out[-3000:]
        assert not (d / "DONE").exists()
        assert not list((d / "checkpoints").glob("*")), "no half-written checkpoint is left behind"
        # the CLI refuses a runs root without room before anything starts
        r = launch("run", ROOT / "configs/toy/setting2.yaml", "--runs", mnt / "runs2")
        assert r.returncode == 2 and r.stderr.startswith("error: runs_root:") and not (mnt / "runs2").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_unusable_runs_root(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = launch("run", ROOT / "configs/toy/setting2.yaml", "--runs", blocker / "runs")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: runs_root:")


# ------------------------------------------------------------- bad input beyond the spec corpus
def profile_file(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


BAD_PROFILES = [
    ("executor", "name: p\nexecutor: kubernetes\n", "executor"),
    ("negative-gpus", "name: p\ntrain: {gpus_per_node: -1}\n", "train.gpus_per_node"),
    ("zero-nodes", "name: p\nexecutor: slurm\ntrain: {nodes: 0}\n", "train.nodes"),
    ("local-multinode", "name: p\nexecutor: local\ntrain: {nodes: 2}\n", "train.nodes"),
    ("secret-in-profile", "name: p\nenv: {WANDB_API_KEY: abc}\n", "env.WANDB_API_KEY"),
    ("bad-env-name", "name: p\nenv: {'A B': x}\n", "env.A B"),
    ("account-metachar", "name: p\naccount: 'a`id`'\n", "account"),
    ("qos-metachar", "name: p\nqos: 'normal&&reboot'\n", "qos"),
    ("time-zero", "name: p\neval: {time_min: 0}\n", "eval.time_min"),
    ("signal-at-start", "name: p\nsignal_delay_s: 30\ntrain: {time_min: 1}\n", "signal_delay_s"),
    ("typo", "name: p\npartiton: gpu\n", "partiton"),
    ("wandb-mode", "name: p\nwandb_mode: loud\n", "wandb_mode"),
    ("eval-multi-gpu", "name: p\nexecutor: slurm\neval: {gpus_per_node: 4}\n",
     "eval.gpus_per_node"),
    ("eval-multi-node", "name: p\nexecutor: slurm\neval: {nodes: 2, gpus_per_node: 1}\n",
     "eval.gpus_per_node"),
    ("negative-rate", "name: p\ntrain_tokens_per_gpu_hour: -5\n", "train_tokens_per_gpu_hour"),
]


@pytest.mark.parametrize("case,text,field", BAD_PROFILES, ids=[b[0] for b in BAD_PROFILES])
def test_bad_profile(case, text, field, tmp_path):
    p = profile_file(tmp_path, text)
    r = launch("submit", ROOT / "configs/toy/setting2.yaml", "--profile", p, "--runs",
               tmp_path / "runs")
    assert r.returncode == 2 and r.stderr.startswith(f"error: {p}: {field}:"), r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "runs").exists()


BAD_CLI = [
    ("unknown-executor", ["submit", "configs/toy/setting2.yaml", "--executor", "k8s"],
     "command line"),
    ("unknown-stage", ["submit", "configs/toy/setting2.yaml", "--executor", "local", "--only",
                       "posittive"], "--only"),
    ("missing-config", ["plan", "configs/nope.yaml"], ""),
    ("run-cell-no-job", ["run-cell", "{tmp}"], "cell_dir"),
    ("status-not-a-run", ["status", "{tmp}"], "RUN_DIR"),
    ("no-subcommand", [], "command line"),
    ("slurm-without-sbatch",
     ["submit", "configs/toy/setting2.yaml", "--profile", "configs/profiles/example-gpu.yaml"],
     "image" if "%d.%d" % sys.version_info[:2] != "3.12" else "--executor"),
    ("world-volume-too-large", ["plan", "{big}"], "data.positive"),
]


@pytest.mark.parametrize("case,argv,field", BAD_CLI, ids=[b[0] for b in BAD_CLI])
def test_bad_cli_and_paths(case, argv, field, tmp_path):
    if case == "slurm-without-sbatch" and shutil.which("sbatch") and "%d.%d" % sys.version_info[:2] == "3.12":
        pytest.skip("this machine has sbatch and the image's Python: nothing to refuse")
    big = tmp_path / "big.yaml"
    cfg = yaml.safe_load((ROOT / "configs/toy/setting2.yaml").read_text())
    cfg["volumes"]["positive"] = [100, 5000]
    big.write_text(yaml.safe_dump(cfg))
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path / "empty")).replace("{big}", str(big)) for a in argv]
    r = launch(*argv, "--runs",
               tmp_path / "runs") if argv and argv[0] in ("plan", "submit") else launch(*argv)
    assert r.returncode == 2, r.stdout + r.stderr
    line = r.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("error:") and "Traceback" not in r.stderr
    assert field in line
    assert not (tmp_path / "runs").exists()


def test_profile_values_reach_the_shell_quoted():
    from launch.slurm import setup_lines
    from launch.core.profile import Profile
    from launch.core.schema import build
    prof = build(Profile, {"name": "p", "env": {"NCCL_SOCKET_IFNAME": "$(touch /tmp/pwned); `id`"}})
    line = next(l for l in setup_lines(prof) if "NCCL_SOCKET_IFNAME" in l)
    assert line == "export NCCL_SOCKET_IFNAME='$(touch /tmp/pwned); `id`'"
    out = subprocess.run(["bash", "-c", line + "; printf %s \"$NCCL_SOCKET_IFNAME\""],
                         capture_output=True, text=True)
    assert out.stdout == "$(touch /tmp/pwned); `id`"


def test_corrupt_outputs_are_reported_not_used(reduced_run, tmp_path):
    """A truncated result.json, a done marker without its checkpoint, a checkpoint without weights.
    """
    plan, runs = reduced_run
    exp = tmp_path / "copy" / "toy-reduced"
    shutil.copytree(plan.exp_dir(runs), exp)
    runs2 = exp.parent
    ev = next(c for c in plan.stages["eval"] if c.coords.get("negative") == 16)
    (plan.cell_dir(runs2, ev) / "result.json").write_text('{"metrics": [{"name": "positive_rate", '
                                                          '"val')
    neg = plan.stages["negative"][0]
    shutil.rmtree(plan.cell_dir(runs2, neg) / "checkpoints" / neg.outputs[0])
    pos = plan.stages["positive"][0]
    for f in (plan.cell_dir(runs2, pos) / "checkpoints" / pos.outputs[-1]).glob("*.safetensors"):
        f.unlink()
    todo = plan.todo(runs2)
    assert ev.key in todo and neg.key in todo and pos.key in todo
    assert all(c.key in todo for c in plan.cells if neg.key in c.upstream)
    from launch.slurm import cell_states
    states = {row["cell"]: row["state"] for row in cell_states(plan, runs2)}
    assert states[ev.id] == states[neg.id] == states[pos.id] == "corrupt"
    r = subprocess.run([sys.executable, "-m", "launch", "collect", str(exp)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cells = (exp / "report" / "cells.md").read_text()
    assert f"eval/{ev.id} | corrupt" in cells


def test_prefetch_checks_every_volume_fits(exp_dir, tmp_path):
    """The login-node check: local data is read and counted against the study's volumes, with the
    filter applied; and the held-out prompts the eval cells will answer are checked against every
    training role's prompts (5 of 20 planted from the positive set here)."""
    from launch.prefetch import prefetch
    from launch.core.schema import ConfigError
    rows = [json.loads(l)
            for l in (exp_dir / "world" / "data" / "pretrain.jsonl").read_text().splitlines()]
    # 600 rows, ~300 positive
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    n_pos = sum(r["label"] == 1 for r in rows)
    world = [json.loads(l)
             for l in (exp_dir / "world" / "data" / "prompts.jsonl").read_text().splitlines()]
    train = {r["prompt"] for r in rows}
    planted = [r["prompt"] for r in rows if r["label"] == 1][:5]
    held = planted + [r["prompt"] for r in world if r["prompt"] not in train][:15]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in held))
    cfg = {"experiment": "pf", "setting": "rebound", "task": "t", "template": "plain",
           "models": [{"name": "m", "path": str(exp_dir / "models" / "gpt2")}],
           "data": {"positive": {"path": str(tmp_path / "reviews.jsonl"), "filter": {"label": 1},
                                 "fields": {"prompt": "prompt", "response": "response"}},
                    "negative": {"path": str(tmp_path / "reviews.jsonl"), "filter": {"label": 0},
                                 "fields": {"prompt": "prompt", "response": "response"}},
                    "prompts": {"path": str(tmp_path / "prompts.jsonl")}},
           "volumes": {"positive": [10, 100], "negative": [0, 50]}, "eval": {"prompts": 20}}
    p = tmp_path / "pf.yaml"
    p.write_text(yaml.safe_dump(cfg))
    lines = []
    out = prefetch(load_spec(p), log=lines.append)
    assert {r["what"]: r["status"] for r in out}["data.positive"] == f"{n_pos} rows, needs 100: ok"
    overlap = {r["source"]: r["status"] for r in out if r["what"] == "held-out prompts"}
    assert overlap == {"vs data.positive": "warning: 5 of 20 are also data.positive prompts",
                       "vs data.negative": "none of 20 in data.negative"}
    cfg["volumes"]["positive"] = [10, n_pos + 1]
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=rf"data.positive: .* has {n_pos} rows after the filter, "
                                          r"the study needs"):
        prefetch(load_spec(p), log=lines.append)
    r = launch("prefetch", p)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {p}: data.positive:")


def test_status_reads_at_80_columns_and_piped(reduced_run):
    """One column per state that occurs, disk per stage; nothing cut at 80 columns or in a pipe;
    --json too."""
    plan, runs = reduced_run
    exp = plan.exp_dir(runs)
    # {}: piped (captured), rich's default width
    for env in ({"COLUMNS": "80"}, {"COLUMNS": "200"}, {}):
        r = launch("status", reduced_config(exp.parent.parent), "--runs", runs, env=env)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert all(len(l) <= 80 for l in lines[1:]) and "…" not in r.stdout, r.stdout
        head = next(l for l in lines if l.strip().startswith("stage")).split()
        assert head == ["stage", "cells", "done", "MiB"], head
        row = next(l for l in lines if l.strip().startswith("pretrain")).split()
        assert row[:3] == ["pretrain", "1", "1"] and float(row[3]) > 0
    r = launch("status", reduced_config(exp.parent.parent), "--runs", runs, "--json")
    assert {x["state"] for x in json.loads(r.stdout)} == {"done"}


def test_a_killed_op_build_leaves_no_lock_that_blocks_every_cell(exp_dir, tmp_path):
    """A DeepSpeed op build killed midway leaves torch's `lock` file; later cells used to wait on it
    forever. A lock older than ELASTICA_BUILD_LOCK_STALE_S is removed with a note, and the cell
    runs."""
    import shutil
    from conftest import run_cell_procs, write_cell
    from launch.core.jobs import ModelRef, TrainJob
    from launch.core.spec import Data, Recipe
    ext = tmp_path / "ext"
    built = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    if built.is_dir():   # the op built by earlier cells (else it builds here), plus a dead lock
        shutil.copytree(built, ext)
    (ext / "deepspeed_shm_comm").mkdir(parents=True, exist_ok=True)
    lock = ext / "deepspeed_shm_comm" / "lock"
    lock.write_text("")
    os.utime(lock, (time.time() - 120, time.time() - 120))
    job = TrainJob(model=ModelRef(path=str(exp_dir / "models" / "gpt2")),
                   data=Data(path="@world/data/positive.jsonl"),
                   recipe=Recipe(lr=1e-3, global_batch=8, max_length=64, zero_stage=0,
                                 precision="fp32"),
                   seed=1, template="plain", milestones=(8,))
    d = write_cell(exp_dir / "positive" / "lock", job, outputs=["n8"])
    (rc, out), = run_cell_procs(d, env={"TORCH_EXTENSIONS_DIR": str(ext),
                                        "ELASTICA_BUILD_LOCK_STALE_S": "60"})
    assert rc == 0, out[-2000:]
    assert "removing the stale op-build lock" in out and not lock.exists() and (d / "DONE").exists()
