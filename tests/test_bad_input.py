"""Bad input, written as a new user and a hostile one would: every case is refused before anything
runs, with exit 2, one `error:` line that names the field (and the fix, in parentheses), nothing
written under the runs root and nothing submitted. Cases here: studies, profiles, the command line,
paths and job files; more in test_spec_plan.py, test_reliability.py and test_cluster.py.

    .venv/bin/python -m pytest -q tests/test_bad_input.py
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from launch.__main__ import main as cli

ROOT = Path(__file__).resolve().parent.parent
TOY = yaml.safe_load((ROOT / "configs/toy/setting2.yaml").read_text())
IMDB = yaml.safe_load((ROOT / "configs/setting2/imdb.yaml").read_text())


def mut(base: dict, fn) -> dict:
    cfg = copy.deepcopy(base)
    fn(cfg)
    return cfg


def deep(n: int) -> str:
    return "a: " + "[" * n + "]" * n + "\n"


STUDIES = [   # (id, config dict or raw YAML text, the field the error names)
    ("duplicate-top-key", "experiment: a\nexperiment: b\n", "experiment: is given twice (line 2)"),
    ("duplicate-nested-key",
     yaml.safe_dump(TOY).replace("  lr: 0.0003\n", "  lr: 0.0003\n  lr: 0.1\n", 1),
     "recipe.lr: is given twice (line"),
    ("duplicate-key-in-a-list", yaml.safe_dump(TOY).replace("  name: ", "  name: a\n  name: ", 1),
     "models[0].name: is given twice"),
    ("deep-nesting", deep(5000), "<top>"),
    ("experiment-trailing-newline", mut(TOY, lambda c: c.update(experiment="toy\n")), "experiment"),
    ("experiment-too-long", mut(TOY, lambda c: c.update(experiment="x" * 300)), "experiment"),
    ("experiment-slash", mut(TOY, lambda c: c.update(experiment="../etc")), "experiment"),
    ("model-name-newline", mut(TOY, lambda c: c["models"][0].update(name="gpt\n")),
     "models[0].name"),
    ("model-name-too-long", mut(TOY, lambda c: c["models"][0].update(name="m" * 65)),
     "models[0].name"),
    ("hub-id-newline",
     mut(IMDB, lambda c: c["models"][0].update(path="meta-llama/Llama-2-7b-hf\n")),
     "models[0].path"),
    ("hub-id-three-parts", mut(IMDB, lambda c: c["models"][0].update(path="a/b/c")),
     "models[0].path"),
    ("seed-too-large", mut(TOY, lambda c: c["recipe"].update(seeds=[2 ** 40])), "recipe.seeds"),
    ("seed-negative", mut(TOY, lambda c: c["recipe"].update(seeds=[-1])), "recipe.seeds"),
    ("world-seed-too-large", mut(TOY, lambda c: c["world"].update(seed=2 ** 33)), "world.seed"),
    ("unknown-world-set", mut(TOY, lambda c: c["data"]["positive"].update(path="world:positives")),
     "data.positive.path"),
    ("world-volume-too-large", mut(TOY, lambda c: c["volumes"].update(positive=[100, 50000])),
     "data.positive"),
    ("imdb-volume-beyond-split", mut(IMDB, lambda c: c["volumes"].update(negative=[0, 13000])),
     "data.negative"),
    ("truthfulqa-split-too-small",
     mut(yaml.safe_load((ROOT / "configs/setting1/truthfulqa.yaml").read_text()),
                                       lambda c: c["slices"].update(responses=300)),
     "data.prompts"),
    ("imdb-split-the-card-lacks",
     mut(IMDB, lambda c: c["data"]["positive"].update(split="validation")), "data.positive.split"),
    ("runtime-override-of-a-stage-the-setting-lacks", mut(IMDB, lambda c: c.update(
        runtime_overrides={"slices": {"micro_batch": 2}})), "runtime_overrides.slices"),
    ("recipe-override-of-a-stage-the-setting-lacks", mut(IMDB, lambda c: c.update(
        recipe_overrides={"cross": {"lr": 1e-4}})), "recipe_overrides.cross"),
    ("loss-weighting", mut(TOY, lambda c: c["recipe"].update(loss_weighting="sentence")),
     "recipe.loss_weighting"),
    ("fields-unknown-suite-field",
     mut(TOY, lambda c: c["data"]["positive"].update(fields={"answer": "x"})),
     "data.positive.fields.answer"),
    ("fields-list-of-numbers",
     mut(IMDB, lambda c: c["data"]["positive"].update(fields={"prompt": [1, 2]})),
     "data.positive.fields.prompt"),
    ("filter-list-value", mut(IMDB, lambda c: c["data"]["positive"].update(filter={"label": [1]})),
     "data.positive.filter.label"),
    ("temperature-negative", mut(TOY, lambda c: c["eval"].update(temperature=-0.1)),
     "eval.temperature"),
    ("prompts-zero", mut(TOY, lambda c: c["eval"].update(prompts=0)), "eval.prompts"),
    ("scorer-sign", mut(IMDB, lambda c: c["eval"]["scorer"].update(sign=2)), "eval.scorer.sign"),
    ("scorer-without-model", mut(IMDB, lambda c: c["eval"]["scorer"].update(model="")),
     "eval.scorer.model"),
    ("rule-scorer-on-real-data", mut(IMDB, lambda c: c["eval"].update(scorer={"kind": "rule"})),
     "eval.scorer.kind"),
    ("matched-start-without-control", mut(TOY, lambda c: c["data"].pop("control")), "data.control"),
    ("init-without-pretraining", mut(TOY, lambda c: c["models"][0].update(pretrain_examples=0)),
     "models[0].pretrain_examples"),
    ("init-width-heads", mut(TOY, lambda c: c["models"][0]["init"].update(width=100, heads=3)),
     "models[0].init.width"),
    ("override-unknown-field",
     mut(TOY, lambda c: c["recipe_overrides"].update(negative={"lrr": 1e-4})),
     "recipe_overrides.negative.lrr"),
    ("warmup-negative", mut(TOY, lambda c: c["recipe"].update(warmup_steps=-1)),
     "recipe.warmup_steps"),
    ("max-length-tiny", mut(TOY, lambda c: c["recipe"].update(max_length=4)), "recipe.max_length"),
    ("grad-clip-negative", mut(TOY, lambda c: c["recipe"].update(grad_clip=-1.0)),
     "recipe.grad_clip"),
    ("lr-nan", "experiment: x\nsetting: rebound\ntask: t\ntemplate: plain\nmodels: [{name: m, "
               "path: a/b}]\n"
               "data: {}\nrecipe: {lr: .nan}\n", "recipe.lr"),
    ("models-not-a-list", mut(TOY, lambda c: c.update(models={"name": "m"})), "models"),
    ("data-not-a-mapping", mut(TOY, lambda c: c.update(data=["a"])), "data"),
    ("volumes-strings", mut(TOY, lambda c: c["volumes"].update(positive=["100"])),
     "volumes.positive[0]"),
    ("claim-equivalence-without-bound",
     mut(TOY, lambda c: c.update(claims=[{"name": "no difference", "metric": "positive_logit",
                                          "statistic": "arm-effect", "window": 50,
                                          "expect": "equivalent"}])), "claims[0].bound"),
    ("claim-window-off-the-grid",
     mut(TOY, lambda c: c.update(claims=[{"name": "deeper falls more", "metric": "positive_rate",
                                          "statistic": "deeper", "window": 30}])),
     "claims[0].window"),
    ("claim-unknown-statistic",
     mut(TOY, lambda c: c.update(claims=[{"name": "x", "metric": "positive_rate",
                                          "statistic": "slope", "window": 50}])),
     "claims[0].statistic"),
]


@pytest.mark.parametrize("case,cfg,field", STUDIES, ids=[c[0] for c in STUDIES])
def test_bad_study(case, cfg, field, tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    assert cli(["plan", str(path), "--runs", str(tmp_path / "runs")]) == 2
    assert cli(["submit", str(path), "--executor", "local", "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0] == err[1], err
    assert err[0].startswith(f"error: {path}: {field}") and err[0].endswith(")"), err[0]
    assert "Traceback" not in err[0] and not (tmp_path / "runs").exists()


PROFILES = [   # (id, profile YAML, the field the error names)
    ("secret-legacy-hub-token", "env: {HUGGING_FACE_HUB_TOKEN: hf_abc}\n",
     "env.HUGGING_FACE_HUB_TOKEN"),
    ("secret-openai-key", "env: {OPENAI_API_KEY: sk}\n", "env.OPENAI_API_KEY"),
    ("secret-lowercase", "env: {hf_token: x}\n", "env.hf_token"),
    ("secret-password", "env: {DB_PASSWORD: x}\n", "env.DB_PASSWORD"),
    ("secret-aws", "env: {AWS_SECRET_ACCESS_KEY: x}\n", "env.AWS_SECRET_ACCESS_KEY"),
    ("env-key-trailing-newline", 'env: {"WANDB_API_KEY\\n": x}\n', "env.WANDB_API_KEY"),
    ("env-value-newline", 'env: {NCCL_DEBUG: "WARN\\nexport X=1"}\n', "env.NCCL_DEBUG"),
    ("runs-root-token-var", "runs_root: /scratch/$HF_TOKEN\n", "runs_root"),
    ("hf-home-braced-secret", "hf_home: /shared/${WANDB_API_KEY}\n", "hf_home"),
    ("image-secret-var", "image: /img/$GITHUB_TOKEN.sif\n", "image"),
    ("bind-secret-var", "binds: [/scratch, $AWS_SECRET_ACCESS_KEY]\n", "binds[1]"),
    ("partition-trailing-newline", 'partition: "gpu\\n"\n', "partition"),
    ("account-space", "account: a b\n", "account"),
    ("name-trailing-newline", 'name: "p\\n"\n', "name"),
    ("name-too-long", f"name: {'p' * 70}\n", "name"),
    # after the name
    ("duplicate-key", "partition: a\npartition: b\n", "partition: is given twice (line 3)"),
    ("deep-nesting", deep(5000), "<top>"),
    ("reservation-shell", "reservation: 'r;rm'\n", "reservation"),
    ("sbatch-extra-owned", "sbatch_extra: {partition: x}\n", "sbatch_extra.partition"),
    ("srun-arg-newline", 'srun_args: ["--x\\n"]\n', "srun_args[0]"),
    ("mail-type-lower", "mail_type: end\n", "mail_type"),
    ("gpu-request", "gpu_request: gpu\n", "gpu_request"),
]


@pytest.mark.parametrize("case,text,field", PROFILES, ids=[c[0] for c in PROFILES])
def test_bad_profile(case, text, field, tmp_path, capsys):
    prof = tmp_path / "p.yaml"
    prof.write_text(text if text.startswith("name") or case == "deep-nesting"
                    else "name: p\n" + text)
    assert cli(["submit", str(ROOT / "configs/toy/setting2.yaml"), "--profile", str(prof),
                "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {prof}: {field}"), err
    assert "hf_abc" not in err[0] and not (tmp_path / "runs").exists()


CLI = [   # (id, argv with {cfg} / {tmp}, the field the error names)
    ("run-only-unknown-stage", ["run", "{cfg}", "--only", "negativ"], "--only"),
    ("run-jobs-zero", ["run", "{cfg}", "--jobs", "0"], "--jobs"),
    ("submit-jobs-not-a-number", ["submit", "{cfg}", "--executor", "local", "--jobs", "two"],
     "--jobs"),
    ("plan-unknown-flag", ["plan", "{cfg}", "--jsn"], "command line"),
    ("submit-unknown-executor", ["submit", "{cfg}", "--executor", "pbs"], "command line"),
    ("status-of-a-file", ["status", "{tmp}/nope"], ""),
    ("cancel-of-an-empty-folder", ["cancel", "{tmp}"], "RUN_DIR"),
    ("run-cell-missing", ["run-cell", "{tmp}/a/b"], "cell_dir"),
    ("debug-cell-not-a-run", ["debug-cell", "{tmp}", "eval/x"], "RUN"),
    ("profile-missing", ["plan", "{cfg}", "--profile", "{tmp}/none.yaml"], ""),
    ("config-is-a-folder", ["plan", "{tmp}"], "RUN_DIR"),
    ("prefetch-missing-config", ["prefetch", "{tmp}/none.yaml"], ""),
    ("run-runs-empty", ["run", "{cfg}", "--runs", ""], "--runs"),
    ("plan-runs-newline", ["plan", "{cfg}", "--runs", "{tmp}/r\n#SBATCH --qos=x"], "--runs"),
    ("run-jobs-superscript", ["run", "{cfg}", "--jobs", "\u00b2"], "--jobs"),
    ("run-only-a-stage-whose-upstream-is-not-done", ["run", "{cfg}", "--only", "pretrain"],
     "--only"),
    ("submit-only-a-stage-whose-upstream-is-not-done",
     ["submit", "{cfg}", "--executor", "local", "--only",
                                                         "negative"], "--only"),
    ("shell-image-missing", ["shell", "--image", "{tmp}/none.sif"], "--image"),
    ("rates-of-no-folder", ["rates", "{tmp}/none"], "RUN_DIR"),
]


@pytest.mark.parametrize("case,argv,field", CLI, ids=[c[0] for c in CLI])
def test_bad_command_line(case, argv, field, tmp_path, capsys):
    argv = [a.replace("{cfg}", str(ROOT / "configs/toy/setting2.yaml")).replace("{tmp}",
                                                                                str(tmp_path))
            for a in argv]
    runs = ["--runs", str(tmp_path / "runs")] if argv[0] in ("run", "plan",
                                                             "submit") and "--runs" not in argv \
        else []
    assert cli(argv + runs) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and field in err[0], err
    assert not (tmp_path / "runs").exists()


# (id, job.json text, the field the error names): run-cell, as a Slurm task or make debug-cell runs
# it
JOB_FILES = [
    ("not-json", "{trunc", "cell_dir"),
    ("a-list", "[1, 2]", "job.json"),
    ("a-string", '"train"', "job.json"),
    ("no-kind", '{"stage": "x", "id": "c", "job": {}}', "job.json"),
    ("no-job", '{"stage": "x", "id": "c", "kind": "train"}', "job.json"),
    ("unknown-kind", '{"stage": "x", "id": "c", "kind": "bake", "job": {}}', "job.kind"),
    ("job-not-a-mapping", '{"stage": "x", "id": "c", "kind": "train", "job": [1]}', "job.job"),
    ("runtime-a-number", '{"stage": "x", "id": "c", "kind": "world", "job": {}, "runtime": 5}',
     "job.runtime"),
    ("upstream-a-mapping", '{"stage": "x", "id": "c", "kind": "world", "job": {}, "upstream": '
                           '{"a": 1}}',
     "job.upstream"),
    ("job-wrong-field", '{"stage": "x", "id": "c", "kind": "world", "job": {"wrld": {}}}',
     "job.wrld"),
    ("world-of-another-generator", '{"stage": "world", "id": "c", "kind": "world", "job": '
                                   '{"world": {}, '
                                   '"template": "plain", "generator": 1}}', "job.generator"),
    ("job-bad-value", '{"stage": "x", "id": "c", "kind": "world", "job": {"world": {"noise": 0.9}, '
                      '"template": "plain"}}', "job.world.noise"),
]


@pytest.mark.parametrize("case,text,field", JOB_FILES, ids=[c[0] for c in JOB_FILES])
def test_bad_job_file(case, text, field, tmp_path, capsys):
    cell = tmp_path / "exp" / "eval" / "c"
    cell.mkdir(parents=True)
    (cell / "job.json").write_text(text)
    assert cli(["run-cell", str(cell)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}"), err
    assert sorted(p.name for p in cell.iterdir()) == ["job.json"], "nothing written"


def test_json_schema_check_names_what_is_wrong(tmp_path):
    """One check of every output: what status, a rerun and the collector all use."""
    from launch.core.layout import output_problem
    d = tmp_path
    cases = {'{}': "no metrics", '{"metrics": []}': "no metrics",
             '{"metrics": ["x"]}': "not a record",
             '{"metrics": [{"value": 1, "stderr": 0, "n": 1}]}': "no name",
             '{"metrics": [{"name": "a", "stderr": 0, "n": 1}]}': "value None",
             '{"metrics": [{"name": "a", "value": "0.5", "stderr": 0, "n": 1}]}': "not a finite number",
             '{"metrics": [{"name": "a", "value": 0.5, "n": 1}]}': "stderr None",
             '{"metrics": [{"name": "a", "value": 0.5, "stderr": 0.1}]}': "n None",
             '[1]': "not a JSON object", '{"metrics": [{"name": "a", "value': "not valid JSON"}
    for text, want in cases.items():
        (d / "result.json").write_text(text)
        assert want in (output_problem(d, "result.json", "eval") or ""), text
    (d / "result.json").write_text(json.dumps({"metrics": [{"name": "a", "value": 0.5,
                                                            "stderr": 0.1, "n": 4}]}))
    assert output_problem(d, "result.json", "eval") is None


def test_volumes_beyond_a_local_file_are_refused_at_plan(tmp_path, capsys):
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": f"review {i}"}) + "\n" for i in range(50)))
    cfg = mut(IMDB,
              lambda c: c["data"].update(positive={"path": str(data), "fields": {"text": "text"}}))
    cfg["volumes"]["positive"] = [10, 60]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli(["plan", str(path), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: data.positive: needs 60 rows, "
                                               f"{data}"), err
    cfg["data"]["positive"]["split"] = "train[:8]"   # a split of the file counts too
    cfg["volumes"]["positive"] = [10]
    path.write_text(yaml.safe_dump(cfg))
    assert cli(["plan", str(path), "--runs", str(tmp_path / "runs")]) == 2
    assert "has 8" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_a_cell_made_from_a_corrupt_upstream_is_not_done(tmp_path):
    """Done markers name their upstream cells' nonces; an upstream whose outputs are gone or corrupt
    gives no nonce, so the cells made from it run again with it (and are never tabled meanwhile)."""
    from launch.core.layout import cell_state, upstream_nonce, write_done
    exp = tmp_path / "exp"
    up, down = exp / "positive" / "u", exp / "eval" / "d"
    (up / "checkpoints" / "n8").mkdir(parents=True)
    (up / "checkpoints" / "n8" / "config.json").write_text("{}")
    from test_spec_plan import tiny_safetensors
    (up / "checkpoints" / "n8" / "model.safetensors").write_bytes(tiny_safetensors())
    write_done(up, milestones=["n8"], kind="train")
    down.mkdir(parents=True)
    (down / "result.json").write_text(json.dumps({"metrics": [{"name": "a", "value": 1.0,
                                                               "stderr": 0.0, "n": 1}]}))
    write_done(down, milestones=["result.json"], kind="eval",
               upstream={"positive/u": upstream_nonce(exp, "positive/u")})
    assert cell_state(down, "eval", ["result.json"], ["positive/u"]) == "done"
    (up / "checkpoints" / "n8" / "model.safetensors").unlink()   # the upstream's weights are gone
    assert upstream_nonce(exp, "positive/u") is None
    assert cell_state(down, "eval", ["result.json"], ["positive/u"]) == "stale"


def test_run_folders_that_cannot_be_trusted_are_refused(tmp_path, capsys):
    """status of a renamed run folder would describe the folder its name no longer is; a truncated
    study.json; the collector pointed at a folder that is not a study's (a runs root, a home) writes
    no report/ into it."""
    import shutil
    exp = tmp_path / "runs" / "toy-setting2"
    exp.mkdir(parents=True)
    shutil.copy(ROOT / "configs/toy/setting2.yaml", exp / "study.yaml")
    shutil.copy(ROOT / "configs/profiles/local-cpu.yaml", exp / "profile.yaml")
    (exp / "study.json").write_text(json.dumps({"config": "configs/toy/setting2.yaml",
                                                "cwd": str(ROOT),
                                                "profile": "configs/profiles/local-cpu.yaml"}))
    assert cli(["status", str(exp)]) == 0
    capsys.readouterr()
    moved = exp.rename(tmp_path / "runs" / "toy-old")
    assert cli(["status", str(moved)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: RUN_DIR:") and "rename the folder back to toy-setting2" in err[0]
    exp = moved.rename(exp)
    (exp / "study.json").write_text('{"config": "configs/toy/set')
    assert cli(["status", str(exp)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study.json is not valid JSON" in err[0]
    for folder in (tmp_path, tmp_path / "runs", exp):
        assert cli(["collect", "--json", str(folder)]) == 2
        assert not (folder / "report").exists()
    assert capsys.readouterr().err.count("is not a run folder, nothing was written") == 3


def test_checks_agree_with_the_loader(tmp_path, monkeypatch):
    """The loader slices a split, then filters the slice: a filtered percent slice may hold every
    row of the filter, so it is not refused on the filtered count; `~` in a profile path is expanded
    as the HF libraries do."""
    from launch.core.profile import load_profile
    from launch.core.schema import ConfigError
    from launch.core.spec import load_spec
    # 15,000 rows, <= 12,500 kept
    cfg = mut(IMDB, lambda c: c["data"]["positive"].update(split="train[:60%]"))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # accepted: the slice can hold 10,000 positives
    assert max(load_spec(path).volumes.positive) == 10000
    cfg["data"]["positive"]["split"] = "train[:30%]"   # 7,500 rows: never 10,000 positives
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    assert e.value.field == "data.positive" and "has 7500" in e.value.line()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "p.yaml").write_text("name: p\nhf_home: ~/hf\nruns_root: ~/runs\nbinds: [~/data]\n")
    prof = load_profile(tmp_path / "p.yaml")
    assert (prof.hf_home, prof.runs_root, prof.binds) == (str(tmp_path / "home" / "hf"),
                                                           str(tmp_path / "home" / "runs"),
                                                           (str(tmp_path / "home" / "data"),))


def test_a_job_that_imported_other_code_than_its_snapshot_stops(tmp_path, monkeypatch, capsys):
    """Inside an image whose own PYTHONPATH won over the job's (or without the runs root bound), a
    cell would run the image's copy of the code under its submission's commit: the worker checks
    what it imported first."""
    monkeypatch.setenv("ELASTICA_CODE", str(tmp_path / "code" / "0123456789ab"))
    assert cli(["run-cell", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: PYTHONPATH: this job imported the code in ")
    # the checkout itself: the check passes, the folder is no cell
    monkeypatch.setenv("ELASTICA_CODE", str(ROOT))
    assert cli(["run-cell", str(tmp_path)]) == 2 and "has no job.json" in capsys.readouterr().err


def test_a_source_that_fails_to_load_is_not_called_bad_input(exp_dir, tmp_path, monkeypatch):
    """What a config can fix (a path or hub id that is not there) is a ConfigError, exit 2; a source
    that is there and fails to load is a LoadError with its real cause, exit 3: torn weights (read
    by safetensors, in a subprocess through the worker) and an out-of-memory error raised inside
    from_pretrained (emulated: it is what a GPU raises there) are never "check the path or hub id".
    """
    import shutil
    import subprocess
    import sys

    import torch
    import transformers

    from launch.core.jobs import EXIT_LOAD, LoadError, ModelRef
    from launch.core.schema import ConfigError
    from train.models import load_model, load_tokenizer
    torn = tmp_path / "torn"
    shutil.copytree(exp_dir / "models" / "gpt2", torn)
    weights = torn / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    tok = load_tokenizer(ModelRef(path=str(torn)), tmp_path)
    with pytest.raises(LoadError) as e:
        load_model(ModelRef(path=str(torn)), tmp_path, tok, seed=0)
    assert e.value.line().startswith(f"error: cannot load a model from {torn}: ") and "\n" not in e.value.line()
    with pytest.raises(ConfigError) as missing:
        load_model(ModelRef(path=str(tmp_path / "nope")), tmp_path, tok, seed=0)
    assert missing.value.field == "model.path" and "check the path or hub id" in missing.value.line()

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", oom)
    with pytest.raises(LoadError) as e:
        load_model(ModelRef(path=str(exp_dir / "models" / "gpt2")), tmp_path, tok, seed=0)
    assert "OutOfMemoryError: CUDA out of memory" in e.value.line() and "check the path" not in e.value.line()
    monkeypatch.undo()
    # through the worker: a cell whose checkpoint is torn fails with exit 3 and that one line in its
    # FAILED record
    from launch.core.jobs import EvalJob
    from launch.core.spec import Data, Eval, Scorer
    from tests.conftest import write_cell
    (tmp_path / "world").symlink_to(exp_dir / "world")
    job = EvalJob(model=ModelRef(path=str(torn)), base=ModelRef(path=str(torn)), prompts=Data(
        path="@world/data/prompts.jsonl"),
                  eval=Eval(prompts=4, max_new_tokens=2, scorer=Scorer(kind="rule")),
        template="plain")
    cell = write_cell(tmp_path / "eval" / "torn-1", job, kind="eval", stage="eval")
    r = subprocess.run([sys.executable, "-m", "launch", "run-cells", str(cell)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == EXIT_LOAD, r.stdout + r.stderr
    failed = json.loads((cell / "FAILED").read_text())
    assert failed["rc"] == EXIT_LOAD and failed["error"].startswith(f"error: cannot load a model from {torn}")
