"""The cluster path as a Slurm user meets it: code snapshots, prefetch and the cache check, dry
runs, site options in the job script, and on the real local cluster (tests/slurm/up.sh): no
duplicate jobs on a resubmit while queued, cancel and status over every submission, and requeue when
the cells run in an image without Slurm commands.

    .venv/bin/python -m pytest -q tests/test_cluster.py
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import COMMENT
from launch.core.profile import Profile
from launch.core.schema import ConfigError, build

ROOT = Path(__file__).resolve().parent.parent


def launch(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "launch", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


# ---------------------------------------------------------------------------------------------
# code snapshot
def test_code_snapshot_is_the_commit_and_refuses_a_dirty_tree(tmp_path, monkeypatch):
    from launch.core import layout
    repo = tmp_path / "repo"
    (repo / "launch").mkdir(parents=True)
    (repo / "launch" / "a.py").write_text("x = 1\n")
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    monkeypatch.setattr(layout, "CODE_ROOT", repo)
    snap = layout.code_snapshot(tmp_path / "run")
    assert snap == tmp_path / "run" / "code" / head[:12]
    assert (snap / "launch" / "a.py").read_text() == "x = 1\n" and (snap / "COMMIT").read_text().strip() == head
    # an edit while the grid is queued changes nothing that runs
    (repo / "launch" / "a.py").write_text("x = 2\n")
    assert (snap / "launch" / "a.py").read_text() == "x = 1\n"
    with pytest.raises(ConfigError, match="--allow-dirty: the checkout has uncommitted changes"):
        layout.code_snapshot(tmp_path / "run")
    dirty = layout.code_snapshot(tmp_path / "run", allow_dirty=True)
    assert dirty.name.startswith(head[:12] + "-dirty-") and (dirty / "launch" / "a.py").read_text() == "x = 2\n"
    assert (dirty / "COMMIT").read_text().strip() == head + "+dirty"
    # the code in a snapshot reads its commit from COMMIT
    monkeypatch.setattr(layout, "CODE_ROOT", snap)
    assert layout.git_commit() == head


# ---------------------------------------------------------------------------------------------
# prefetch and cache
@pytest.mark.slow
def test_prefetch_downloads_one_weight_format_and_fails_in_one_line(tmp_path):
    from launch.prefetch import META, weight_patterns
    both = ["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
            "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json",
            "original/consolidated.00.pth"]
    assert weight_patterns(both) == ["*.safetensors", "*.safetensors.index.json"]
    assert weight_patterns(both[3:]) == ["pytorch_model*.bin", "pytorch_model*.bin.index.json"]
    assert not any(p.endswith((".bin", ".gguf", ".pth")) for p in META)
    prof = tmp_path / "p.yaml"
    prof.write_text(f"name: p\nexecutor: slurm\nhf_home: {tmp_path / 'hf'}\n")
    # the hub unreachable: refused port
    r = launch("prefetch", "configs/setting2/imdb.yaml", "--profile", prof,
               env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "3",
                    "HF_HUB_DOWNLOAD_TIMEOUT": "3"})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(
        "error: configs/setting2/imdb.yaml: models[0].path: cannot download "
        "meta-llama/Llama-2-7b-hf@main")


@pytest.mark.slow
def test_submit_refuses_a_cache_that_lacks_a_file(tmp_path):
    from hub_fixtures import build_hub
    hub = build_hub(tmp_path / "hf")
    prof = tmp_path / "p.yaml"
    prof.write_text(f"name: p\nexecutor: slurm\nhf_home: {hub}\nruns_root: {tmp_path / 'runs'}\n")
    login = stand_in_sbatch(tmp_path)   # a login node whose cluster would take these jobs
    r = launch("submit", "configs/setting2/imdb.yaml", "--profile", prof, "--dry-run", env=login)
    assert r.returncode == 0 and "#SBATCH" in r.stdout, r.stderr[-2000:]
    import shutil
    shutil.rmtree(hub / "hub" / "models--siebert--sentiment-roberta-large-english")
    shutil.rmtree(hub / "datasets" / "stanfordnlp___imdb")
    r = launch("submit", "configs/setting2/imdb.yaml", "--profile", prof, "--executor", "slurm")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: {prof}: hf_home: {hub} lacks "
                               "siebert/sentiment-roberta-large-english "
                               "(model), stanfordnlp/imdb (dataset) (on the login node: make "
                               "prefetch")
    assert not (tmp_path / "runs").exists()
    # refused too
    r = launch("submit", "configs/setting2/imdb.yaml", "--profile", prof, "--dry-run", env=login)
    assert r.returncode == 2 and "note: a real submit would stop here: error:" in r.stdout and "#SBATCH" in r.stdout
    assert r.stderr.startswith(f"error: {prof}: hf_home: {hub} lacks") and r.stderr.count("\n") == 1


def stand_in_sbatch(tmp_path: Path) -> dict:
    """PATH with an `sbatch` that accepts every --test-only (a login node whose cluster would take
    the jobs), for dry runs on a machine whose own Slurm has no GPU partition."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    (tmp_path / "bin" / "sbatch").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    return {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}


