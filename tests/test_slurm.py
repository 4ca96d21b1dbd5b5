"""The Slurm launcher: golden job scripts (no cluster needed), then a real one-machine Slurm cluster
(slurm-wlm + munge + slurmdbd, started by tests/slurm/up.sh): arrays with dependencies,
resubmission, requeue with exact resume, a 2-node DeepSpeed cell, and no secret on disk.

    .venv/bin/python -m pytest -q tests/test_slurm.py            # as root; starts the cluster if needed
    UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_slurm.py -k golden   # rewrite the golden files
"""
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from launch.plan import make_plan
from launch.slurm import build_arrays, cell_states, submit, wait
from launch.core.profile import Profile, load_profile
from launch.core.schema import build
from launch.core.spec import load_spec

from conftest import COMMENT, slurm_profile  # noqa: E402  (the cluster fixture comes from conftest too)

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"

GPU_PROFILE = {"name": "golden-gpu", "executor": "slurm", "runs_root": "/scratch/elastica/runs",
               "partition": "gpu",
               "account": "alignment",
               "train": {"nodes": 2, "gpus_per_node": 8, "cpus_per_task": 8, "mem_gb": 480,
                                                  "time_min": 720},
               "eval": {"nodes": 1, "gpus_per_node": 1, "cpus_per_task": 8, "time_min": 120},
               "image": "/shared/containers/elastica-cuda-2026.11.sif",
               "binds": ["/scratch", "/shared"],
               "hf_home": "/shared/hf-cache", "array_parallelism": 16, "signal_delay_s": 180}


def test_golden_job_scripts():
    """The exact sbatch scripts for a 2-node x 8-GPU profile with an image (reviewed by a person
    once)."""
    plan = make_plan(load_spec(ROOT / "configs/setting2/imdb.yaml"))
    profile = build(Profile, GPU_PROFILE)
    out = io.StringIO()
    arrays = submit(plan, profile.runs_root, profile, dry_run=True, out=out, ask_cluster=False)
    assert [a.stage for a in arrays] == ["positive", "negative", "eval", "collect"]
    text = out.getvalue().replace(str(ROOT), "<repo>")   # the checkout's path differs per machine
    import re
    # and the commit
    text = re.sub(r"/code/[0-9a-f]{12}(-dirty-[0-9a-f]{8})?", "/code/<commit>", text)
    golden = GOLDEN / "setting2-imdb-2x8gpu.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()
    neg = arrays[1].script
    assert "#SBATCH --nodes=2" in neg and "#SBATCH --ntasks-per-node=8" in neg and "--gpus-per-node=8" in neg
    assert "#SBATCH --array=0-3%4" in neg and "--kill-on-invalid-dep=yes" in neg
    assert "apptainer exec --nv --bind /scratch,/shared /shared/containers/elastica-cuda-2026.11.sif python" in neg
    assert "--cleanenv" not in text and "export HF_HUB_OFFLINE=1" in neg
    assert "--wckey" not in text, "no workload key unless the profile names one (submitit's default is refused)"