@pytest.mark.slow
def test_make_submit_setting2_dry_run_shows_the_final_job_scripts(tmp_path):
    """Every config's outcome is reported (a refused one does not end the loop), and the dry run
    makes the real submit's checks: the example profile's image and HF cache do not exist here, so
    each config is refused."""
    import yaml
    prof = yaml.safe_load((ROOT / "configs/profiles/example-gpu.yaml").read_text())
    # the host's Python, no cache check: what a submit from here may do
    prof.update(image="", hf_home="")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(prof))
    make = lambda profile: subprocess.run(["make", "-s", "submit-setting2", f"PROFILE={profile}",
                                           "ARGS=--dry-run"],
                                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                                          env={**os.environ, **stand_in_sbatch(tmp_path)})
    r = make(tmp_path / "p.yaml")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for cfg in sorted((ROOT / "configs/setting2").glob("*.yaml")):
        assert f"== configs/setting2/{cfg.name}" in r.stdout
    # positive, negative, eval, collect arrays per study
    assert r.stdout.count("#!/bin/bash") == 4 * 4
    assert "scontrol requeue" in r.stdout and "/code/" in r.stdout and "--kill-on-bad-exit=1" in r.stdout
    assert "== submit-setting2: 4 configs, refused or failed: none" in r.stdout
    r = make("configs/profiles/example-gpu.yaml")
    assert r.returncode != 0 and r.stdout.count("note: a real submit would stop here: error:") >= 4
    assert r.stdout.count("#!/bin/bash") == 4 * 4 and "refused or failed: configs/setting2/imdb-gemma-2b.yaml" \
        in r.stdout and r.stderr.count("error: ") == 4


def test_dry_run_with_a_local_executor_runs_and_writes_nothing(tmp_path):
    for executor in ("local", "debug"):
        r = launch("submit", "configs/toy/setting2.yaml", "--executor", executor, "--dry-run",
                   "--runs", tmp_path / "runs")
        assert r.returncode == 0 and "dry run: nothing run, nothing written" in r.stdout, r.stderr[-2000:]
        assert "== stage world: 1 of 1 cells to run" in r.stdout
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------- job scripts
def test_site_options_reach_the_job_script():
    from launch.plan import make_plan
    from launch.slurm import submit
    from launch.core.spec import load_spec
    prof = build(Profile,
                 {"name": "site", "executor": "slurm", "partition": "gpu", "cpu_partition": "cpu",
                           "train": {"nodes": 2, "gpus_per_node": 4, "cpus_per_task": 6},
                           "eval": {"gpus_per_node": 1, "cpus_per_task": 3}, "gpu_request": "gres",
                           "gpu_type": "a100", "constraint": "a100&ib", "exclusive": True,
                  "reservation": "paper",
                           "mail_user": "me@example.org", "mail_type": "END,FAIL",
                  "comment": "elastica",
                           "sbatch_extra": {"begin": "now+1hour"}, "srun_args": ["--mpi=pmix"],
                           "runs_root": "/scratch/runs", "wckey": "proj1"})
    out = io.StringIO()
    arrays = submit(make_plan(load_spec(ROOT / "configs/setting2/imdb.yaml")), prof.runs_root, prof,
                    dry_run=True, out=out, ask_cluster=False)
    train, ev, coll = arrays[0].script, arrays[2].script, arrays[3].script
    for line in ("#SBATCH --gres=gpu:a100:4", "#SBATCH --constraint='a100&ib'",
                 "#SBATCH --exclusive",
                 "#SBATCH --reservation=paper", "#SBATCH --mail-user=me@example.org",
                 "#SBATCH --mail-type=END,FAIL",
                 "#SBATCH --comment=elastica", "#SBATCH --begin=now+1hour",
                 "#SBATCH --partition=gpu", "#SBATCH --wckey=proj1"):
        assert line in train, line
    assert "srun --unbuffered" in train and "--cpus-per-task=6 --kill-on-bad-exit=1 --mpi=pmix" in train
    assert "#SBATCH --gres=gpu:a100:1" in ev and "--cpus-per-task=3" in ev
    assert "#SBATCH --partition=cpu" in coll and "gres" not in coll and "--exclusive" not in coll
    assert "--kill-on-invalid-dep=yes" in coll and "scontrol requeue" in coll