def test_arrays_split_at_max_array_size_and_correlate():
    plan = make_plan(load_spec(ROOT / "configs/setting3/tinyllama-volumes.yaml"))
    profile = build(Profile, GPU_PROFILE)
    arrays = build_arrays(plan, "/nonexistent", profile, chunk=64)
    evals = [a for a in arrays if a.stage == "eval"]
    assert [len(a.cells) for a in evals] == [64, 64, 22] and sum(len(a.cells) for a in evals) == 150
    assert all(kind == "afterok" for a in arrays for kind, _ in a.deps)
    # aftercorr: a stage whose task i needs exactly task i of one array
    from launch.plan import Cell
    from launch.core.jobs import CollectJob
    a_cells = [Cell("world", "collect", f"a{i}", CollectJob(f"a{i}", "rebound", "t"))
               for i in range(3)]
    b_cells = [Cell("collect", "collect", f"b{i}", CollectJob(f"b{i}", "rebound", "t"),
                    upstream=(a_cells[i].key,))
               for i in range(3)]
    from launch.plan import Plan
    p = Plan(spec=plan.spec, stages={"world": a_cells, "collect": b_cells}, naive_examples=0)
    arr = build_arrays(p, "/nonexistent", profile)
    assert arr[1].deps == [("aftercorr", 0)]
    # cells packed k to a task (eval.cells_per_task): aftercorr only where task t needs exactly task
    # t
    from launch.core.jobs import EvalJob, ModelRef
    from launch.core.spec import Data, Eval
    ev = lambda name: EvalJob(ModelRef(name), ModelRef(name), Data("a/b"), Eval(), "plain")
    packed = build(Profile, {**GPU_PROFILE, "eval": {**GPU_PROFILE["eval"], "cells_per_task": 2}})
    a_cells = [Cell("responses", "eval", f"a{i}", ev(f"a{i}")) for i in range(4)]
    for ups, want in (((0, 1, 2, 3), "aftercorr"), ((2, 3, 0, 1), "afterok"),
                      ((0, 0, 1, 1), "afterok")):
        b_cells = [Cell("eval", "eval", f"b{i}", ev(f"b{i}"),
                        upstream=(a_cells[u].key,)) for i, u in enumerate(ups)]
        arr = build_arrays(Plan(spec=plan.spec, stages={"responses": a_cells, "eval": b_cells},
                                naive_examples=0),
                           "/nonexistent", packed)
        assert [len(a.tasks) for a in arr] == [2, 2] and arr[1].deps == [(want, 0)], (ups,
                                                                                      arr[1].deps)


# --------------------------------------------------------------------------------- real cluster
def tiny_grid(tmp_path: Path) -> Path:
    from conftest import reduced_config
    cfg = yaml.safe_load(reduced_config(tmp_path).read_text())
    cfg["experiment"] = "toy-slurm"
    cfg["controls"] = {"matched_start": False}
    cfg["recipe_overrides"].pop("control")
    cfg["data"].pop("control")
    cfg["volumes"] = {"positive": [32, 64], "negative": [0, 16]}
    cfg["eval"].update(prompts=100)
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def launch(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "launch", *map(str, args)], cwd=ROOT,
                          capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))


SECRET = "wandb-secret-9f8e7d6c5b4a"


def test_an_array_without_upstream_does_not_inherit_a_dependency(cluster, tmp_path):
    """submitit's executor keeps parameters between arrays: each array states its own dependency, or
    none."""
    import submitit
    from launch.slurm import Array, array_params
    ex = submitit.SlurmExecutor(folder=tmp_path)
    with_dep = Array("b", 0, [], {"job_name": "b"}, deps=[("afterok", 0)])
    without = Array("c", 0, [], {"job_name": "c"})
    ex.update_parameters(**array_params(with_dep, ["41"]))
    text = ex._make_submission_file_text("true", "u")
    assert "#SBATCH --dependency=afterok:41" in text and "#SBATCH --kill-on-invalid-dep=yes" in text
    ex.update_parameters(**array_params(without, ["41"]))
    text = ex._make_submission_file_text("true", "u")
    assert "dependency" not in text and "kill-on-invalid-dep" not in text, text


def test_sacct_ranges_of_unstarted_array_tasks():
    from launch.slurm import task_ids
    assert task_ids("98_[0-3%4]") == ["98_0", "98_1", "98_2", "98_3"]
    assert task_ids("7_[0,2-3,9]") == ["7_0", "7_2", "7_3", "7_9"]
    assert task_ids("98_2") == ["98_2"] and task_ids("100") == ["100"]