def sbatch_words(line: str) -> list[str]:
    """The words sbatch reads from one `#SBATCH` line (its own rules, src/sbatch/opt.c: whitespace
    separates, single and double quotes group, a backslash takes the next character as it is, also
    inside quotes)."""
    words, cur, quote, i, text = [], "", None, 0, line[len("#SBATCH"):]
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur, i = cur + text[i + 1], i + 2
            continue
        if quote:
            quote = None if c == quote else quote
            cur += "" if c == "'" or c == '"' and not quote else c
        elif c in "'\"":
            quote = c
        elif c.isspace():
            if cur:
                words.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    return words + ([cur] if cur else [])


def test_job_script_headers_read_as_sbatch_reads_them():
    """Every value a profile may hold reaches sbatch as one option: no line that is not a comment
    comes before the last #SBATCH line (sbatch stops reading them there), and each #SBATCH line is
    exactly one word for sbatch."""
    from launch.plan import make_plan
    from launch.slurm import submit
    from launch.core.spec import load_spec
    prof = build(Profile,
                 {"name": "site", "executor": "slurm", "partition": "gpu", "comment": COMMENT,
                           "constraint": "(a100|h100)&ib", "sbatch_extra": {"begin": "now+1hour",
                                                                             "exclude": "n[1-3],gpu07"},
                           "srun_args": ["--mpi=pmix", "--cpu-bind=cores"],
                  "runs_root": "/scratch/my runs",
                           "mail_user": "me@example.org", "mail_type": "END,FAIL"})
    out = io.StringIO()
    arrays = submit(make_plan(load_spec(ROOT / "configs/setting2/imdb.yaml")), prof.runs_root, prof,
                    dry_run=True, out=out, ask_cluster=False)
    for a in arrays:
        lines = a.script.splitlines()
        header = [l for l in lines[1:] if l.startswith("#SBATCH")]
        last = max(i for i, l in enumerate(lines) if l.startswith("#SBATCH"))
        assert all(not l.strip() or l.startswith("#") for l in lines[1:last]), \
            "sbatch stops reading #SBATCH lines at the first line that is not a comment or blank"
        opts = {}
        for line in header:
            words = sbatch_words(line)
            assert len(words) == 1 and words[0].startswith("--"), line
            key, _, value = words[0][2:].partition("=")
            opts[key] = value
        assert opts["comment"] == COMMENT and opts["begin"] == "now+1hour" and opts["exclude"] == "n[1-3],gpu07"
        assert opts["output"].startswith("/scratch/my runs/") and opts["partition"] == "gpu"
        srun = next(l for l in lines if l.startswith("srun "))
        assert "--mpi=pmix --cpu-bind=cores" in srun and "-m submitit.core._submit" in srun
    # why #SBATCH values keep to a character set: the shell's quoting of this value reads as four
    # words to sbatch
    import shlex
    hostile = "a\\'b' --qos=high \\'"
    assert len(sbatch_words(f"#SBATCH --comment={shlex.quote(hostile)}")) > 1


@pytest.mark.parametrize("over,field",
                         [({"gpu_type": "a100"}, "gpu_type"), ({"mail_user": "me"}, "mail_user"),
                                        ({"constraint": "a\n#SBATCH --x"}, "constraint"),
                                        ({"sbatch_extra": {"time": "10"}}, "sbatch_extra.time"),
                                        ({"sbatch_extra": {"Bad Key": "1"}},
                                         "sbatch_extra.Bad Key"),
                                        ({"srun_args": ["--x\ny"]}, "srun_args[0]"),
                                        # a program where options belong: srun would run bash as
                                        # each task
                                        ({"srun_args": ["bash", "-c", "touch /tmp/x"]},
                                         "srun_args[0]"),
                                        ({"srun_args": ["--mpi=pmix", "--export=ALL"]},
                                         "srun_args[1]"),
                                        ({"srun_args": ["--export=ALL,HF_TOKEN=abc"]},
                                         "srun_args[0]"),
                                        ({"sbatch_extra": {"export": "ALL,WANDB_API_KEY=x"}},
                                         "sbatch_extra.export"),
                                        ({"sbatch_extra": {"begin": "now", "output": "/tmp/x"}},
                                         "sbatch_extra.output"),
                                        ({"comment": "a\\'b' --qos=high \\'"}, "comment"),
                                        ({"comment": 'say "hi"'}, "comment"),
                                        ({"constraint": "a100$(id)"}, "constraint"),
                                        ({"runs_root": "/scratch/x\n"}, "runs_root"),
                                        ({"hf_home": "/hf\r"}, "hf_home"),
                                        ({"binds": ["/a", "/b\n#SBATCH --qos=high"]}, "binds[1]"),
                                        ({"mail_user": "me@x.org",
                                          "env": {"NOTE": "hf_" + "a" * 34}}, "env.NOTE"),
                                        ({"image": "/x/WANDB_API_KEY=1234/i.sif"}, "image"),
                                        # what jobs in the image read and write must be bound into
                                        # it
                                        ({"image": "/i.sif", "binds": ["/scratch"],
                                          "runs_root": "/data/runs"},
                                         "runs_root"),
                                        ({"image": "/i.sif", "binds": ["/scratch:/s"],
                                          "runs_root": "/scratch/r",
                                          "hf_home": "/shared/hf"}, "hf_home"),
                                        # per-stage resources: a stage, a field, what its cells can
                                        # use
                                        ({"stages": {"negatve": {"nodes": 1}}}, "stages.negatve"),
                                        ({"stages": {"eval": {"gpu": 2}}}, "stages.eval.gpu"),
                                        ({"stages": {"eval": {"gpus_per_node": 2}}},
                                         "stages.eval.gpus_per_node"),
                                        ({"stages": {"collect": {"nodes": 2}}},
                                         "stages.collect.gpus_per_node"),
                                        ({"stages": {"negative": {"time_min": 0}}},
                                         "stages.negative.time_min"),
                                        ({"stages": {"negative": {"nodes": "2"}}},
                                         "stages.negative.nodes"),
                                        ({"stages": {"cross": {"cells_per_task": 4}}},
                                         "stages.cross.cells_per_task"),
                                        ({"stages": {"eval": {"time_min": 2}}}, "signal_delay_s"),
                                        ({"executor": "local", "stages": {"eval": {"time_min": 9}}},
                                         "stages")])
def test_bad_site_options_are_refused(over, field):
    with pytest.raises(ConfigError) as e:
        build(Profile, {"name": "p", "executor": "slurm", **over})
    assert e.value.field == field


@pytest.mark.parametrize("key", ["PYTHONPATH", "WANDB_MODE", "MASTER_PORT", "RANK", "HF_HOME",
                                 "ELASTICA_IMAGE"])
def test_env_keys_the_launcher_owns_are_refused(key):
    with pytest.raises(ConfigError) as e:
        build(Profile, {"name": "p", "executor": "slurm", "env": {key: "x"}})
    assert e.value.field == f"env.{key}"


def test_ranks_are_exported_over_an_inherited_environment(monkeypatch):
    """A job submitted from inside another job (or a site module) already has RANK, MASTER_ADDR,
    MASTER_PORT: submitit's export refuses them; every task still gets its own rank, and the
    profile's master_port wins."""
    from launch.slurm import export_ranks
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4",
             "SLURM_PROCID": "3",
             "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_NODELIST": "gpu[07-08]"}
    for k, v in {**slurm, "RANK": "0", "WORLD_SIZE": "16", "MASTER_ADDR": "stale",
                 "MASTER_PORT": "1", "LOCAL_RANK": "5", "ELASTICA_MASTER_PORT": "29611"}.items():
        monkeypatch.setenv(k, v)
    export_ranks()
    got = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                      "MASTER_PORT")}
    assert got == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07",
                   "MASTER_PORT": "29611"}