def test_grid_on_real_slurm_then_resubmit(cluster, tmp_path):
    cfg, prof = tiny_grid(tmp_path), slurm_profile(tmp_path)
    env = {"WANDB_API_KEY": SECRET, "HF_TOKEN": SECRET + "-hf"}
    r = launch("submit", cfg, "--profile", prof, "--wait", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = tmp_path / "runs" / "toy-slurm"
    manifest = [json.loads(l) for l in (exp / "manifest.jsonl").read_text().splitlines()]
    assert [m["stage"] for m in manifest] == ["world", "pretrain", "positive", "negative", "eval",
                                              "collect"]
    ids = {m["stage"]: m["job_id"] for m in manifest}
    # negative waits on positive
    assert manifest[3]["dependency"] == f"afterok:{ids['positive']}"
    assert set(manifest[4]["dependency"].split(",")) == {f"afterok:{ids[s]}" for s in ("pretrain",
                                                                                       "positive",
                                                                                        "negative")}
    assert manifest[4]["array"] and len(manifest[4]["cells"]) == 1 + 2 + 2
    md = (exp / "report" / "rebound.md").read_text()
    assert "| 32 |" in md and "| 64 |" in md and (exp / "report" / "cells.md").read_text().startswith("All")
    # every cell's job.json was written by its task from the pickle, exactly as planned
    plan = make_plan(load_spec(cfg))
    for c in plan.cells:
        got = json.loads((plan.cell_dir(tmp_path / "runs", c) / "job.json").read_text())
        assert got == json.loads(json.dumps(plan.meta(c, load_profile(prof)))), c.key
    # the jobs ran the code snapshot of this submission and record its commit
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert (exp / "code" / head[:12] / "launch" / "worker.py").is_file()
    recs = [json.loads(p.read_text()) for p in exp.glob("*/*/record.json")]
    assert recs and {r["git_commit"] for r in recs} == {head}
    # no secret in any file the run wrote (run folder, submitit folder, logs)
    for f in exp.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert SECRET.encode() not in data, f
    # a resubmission of the finished grid submits nothing
    r = launch("submit", cfg, "--profile", prof)
    assert r.returncode == 0 and "nothing to submit" in r.stdout
    # delete one eval cell's done marker: exactly it and its dependent (the collect cell) run again
    victim = next(c for c in plan.stages["eval"] if c.coords.get("negative") == 16)
    (plan.cell_dir(tmp_path / "runs", victim) / "DONE").unlink()
    r = launch("submit", cfg, "--profile", prof, "--wait")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    again = [json.loads(l)
             for l in (exp / "manifest.jsonl").read_text().splitlines()][len(manifest):]
    assert [(m["stage"], [c["key"] for c in m["cells"]]) for m in again] == [
        ("eval", [victim.key]), ("collect", [plan.stages["collect"][0].key])]
    # status from the run folder alone
    r = launch("status", exp, "--json")
    assert r.returncode == 0 and all(row["state"] == "done" for row in json.loads(r.stdout))
    # the same grid as another study under the same runs root: every cell but its collect is taken,
    # not submitted
    other = yaml.safe_load(cfg.read_text())
    other["experiment"] = "toy-slurm-again"
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(other))
    r = launch("submit", tmp_path / "again.yaml", "--profile", prof, "--wait")
    assert r.returncode == 0 and "cells are done in other studies" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    exp2 = tmp_path / "runs" / "toy-slurm-again"
    assert [m["stage"] for m in map(json.loads, (exp2 / "manifest.jsonl").read_text().splitlines())] == ["collect"]
    assert (exp2 / "report" / "rebound.md").read_text() == md


LONG_RUNTIME = {"micro_batch": 1, "save_every_steps": 200}


def long_job(exp_dir):
    from launch.core.jobs import ModelRef, TrainJob
    from launch.core.spec import Data, Recipe
    return TrainJob(model=ModelRef(path=str(exp_dir / "models" / "gpt2")),
                    data=Data(path=str(exp_dir / "world" / "data" / "pretrain.jsonl")),
                    recipe=Recipe(algorithm="lm", lr=3e-4, global_batch=1, max_length=64,
                                  zero_stage=0, precision="fp32", epochs=20),   # ~60 s of steps
                    seed=5, template="plain", milestones=(600,))


def submit_one(tmp_path, cell_dir, time_min, **profile_over):
    """One training cell as one Slurm job, with the time limit and signal delay of a validated
    profile."""
    import submitit
    from launch.slurm import CellTask, sbatch_params
    profile = load_profile(slurm_profile(tmp_path, train={"time_min": time_min}, **profile_over))
    ex = submitit.SlurmExecutor(folder=tmp_path / "submitit" / "%j",
                                max_num_timeout=profile.max_num_timeout)
    ex.update_parameters(**sbatch_params(profile, profile.train, "cell"))
    return ex.submit(CellTask(), str(cell_dir))


def wait_done(d: Path, job, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline and not (d / "DONE").exists():
        time.sleep(2)
    assert (d / "DONE").exists(), job.stdout()


def same_weights(ref, d):
    from safetensors.torch import load_file
    b = load_file(str(d / "checkpoints" / "n600" / "model.safetensors"))
    return max((ref[k] - b[k]).abs().max().item() for k in ref) == 0.0


def test_requeue_after_timeouts_is_bit_identical(cluster, tmp_path, exp_dir):
    """A training cell with a 1-minute limit needs several incarnations; its weights equal an
    uninterrupted run of the same cell, made locally while the Slurm job runs (same threads as the
    Slurm profile).

    slurmctld sends the USR2 at its first 30-s check after (limit - delay - 30 s), measured on this
    cluster: with delay 25 the signal comes 5-35 s into each incarnation, never before the handlers
    are installed (delay 30 could signal at 0 s and kill the task, which failed a CI run), and the
    ~60 s of steps cannot fit in one incarnation."""
    from safetensors.torch import load_file
    from conftest import run_cell_procs, write_cell
    d = write_cell(tmp_path / "slurm" / "positive" / "requeued", long_job(exp_dir),
                   outputs=["n600"], runtime=LONG_RUNTIME)
    job = submit_one(tmp_path, d, time_min=1, signal_delay_s=25)
    ref = write_cell(tmp_path / "ref" / "positive" / "ref", long_job(exp_dir), outputs=["n600"],
                     runtime=LONG_RUNTIME)
    (rc, out), = run_cell_procs(ref)
    assert rc == 0, out[-2000:]
    wait_done(d, job)
    attempts = [json.loads(l) for l in (d / "attempts.jsonl").read_text().splitlines()]
    assert len(attempts) >= 2 and {a["slurm_job_id"] for a in attempts} == {job.job_id}
    assert same_weights(load_file(str(ref / "checkpoints" / "n600" / "model.safetensors")), d)


def test_kill9_on_slurm_then_resubmit(cluster, tmp_path, request):
    """A cell's processes die with SIGKILL (no signal to save on, like a node failure): its
    dependents are cancelled; a resubmission resumes it from its rolling checkpoint and reproduces
    the tables of an undisturbed run of the same study, made locally while the Slurm jobs run."""
    from conftest import reduced_config
    # eval cells packed 3 to a task (profile eval.cells_per_task): requeue, resume and results stay
    # per cell
    cfg, prof = reduced_config(tmp_path), slurm_profile(tmp_path, eval={"cells_per_task": 3})
    r = launch("submit", cfg, "--profile", prof)
    assert r.returncode == 0, r.stderr[-3000:]
    ref_runs = tmp_path / "ref-runs"
    ref = subprocess.Popen([sys.executable, "-m", "launch", "run", str(cfg), "--runs", str(ref_runs),
                            "--profile", str(ROOT / "configs/profiles/local-cpu.yaml")],
                           cwd=ROOT, stdout=(tmp_path / "ref.log").open("w"),
                           stderr=subprocess.STDOUT)
    request.addfinalizer(ref.kill)
    exp = tmp_path / "runs" / "toy-reduced"
    manifest = [json.loads(l) for l in (exp / "manifest.jsonl").read_text().splitlines()]
    pretrain_job = next(m["job_id"] for m in manifest if m["stage"] == "pretrain")
    deadline = time.time() + 300
    while time.time() < deadline:
        found = list(exp.glob("pretrain/*/metrics.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 60 and (found[0].parent / "resume").exists():
            break
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=KILL", pretrain_job], check=True)
    cell = found[0].parent
    plan = make_plan(load_spec(cfg))
    world_done = (next(exp.glob("world/*")) / "DONE").stat().st_mtime_ns
    # the cell's dependents are cancelled (kill-on-invalid-dep), so that wait ends and says so
    log = io.StringIO()
    assert wait(plan, tmp_path / "runs",
                poll_s=2, timeout_s=240, out=log) == 1 and "timed out" not in log.getvalue()
    states = cell_states(plan, tmp_path / "runs")
    rows = [r for r in states if r["stage"] not in ("world", "pretrain")]
    (killed,) = [r for r in states if r["stage"] == "pretrain"]
    assert killed["state"] != "done" and killed["log"], "the killed cell (CANCELLED after scancel) has its log"
    assert Path(killed["log"]).is_file(), killed["log"]   # the real path of an array task's log
    text = log.getvalue()
    after = text.split(f"pretrain/{cell.name}  log: ", 1)[1].splitlines()
    assert after[1].startswith("    "), text   # the last lines of its error, under the cell's line
    assert len(rows) == 20 and {r["state"]
                                for r in rows} == {"cancelled"} and not any(r["log"] for r in rows)
    assert "cells cancelled before they started" in log.getvalue() and f"pretrain/{cell.name}  log: " in log.getvalue()
    assert not (cell / "DONE").exists()
    r = launch("submit", cfg, "--profile", prof, "--wait")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (next(exp.glob("world/*")) / "DONE").stat().st_mtime_ns == world_done
    summary = json.loads((cell / "summary.json").read_text())
    assert summary["resumed_at_steps"] and summary["resumed_at_steps"][0] >= 4
    assert ref.wait(timeout=900) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    for name in ("rebound.md", "compression.md"):
        assert (exp / "report" / name).read_text() == \
            (ref_runs / "toy-reduced" / "report" / name).read_text()
    evals = [m for m in (json.loads(l) for l in (exp / "manifest.jsonl").read_text().splitlines())
             if m["stage"] == "eval"]
    assert evals and all(len({c["task"] for c in m["cells"]}) == -(-len(m["cells"]) // 3)
                         for m in evals)


def test_two_node_deepspeed_cell(cluster, tmp_path, exp_dir):
    """nodes: 2 on the two fake slurmd nodes: 2 ranks over gloo, both in the same run."""
    from conftest import run_cell_procs, write_cell
    from launch.core.jobs import ModelRef, TrainJob
    from launch.core.spec import Data, Recipe
    from safetensors.torch import load_file
    job = TrainJob(model=ModelRef(path=str(exp_dir / "models" / "llama")),
                   data=Data(path=str(exp_dir / "world" / "data" / "positive.jsonl")),
                   recipe=Recipe(lr=1e-3, global_batch=8, max_length=64, zero_stage=2,
                                 precision="fp32"),
                   seed=2, template="plain", milestones=(64,))
    one = write_cell(tmp_path / "one" / "positive" / "c", job, outputs=["n64"],
                     runtime={"micro_batch": 2})
    (rc, out), = run_cell_procs(one)
    assert rc == 0, out[-2000:]
    d = write_cell(tmp_path / "two" / "positive" / "c", job, outputs=["n64"],
                   runtime={"micro_batch": 2})
    import submitit
    from launch.slurm import CellTask, sbatch_params
    from launch.core.profile import Resources
    profile = load_profile(slurm_profile(tmp_path))
    ex = submitit.SlurmExecutor(folder=tmp_path / "submitit" / "%j", max_num_timeout=3)
    ex.update_parameters(**sbatch_params(profile, Resources(nodes=2, cpus_per_task=1, time_min=10),
                                         "two-node"))
    j = ex.submit(CellTask(), str(d))
    # both ranks ran the cell to the end
    assert [r == ["n64"] for r in j.results()] == [True, True]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["world_size"] == 2
    rec = json.loads((d / "record.json").read_text())
    assert rec["runtime"]["slurm_job_id"] == j.job_id
    a = load_file(str(one / "checkpoints" / "n64" / "model.safetensors"))
    b = load_file(str(d / "checkpoints" / "n64" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_two_ranks_on_two_nodes_preempted_twice_are_bit_identical(cluster, tmp_path, exp_dir):
    """A 2-rank DeepSpeed cell on the two slurmd nodes gets USR2 twice (what Slurm sends before a
    preemption or a time limit). Both ranks save, agree, and say so in the job's marker; srun's
    --kill-on-bad-exit may end the last rank as the first exits, so the teardown requeues on the
    marker, not on srun's exit code. Every milestone equals an uninterrupted 2-rank run, bit for
    bit."""
    import submitit
    from safetensors.torch import load_file
    from conftest import run_cell_procs, write_cell
    from launch.core.jobs import ModelRef, TrainJob
    from launch.slurm import CellTask, sbatch_params
    from launch.core.profile import Resources
    from launch.core.spec import Data, Recipe
    job = TrainJob(model=ModelRef(path=str(exp_dir / "models" / "llama")),
                   data=Data(path=str(exp_dir / "world" / "data" / "positive.jsonl")),
                   recipe=Recipe(lr=1e-3, global_batch=4, max_length=64, zero_stage=2,
                                 precision="fp32", epochs=2),
                   seed=3, template="plain", milestones=(400,))
    rt = {"micro_batch": 2, "save_every_steps": 1000}   # only the signals save
    ref = write_cell(tmp_path / "ref" / "positive" / "c", job, outputs=["n400"], runtime=rt)
    for rc, out in run_cell_procs(ref, ranks=2):
        assert rc == 0, out[-2000:]
    d = write_cell(tmp_path / "slurm" / "positive" / "c", job, outputs=["n400"], runtime=rt)
    profile = load_profile(slurm_profile(tmp_path))
    ex = submitit.SlurmExecutor(folder=tmp_path / "submitit" / "%j", max_num_timeout=3)
    ex.update_parameters(**sbatch_params(profile, Resources(nodes=2, cpus_per_task=1, time_min=15),
                                         "preempted", marker_dir=tmp_path / "submitit"))
    j = ex.submit(CellTask(), str(d))
    metrics, attempts = d / "metrics.jsonl", d / "attempts.jsonl"
    lines = lambda p: len(p.read_text().splitlines()) if p.exists() else 0
    for n in (1, 2):   # signal the running incarnation n, a few steps past where it started
        deadline = time.time() + 300
        while time.time() < deadline and not (lines(attempts) == n and lines(metrics) >= 25 * n):
            time.sleep(0.2)
        assert lines(attempts) == n and not (d / "DONE").exists(), (n, lines(attempts),
                                                                    lines(metrics), j.stdout())
        subprocess.run(["scancel", "--signal=USR2", j.job_id], check=True)
        while time.time() < deadline and lines(attempts) == n:
            time.sleep(0.5)
    wait_done(d, j)
    runs = [json.loads(l) for l in attempts.read_text().splitlines()]
    assert len(runs) == 3 and {r["slurm_job_id"] for r in runs} == {j.job_id}
    summary = json.loads((d / "summary.json").read_text())
    assert len(summary["resumed_at_steps"]) == 2 and summary["world_size"] == 2
    a = load_file(str(ref / "checkpoints" / "n400" / "model.safetensors"))
    b = load_file(str(d / "checkpoints" / "n400" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k not in ("seconds",
                                                                            "tokens_per_s")}
                       for l in p.read_text().splitlines()]
    assert strip(metrics) == strip(ref / "metrics.jsonl")
    assert not list((tmp_path / "submitit").glob("*.preempted")), "the teardown removes the marker it acted on"


# ------------------------------------------------- the cluster as a Slurm user meets it (day one)


def test_resubmit_while_queued_submits_nothing_and_cancel_ends_every_job(cluster, tmp_path):
    """Also: sbatch's own parser reads each #SBATCH line of the job scripts as the launcher meant it
    (the comment arrives whole, the time limit and the begin time too: nothing after a value is read
    as another option)."""
    from conftest import reduced_config
    cfg = reduced_config(tmp_path)
    # all stays queued
    prof = slurm_profile(tmp_path, sbatch_extra={"begin": "now+1hour"}, comment=COMMENT)
    r = launch("submit", cfg, "--profile", prof)
    assert r.returncode == 0, r.stderr[-3000:]
    exp = tmp_path / "runs" / "toy-reduced"
    first = (exp / "manifest.jsonl").read_text()
    job = json.loads(first.splitlines()[0])["job_id"]
    shown = subprocess.run(["scontrol", "show", "job", "-o", job.split("_")[0]],
                           capture_output=True, text=True).stdout
    assert f"Comment={COMMENT} " in shown and "TimeLimit=01:00:00" in shown and "Reason=BeginTime" in shown, shown
    r = launch("submit", cfg, "--profile", prof)
    assert r.returncode == 0 and "cells already have a queued or running job: not submitted again" in r.stdout
    assert "nothing to submit" in r.stdout and (exp / "manifest.jsonl").read_text() == first
    r = launch("status", exp, "--json")
    states = {row["state"] for row in json.loads(r.stdout)}
    assert states <= {"pending", "unknown"}, states
    r = launch("cancel", exp)
    assert r.returncode == 0
    ids = {e["job_id"] for e in map(json.loads, first.splitlines())}
    deadline = time.time() + 60
    while time.time() < deadline:
        left = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)],
                              capture_output=True, text=True).stdout
        if not left.strip():
            break
        time.sleep(1)
    assert not left.strip(), left


def test_a_job_the_cluster_refuses_stops_the_whole_submission(cluster, tmp_path):
    """More GPUs per node than the cluster's nodes have: sbatch --test-only refuses the training
    arrays before any array is queued (the world array would have been queued first, and waited
    forever): one line, nothing written."""
    from conftest import reduced_config
    cfg = reduced_config(tmp_path)
    prof = slurm_profile(tmp_path, train={"gpus_per_node": 8})
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    r = launch("submit", cfg, "--profile", prof)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: {prof}: pretrain array: Slurm refuses its job:"), r.stderr
    assert not (tmp_path / "runs").exists()
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True,
                          text=True).stdout == before
    image = tmp_path / "missing.sif"
    r = launch("submit", cfg, "--profile", slurm_profile(tmp_path, image=str(image)))
    assert r.returncode == 2 and f"image: {image} does not exist" in r.stderr and r.stderr.count("\n") == 1
    # the dry run makes the same checks (the cluster's own, through sbatch --test-only), after
    # showing the scripts
    prof = slurm_profile(tmp_path, train={"gpus_per_node": 8})
    r = launch("submit", cfg, "--profile", prof, "--dry-run")
    assert r.returncode == 2 and "#SBATCH" in r.stdout and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: {prof}: pretrain array: Slurm refuses its job:"), r.stderr
    assert not (tmp_path / "runs").exists()


def test_preempted_three_times_inside_an_image_without_slurm_commands(cluster, tmp_path, exp_dir,
                                                                      monkeypatch):
    """The cells run through a stand-in `apptainer` whose PATH has no Slurm commands (as in the
    image). Three preemption signals (USR2 to the job's steps, as a preempting scheduler sends):
    each time the cell saves and exits 75, the job script's teardown requeues on the host, and the
    cell resumes; its weights equal an uninterrupted run's. (The time-limit path, on the host:
    test_slurm.)"""
    import submitit
    from conftest import run_cell_procs, write_cell
    from launch.core.jobs import ModelRef, TrainJob
    from launch.slurm import CellTask, python_command, sbatch_params
    from launch.core.profile import load_profile
    from launch.core.spec import Data, Recipe
    from safetensors.torch import load_file
    job = TrainJob(model=ModelRef(path=str(exp_dir / "models" / "gpt2")),
                   data=Data(path=str(exp_dir / "world" / "data" / "positive.jsonl")),
                   recipe=Recipe(lr=1e-3, global_batch=2, max_length=64, zero_stage=0,
                                 precision="fp32"), seed=3, template="plain", milestones=(400,))
    ref = write_cell(tmp_path / "ref" / "positive" / "c", job, outputs=["n400"],
                     runtime={"micro_batch": 2})
    (rc, out), = run_cell_procs(ref, env={"OMP_NUM_THREADS": "1"})
    assert rc == 0, out[-2000:]
    # the stand-in: a PATH of /usr/bin without Slurm's commands, then the command after the image
    hidden = tmp_path / "no-slurm-bin"
    hidden.mkdir()
    for f in Path("/usr/bin").iterdir():
        if f.name not in ("scontrol", "sbatch", "srun", "squeue", "scancel", "sacct", "sinfo",
                          "salloc"):
            (hidden / f.name).symlink_to(f)
    stand_in = tmp_path / "bin"
    stand_in.mkdir()
    (stand_in / "apptainer").write_text(
        "#!/bin/bash\n# stand-in for apptainer exec: skip the options and the image, hide Slurm, "
        "run the rest\n"
        "shift; while [[ $1 == --* ]]; do [[ $1 == --bind || $1 == --env ]] && shift; shift; done\n"
        "export APPTAINER_CONTAINER=$1; shift\nexport "
        f"PATH={Path(sys.executable).parent}:{hidden}\n"
        "command -v scontrol >/dev/null && { echo 'stand-in: scontrol visible' >&2; exit 3; }\n"
        'exec "$@"\n')
    (stand_in / "apptainer").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stand_in}:{os.environ['PATH']}")
    image = tmp_path / "e.sif"
    image.write_bytes(b"stand-in image")
    profile = load_profile(slurm_profile(tmp_path, image=str(image), train={"time_min": 20}))
    d = write_cell(tmp_path / "slurm" / "positive" / "c", job, outputs=["n400"],
                   runtime={"micro_batch": 2})
    ex = submitit.SlurmExecutor(folder=tmp_path / "submitit" / "%j", python=python_command(profile))
    ex.update_parameters(**sbatch_params(profile, profile.train, "image-requeue"))
    j = ex.submit(CellTask(), str(d))
    metrics = d / "metrics.jsonl"
    for k in range(3):
        deadline = time.time() + 300
        start = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        while time.time() < deadline:   # running again, and some steps past where it resumed
            if metrics.exists() and len(metrics.read_text().splitlines()) >= start + 30:
                break
            time.sleep(0.2)
        subprocess.run(["scancel", "--signal=USR2", j.job_id], check=True)
        deadline = time.time() + 300
        while time.time() < deadline and len((d / "attempts.jsonl").read_text().splitlines()) < k + 2:
            time.sleep(0.5)
    deadline = time.time() + 600
    while time.time() < deadline and not (d / "DONE").exists():
        time.sleep(2)
    log = Path(j.paths.stdout).read_text() if Path(j.paths.stdout).exists() else ""
    assert (d / "DONE").exists(), log[-3000:]
    assert "FileNotFoundError" not in log and "elastica: requeueing" in log, log[-3000:]
    attempts = [json.loads(l) for l in (d / "attempts.jsonl").read_text().splitlines()]
    summary = json.loads((d / "summary.json").read_text())
    assert len(attempts) == 4 and len(summary["resumed_at_steps"]) == 3, (attempts, summary["resumed_at_steps"])
    assert log.count("elastica: requeueing") == 3
    rec = json.loads((d / "record.json").read_text())
    assert rec["runtime"]["image"] == str(image)
    a = load_file(str(ref / "checkpoints/n400/model.safetensors"))
    b = load_file(str(d / "checkpoints/n400/model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