def test_plan_estimates_fork_memory_and_refuses_a_profile_too_small(tmp_path):
    """Llama-2-7B under ZeRO-3 bf16 on 2 nodes x 8 GPUs: each rank's fork holds (2 + 4 + 8) bytes
    per parameter / 16, each node 8 ranks: 6.74e9 x 14 / 2 = 47 GB; the example profile runs
    negative cells on one node of 8 GPUs, whose ranks hold twice as much: 94 GB. Each stage is
    checked against its own memory."""
    import yaml
    prof = yaml.safe_load((ROOT / "configs/profiles/example-gpu.yaml").read_text())
    assert prof["stages"]["negative"] == {"nodes": 1}
    runs = []
    for mem, neg in ((40, None), (64, None), (64, 128)):
        prof["train"]["mem_gb"] = mem
        prof["stages"]["negative"] = {"nodes": 1, **({"mem_gb": neg} if neg else {})}
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(prof))
        runs.append(launch("plan", "configs/setting2/imdb.yaml", "--profile", tmp_path / "p.yaml",
                           env={"COLUMNS": "160"}))   # the whole table, on a wide terminal
    low, neg, ok = runs
    assert low.returncode == 2 and low.stderr.startswith("error: train.mem_gb: 40 GB per node is "
                                                         "less than the 47 GB "
                                                         "that the positive milestone forks")
    assert low.stderr.count("\n") == 1 and "set train.mem_gb to at least" in low.stderr
    assert neg.returncode == 2 and neg.stderr.startswith("error: train.mem_gb: 64 GB per node is "
                                                         "less than the 94 GB "
                                                         "that the negative milestone forks")
    assert ok.returncode == 0 and "llama2-7b 94 GB; train.mem_gb: 64, stages.negative.mem_gb: 128" in ok.stdout
    assert "1x8GPU 720m 128G" in ok.stdout and "2x8GPU 720m 64G" in ok.stdout


def sbatch_opts(script: str) -> dict:
    return dict(sbatch_words(l)[0][2:].partition("=")[::2] for l in script.splitlines()
                if l.startswith("#SBATCH"))


def test_each_stage_asks_for_its_own_resources():
    """Per-stage fields beat their section; a stage without its own time_min asks for the plan's
    estimate where the profile has rates (twice the longest cell + the signal delay + 15 min, in
    quarter hours, never above the section's), and the section's time where it has none."""
    from launch.plan import make_plan
    from launch.slurm import submit
    from launch.core.spec import load_spec
    plan = make_plan(load_spec(ROOT / "configs/setting2/imdb.yaml"))
    base = {"name": "site", "executor": "slurm", "partition": "gpu", "signal_delay_s": 120,
            "train": {"nodes": 2, "gpus_per_node": 8, "time_min": 720},
            "eval": {"gpus_per_node": 1, "time_min": 240},
            "stages": {"negative": {"nodes": 1, "mem_gb": 200},
                       "collect": {"mem_gb": 8, "time_min": 20}}}
    scripts = lambda prof: {a.stage: sbatch_opts(a.script) for a in
                            submit(plan, "/scratch/r", prof, dry_run=True, out=io.StringIO(),
                                   ask_cluster=False)}
    plain = scripts(build(Profile, base))
    assert (plain["positive"]["nodes"], plain["positive"]["time"],
            plain["positive"].get("mem")) == ("2", "720", None)
    assert (plain["negative"]["nodes"],
            plain["negative"]["time"], plain["negative"]["mem"]) == ("1", "720", "200GB")
    assert plain["negative"]["gpus-per-node"] == "8" and plain["eval"]["time"] == "240"
    assert (plain["collect"]["time"],
            plain["collect"]["mem"]) == ("20", "8GB") and "gpus-per-node" not in \
        plain["collect"]
    # rates that make every training cell's estimate 0 minutes: 2 x 0 + 2 + 15 -> 30; eval 7 min: 14
    # + 2 + 15 -> 45
    fast = scripts(build(Profile,
                         {**base, "train_tokens_per_gpu_hour": 1e15, "eval_minutes_per_cell": 7}))
    assert (fast["positive"]["time"],
            fast["negative"]["time"], fast["eval"]["time"]) == ("30", "30", "45")
    # 120 min of fixed time per cell (on 16 GPUs: 32 GPU-hours) -> 2 x 120 + 2 + 15 -> 270; on 8
    # GPUs the same
    slow = scripts(build(Profile,
                         {**base, "train_tokens_per_gpu_hour": 1e15, "train_fixed_minutes": 120,
                                   "stages": {**base["stages"], "positive": {"time_min": 600}}}))
    assert (slow["positive"]["time"], slow["negative"]["time"]) == ("600", "270")
    capped = scripts(build(Profile,
                           {**base, "train_tokens_per_gpu_hour": 1e15, "train_fixed_minutes": 600}))
    assert capped["positive"]["time"] == "720"


def test_a_failed_cells_error_comes_from_the_rank_that_failed(tmp_path):
    """A 2-rank cell: rank 0's log only says its peer went away; status shows rank 1's traceback."""
    from launch.slurm import error_tail
    logs = tmp_path / "submitit" / "45_3"
    logs.mkdir(parents=True)
    (logs / "45_3_0_log.out").write_text("step 12\nRuntimeError: Connection closed by peer\n")
    (logs / "45_3_1_log.out").write_text("step 12\nTraceback (most recent call last):\n  File x\n"
                                          "torch.OutOfMemoryError: CUDA out of memory\n")
    tail = error_tail({"dir": str(tmp_path / "cell"), "log": str(logs / "45_3_0_log.out")})
    assert "rank 1's log" in tail and "CUDA out of memory" in tail and "peer" not in tail
    (logs / "45_3_1_log.out").write_text("step 12\n")
    assert "peer" in error_tail({"dir": str(tmp_path / "cell"),
                                 "log": str(logs / "45_3_0_log.out")})


@pytest.mark.parametrize("step_exit,marker,scontrol_rc,requeued", [
    # the first rank exited 75, srun killed the last: the marker says every rank saved
    (137, True, 0, True),
    (75, False, 0, True),     # a single task saved and exited 75
    # killed without a save (a node failure, an OOM): resubmit, not requeue
    (137, False, 0, False),
    (1, False, 0, False),
    (137, True, 1, True)])    # scontrol requeue itself failed: said so on stderr
def test_the_teardown_requeues_a_job_whose_ranks_saved(tmp_path, step_exit, marker, scontrol_rc,
                                                       requeued):
    """The job script's setup and teardown lines as bash runs them, with a stand-in scontrol that
    records its arguments and a step that exits with `step_exit`."""
    from launch.slurm import marker_lines, requeue_lines
    (tmp_path / "bin").mkdir()
    (tmp_path / "submitit").mkdir()   # submitit's folder, where the job's logs are
    (tmp_path / "bin" / "scontrol").write_text("#!/bin/sh\necho \"$@\" >> "
                                               f"{tmp_path}/scontrol.log\n"
                                               f"exit {scontrol_rc}\n")
    (tmp_path / "bin" / "scontrol").chmod(0o755)
    step = "touch \"$ELASTICA_PREEMPTED\"; " if marker else ""
    script = "\n".join(marker_lines(tmp_path / "submitit") + [f"( {step}exit {step_exit} )"]
                       + requeue_lines(3))
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
                            "SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "1"})
    assert r.returncode == step_exit
    log = tmp_path / "scontrol.log"
    assert (log.exists() and log.read_text() == "requeue 77\n") == requeued, (r.stdout, r.stderr)
    assert ("scontrol requeue 77 failed" in r.stderr) == (requeued and scontrol_rc != 0)
    assert not (tmp_path / "submitit" / "77.preempted").exists(), "the marker is consumed"


def test_log_paths_of_array_tasks():
    from launch.slurm import log_path
    assert log_path(Path("/r"), "45_3") == Path("/r/submitit/45_3/45_3_0_log.out")
    assert log_path(Path("/r"), "46") == Path("/r/submitit/46/46_0_log.out")


@pytest.mark.parametrize("saved, exit_code, teardown", [("success", 0, False), ("error", 3, True),
                                                        (None, 3, True)])
def test_a_done_task_ends_without_teardown_once_submitit_saved_its_success(tmp_path, saved,
                                                                           exit_code, teardown):
    """A Slurm task whose cells are done ends at exit, once submitit has saved ("success", result),
    without the interpreter's teardown (where gloo's threads can abort a done rank and fail the
    job): a handler registered before it never runs and the exit code is 0. Without a saved
    success (an error result, or none) the teardown and the exit code are the usual ones."""
    import pickle
    result, ran = tmp_path / "0_0_result.pkl", tmp_path / "teardown-ran"
    if saved:
        result.write_bytes(pickle.dumps((saved, [])))
    code = (f"import atexit, pathlib, sys\n"
            f"atexit.register(lambda: pathlib.Path({str(ran)!r}).write_text('ran'))\n"
            f"from launch.slurm import _end_once_saved\n"
            f"atexit.register(_end_once_saved, pathlib.Path({str(result)!r}))\n"
            f"sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert (r.returncode, ran.exists()) == (exit_code, teardown), r.stderr[-2000:]
