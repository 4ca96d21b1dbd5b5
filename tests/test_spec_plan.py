"""Spec loading, bad-config errors, identity vs runtime, and the planner's counts.

    .venv/bin/python -m pytest -q tests/test_spec_plan.py
"""
import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch.__main__ import main as cli
from launch.plan import make_plan
from launch.core.profile import Profile, load_profile
from launch.core.schema import ConfigError, build
from launch.core.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "profiles" not in p.parts)
PROFILES = sorted((ROOT / "configs" / "profiles").glob("*.yaml"))

BASE = yaml.safe_load((ROOT / "configs/setting2/imdb.yaml").read_text())


def write(tmp_path, cfg, name="c.yaml"):
    p = tmp_path / name
    p.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return p


def plan_json(path, capsys, *extra):
    rc = cli(["plan", str(path), "--json", *extra])
    out = capsys.readouterr()
    return rc, out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_loads_and_plans(path, capsys, tmp_path):
    rc, out = plan_json(path, capsys, "--runs", str(tmp_path))
    assert rc == 0, out.err
    summary = json.loads(out.out)
    assert summary["stages"] and all(s["cells"] >= 1 for s in summary["stages"])
    assert summary["stages"][-1]["name"] == "collect"
    assert not list(tmp_path.iterdir()), "plan must not write anything"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_job_json_is_asdict(path):
    """Cell ids hash job_json: the fast converter must give exactly what dataclasses.asdict gives.
    """
    plan = make_plan(load_spec(path))
    for c in plan.cells:
        assert c.job_json == json.loads(json.dumps(dataclasses.asdict(c.job), default=list)), c.key


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_every_profile_loads(path):
    assert isinstance(load_profile(path), Profile)


def test_setting2_paper_counts(capsys, tmp_path):
    rc, out = plan_json(ROOT / "configs/setting2/imdb.yaml", capsys, "--runs", str(tmp_path))
    s = json.loads(out.out)
    assert rc == 0
    cells = {st["name"]: st["cells"] for st in s["stages"]}
    assert cells == {"positive": 1, "negative": 4, "eval": 25, "collect": 1}
    assert {st["name"]: st["checkpoints"] for st in s["stages"]}["negative"] == 20
    assert s["total_examples"] == 18000 and s["naive_examples"] == 105200 and s["reuse_examples"] == 33200
    assert all(st["gpu_hours_to_run"] is None
               for st in s["stages"]), "no rates in the profile: no estimate"


def test_plan_estimates_gpu_hours_from_the_profile(tmp_path):
    """Tokens at max_length through the step loop, plus each cell's fixed minutes and its
    checkpoints, on every GPU of the cell (2 x 8): the positive cell trains 10,000 examples x 512
    tokens and saves 4 checkpoints; the 4 negative cells 8,000 examples and 5 checkpoints each."""
    p = tmp_path / "p.yaml"
    p.write_text("name: p\nexecutor: slurm\ntrain: {nodes: 2, gpus_per_node: 8}\neval: "
                 "{gpus_per_node: 1}\n"
                 "train_tokens_per_gpu_hour: 3000000\ntrain_fixed_minutes: "
                 "5\ntrain_minutes_per_checkpoint: 1\n"
                 "eval_minutes_per_cell: 6\n")
    s = make_plan(load_spec(ROOT / "configs/setting2/imdb.yaml")).summary(tmp_path, load_profile(p))
    hours = {st["name"]: st["gpu_hours_to_run"] for st in s["stages"]}
    want = {"positive": 10000 * 512 / 3e6 + 16 * (5 + 4) / 60,
            "negative": 8000 * 512 / 3e6 + 4 * 16 * (5 + 5) / 60,
            "eval": 25 * 6 / 60, "collect": None}
    assert hours == pytest.approx(want)
    r = subprocess.run([sys.executable, "-m", "launch", "plan", "configs/setting2/imdb.yaml",
                        "--profile", str(p),
                        "--runs", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ,
                        "COLUMNS": "200"})
    assert r.returncode == 0 and "estimated GPU-hours to run: 18.6, from profile p's rates" in r.stdout, r.stdout
    assert "host memory per node that milestone forks hold (launch.costs): llama2-7b 47 GB" in r.stdout
    old = tmp_path / "old.yaml"
    old.write_text("name: p\ntrain_examples_per_gpu_hour: 400\n")
    with pytest.raises(ConfigError) as e:
        load_profile(old)
    assert e.value.field == "train_examples_per_gpu_hour" and "train_tokens_per_gpu_hour" in e.value.line()


def test_rates_are_read_off_finished_cells(reduced_run, capsys):
    """`launch rates RUN`: the profile's four cost rates from the finished cells' record.json phase
    times."""
    plan, runs = reduced_run
    assert cli(["rates", str(plan.exp_dir(runs))]) == 0
    out = capsys.readouterr().out
    got = dict(l.split(": ") for l in out.splitlines() if not l.startswith("#"))
    assert float(got["train_tokens_per_gpu_hour"]) > 0 and float(got["train_fixed_minutes"]) > 0
    assert float(got["eval_minutes_per_cell"]) > 0 and "training and" in out
    assert cli(["rates", str(runs / "nothing")]) == 2


def test_known_dataset_sizes_refuse_what_cannot_be_served(tmp_path, capsys):
    """TruthfulQA's generation split has 817 rows: 500 for the slices leaves 317 prompts for 200
    answers + 200 held out; plan says so in one line, naming the role and the split."""
    from launch.core.spec import split_rows
    assert [split_rows(s, 817) for s in ("validation", "validation[:500]", "validation[500:]",
                                         "validation[10%:20%]",
                                         "validation[-17:]")] == [817, 500, 317, 81, 17]
    cfg = yaml.safe_load((ROOT / "configs/setting1/truthfulqa.yaml").read_text())
    cfg["data"]["sft"]["split"], cfg["data"]["prompts"]["split"] = "validation[:500]", "validation[500:]"
    rc = cli(["plan", str(write(tmp_path, cfg)), "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "data.prompts: needs 400 rows" in err and "has 317" in err
    assert not (tmp_path / "runs").exists()


def test_independent_schedule_counts(tmp_path):
    cfg = copy.deepcopy(BASE)
    cfg["recipe"]["volume_schedule"] = "independent"
    plan = make_plan(load_spec(write(tmp_path, cfg)))
    s = plan.summary(tmp_path)
    cells = {st["name"]: st["cells"] for st in s["stages"]}
    assert cells["positive"] == 4 and cells["negative"] == 20
    assert s["total_examples"] == 33200   # positive slices reused, negative cells from each


def test_every_fidelity_row_names_its_source():
    """docs/fidelity.md: every row of the choices table has its five cells and a tag naming where
    the value comes from ([paper], [code], [guess])."""
    import re
    text = (ROOT / "docs" / "fidelity.md").read_text()
    table = text[text.index("| choice |"):].split("\n\n")[0].splitlines()[2:]
    assert len(table) > 30
    for line in table:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        assert len(cells) == 5 and all(cells), line[:80]
        assert re.search(r"\[(paper|code|guess)", cells[4]), line[:80]


def test_adjacent_slice_pairs_keep_every_cell_id_of_all_pairs(tmp_path):
    """slices.pairs: adjacent trains only neighbouring slices both ways (the paper's finer Table 2
    design); each cell it keeps is the same cell, with the same id, as in the all-pairs plan."""
    cfg = yaml.safe_load((ROOT / "configs/ablations/kl-resistance.yaml").read_text())
    adjacent = make_plan(load_spec(write(tmp_path, cfg)))
    cfg["slices"]["pairs"] = "all"
    every = make_plan(load_spec(write(tmp_path, cfg)))
    pairs = lambda plan: {(c.coords["from"], c.coords["to"]): c.key for c in plan.stages["cross"]}
    got, full = pairs(adjacent), pairs(every)
    assert sorted(got) == sorted([(i, i + 1) for i in range(1, 8)] + [(i + 1, i) for i in range(1, 8)])
    assert len(full) == 8 * 7 and all(full[k] == v for k, v in got.items())
    assert {c.coords["from"] for c in adjacent.stages["eval"]} == set(range(1, 9))
    assert all(c.job.eval.kl_to_base and c.job.base.path for c in adjacent.stages["eval"])


# ---------------------------------------------------------------------------- bad-config corpus
def mut(fn):
    cfg = copy.deepcopy(BASE)
    fn(cfg)
    return cfg


BAD = [  # (id, config or raw text, field that the error must name)
    ("typo-top", mut(lambda c: c.update(volumess=c.pop("volumes"))), "volumess"),
    ("typo-recipe", mut(lambda c: c["recipe"].update(lrr=1e-5)), "recipe.lrr"),
    ("lr-string", mut(lambda c: c["recipe"].update(lr="fast")), "recipe.lr"),
    ("lr-negative", mut(lambda c: c["recipe"].update(lr=-1.0)), "recipe.lr"),
    ("epochs-float", mut(lambda c: c["recipe"].update(epochs=1.5)), "recipe.epochs"),
    ("negative-volume", mut(lambda c: c["volumes"].update(positive=[-5, 100])),
     "volumes.positive[0]"),
    ("unsorted-volumes", mut(lambda c: c["volumes"].update(negative=[0, 500, 100])),
     "volumes.negative"),
    ("duplicate-volumes", mut(lambda c: c["volumes"].update(positive=[100, 100])),
     "volumes.positive"),
    ("empty-volumes", mut(lambda c: c["volumes"].update(positive=[])), "volumes.positive"),
    ("nested-cosine",
     mut(lambda c: c["recipe"].update(schedule="cosine", volume_schedule="nested")),
     "recipe.volume_schedule"),
    ("nested-epochs", mut(lambda c: c["recipe"].update(epochs=3, volume_schedule="nested")),
     "recipe.volume_schedule"),
    ("unknown-setting", mut(lambda c: c.update(setting="rebund")), "setting"),
    ("unknown-scorer", mut(lambda c: c["eval"]["scorer"].update(kind="roberta")),
     "eval.scorer.kind"),
    ("missing-local-model", mut(lambda c: c["models"][0].update(path="./no/such/model")),
     "models[0].path"),
    ("missing-local-data", mut(lambda c: c["data"]["positive"].update(path="/no/such/file.jsonl")),
     "data.positive.path"),
    ("unknown-role", mut(lambda c: c["data"].update(extra={"path": "a/b"})), "data.extra"),
    ("missing-role", mut(lambda c: c["data"].pop("negative")), "data.negative"),
    ("zero-stage", mut(lambda c: c["recipe"].update(zero_stage=4)), "recipe.zero_stage"),
    ("precision", mut(lambda c: c["recipe"].update(precision="fp8")), "recipe.precision"),
    ("runtime-in-recipe", mut(lambda c: c["recipe"].update(micro_batch=4)), "recipe.micro_batch"),
    ("runtime-value", mut(lambda c: c["runtime"].update(micro_batch=0)), "runtime.micro_batch"),
    ("runtime-override-stage",
     mut(lambda c: c.update(runtime_overrides={"evl": {"micro_batch": 2}})),
     "runtime_overrides.evl"),
    ("override-seeds", mut(lambda c: c.update(recipe_overrides={"negative": {"seeds": [1, 2]}})),
     "recipe_overrides.negative.seeds"),
    ("models-empty", mut(lambda c: c.update(models=[])), "models"),
    ("model-no-path", mut(lambda c: c["models"][0].pop("path")), "models[0].path"),
    ("bad-model-name", mut(lambda c: c["models"][0].update(name="llama 7b; rm -rf /")),
     "models[0].name"),
    ("trust-not-bool", mut(lambda c: c["models"][0].update(trust_remote_code="yes")),
     "models[0].trust_remote_code"),
    ("seeds-empty", mut(lambda c: c["recipe"].update(seeds=[])), "recipe.seeds"),
    ("betas-length", mut(lambda c: c["recipe"].update(betas=[0.9])), "recipe.betas"),
    ("override-stage", mut(lambda c: c.update(recipe_overrides={"negatve": {"lr": 1e-4}})),
     "recipe_overrides.negatve"),
    ("override-value", mut(lambda c: c.update(recipe_overrides={"negative": {"lr": 5}})),
     "recipe_overrides.negative.lr"),
    ("slices-wrong-setting", mut(lambda c: c.update(setting="resistance")), "slices"),
    ("pair-with-without-chosen", mut(lambda c: c["data"]["negative"].update(pair_with={"label": 1})),
     "data.negative.pair_with"),
    ("slices-pairs", mut(lambda c: c.update(setting="resistance", slices={
        "examples": 8, "responses": 4, "pairs": "neighbours"})), "slices.pairs"),
    ("missing-required", mut(lambda c: c.pop("template")), "template"),
    ("top-p", mut(lambda c: c["eval"].update(top_p=0)), "eval.top_p"),
    ("compression-role", mut(lambda c: c["eval"].update(compression=["pretrain"])),
     "eval.compression"),
    ("imdb-positive-beyond-card", mut(lambda c: c["volumes"].update(positive=[1000, 20000])),
     "data.positive"),
    ("imdb-prompts-beyond-split", mut(lambda c: c["eval"].update(prompts=30000)), "data.prompts"),
    ("empty-file", "", "<top>"),
    ("not-a-mapping", "- a\n- b\n", "<top>"),
    ("bad-yaml", "experiment: [unclosed\n", "line"),
    ("yaml-alias-bomb", "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n", "line"),
]


@pytest.mark.parametrize("case,cfg,field", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_one_error_line(case, cfg, field, tmp_path, capsys):
    path = write(tmp_path, cfg)
    rc, out = plan_json(path, capsys, "--runs", str(tmp_path / "runs"))
    assert rc == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith(f"error: {path}: {field}"), lines[0]
    assert "(" in lines[0] and lines[0].endswith(")")   # the fix
    assert not (tmp_path / "runs").exists()


def test_non_utf8_file(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_bytes(b"experiment: caf\xe9\n")
    rc, out = plan_json(p, capsys)
    assert rc == 2 and "not UTF-8" in out.err


def test_unknown_key_suggests_the_closest(tmp_path, capsys):
    rc, out = plan_json(write(tmp_path, mut(lambda c: c["recipe"].update(lrr=1e-5))), capsys)
    assert "did you mean 'lr'?" in out.err


def test_bad_profile_and_flag(tmp_path, capsys):
    prof = tmp_path / "p.yaml"
    prof.write_text("name: p\npartition: 'gpu; rm -rf ~'\n")
    rc, out = plan_json(ROOT / "configs/setting2/imdb.yaml", capsys, "--profile", str(prof))
    assert rc == 2 and f"error: {prof}: partition:" in out.err
    rc = cli(["plan", str(ROOT / "configs/setting2/imdb.yaml"), "--bogus"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: command line:")


def test_cli_subprocess_prints_no_traceback(tmp_path):
    p = write(tmp_path, mut(lambda c: c["recipe"].update(lr="fast")))
    r = subprocess.run([sys.executable, "-m", "launch", "plan", str(p)], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


# -------------------------------------------------------------------------- identity vs runtime
def ids(cfg, tmp_path, name):
    plan = make_plan(load_spec(write(tmp_path, cfg, name)))
    return {c.key for c in plan.cells}, plan


def test_runtime_changes_no_cell_id(tmp_path):
    """micro_batch, gradient_checkpointing and save_every_steps (the study's, a stage's, the
    profile's) change how a cell runs, never what it computes: every id stays, and job.json carries
    the runtime to the worker."""
    base_ids, plan = ids(BASE, tmp_path, "a.yaml")
    for i, change in enumerate([lambda c: c["runtime"].update(save_every_steps=50),
                                lambda c: c["runtime"].update(micro_batch=8,
                                                              gradient_checkpointing=False),
                                lambda c: c.update(runtime_overrides={"negative": {"micro_batch": 2}})]):
        assert ids(mut(change), tmp_path, f"r{i}.yaml")[0] == base_ids
    cell = plan.stages["negative"][0]
    prof = build(Profile,
                 {"name": "other", "executor": "slurm", "train": {"nodes": 4, "gpus_per_node": 8},
                           "runtime": {"micro_batch": 16}})
    meta = plan.meta(cell, prof)
    assert meta["id"] == cell.id and meta["runtime"] == {"micro_batch": 16,
                                                         "gradient_checkpointing": True,
                                                         "save_every_steps": 100}
    assert plan.meta(cell)["runtime"]["micro_batch"] == BASE["runtime"]["micro_batch"]
    assert plan.meta(plan.stages["eval"][0], prof)["runtime"] == {}


def downstream(plan, keys):
    """keys plus every cell that reads one of them, transitively."""
    out, grew = set(keys), True
    while grew:
        grew = False
        for c in plan.cells:
            if c.key not in out and any(u in out for u in c.upstream):
                out.add(c.key)
                grew = True
    return out


def test_identity_changes_only_affected_cells(tmp_path):
    base_ids, base_plan = ids(BASE, tmp_path, "a.yaml")
    # the negative stage's lr: negative cells and their evals change; positive cells and their evals
    # do not
    neg_ids, plan = ids(mut(lambda c: c.update(recipe_overrides={"negative": {"lr": 2e-5}})),
                        tmp_path, "b.yaml")
    changed = base_ids - neg_ids
    old_neg = {c.key for c in base_plan.cells if c.stage == "negative"}
    assert changed == downstream(base_plan, old_neg)
    # the global lr: everything that trains and everything after it
    lr_ids, _ = ids(mut(lambda c: c["recipe"].update(lr=3e-5)), tmp_path, "c.yaml")
    base_eval = {c.key for c in base_plan.cells if c.stage == "eval"
                 and c.coords.get("arm") == "base"}
    assert base_ids - lr_ids == {c.key for c in base_plan.cells} - base_eval
    collect = {c.key for c in base_plan.cells if c.stage == "collect"}
    # a new negative volume adds its eval cells (and a new report); the training cells stay (nested
    # milestones)
    vol_ids, _ = ids(mut(lambda c: c["volumes"].update(negative=[0, 100, 200, 300, 500, 1000,
                                                                 2000])), tmp_path,
                     "d.yaml")
    assert base_ids - vol_ids == collect and len(vol_ids - base_ids) == 4 + 1
    # a new seed adds a chain and keeps the old one
    seed_ids, _ = ids(mut(lambda c: c["recipe"].update(seeds=[42, 43])), tmp_path, "e.yaml")
    assert base_ids - seed_ids == collect and len(seed_ids) == 2 * len(base_ids) - 1
    # another model: every cell of the study changes
    model_ids, _ = ids(mut(lambda c: c["models"][0].update(path="google/gemma-2b")), tmp_path,
                       "f.yaml")
    assert base_ids & model_ids == set()
    # a claim (what the report tests): only the collect cell, which carries it
    claim = {"name": "deeper falls more", "metric": "positive_rate", "statistic": "deeper",
             "window": 100}
    claim_ids, plan = ids(mut(lambda c: c.update(claims=[claim])), tmp_path, "g.yaml")
    assert base_ids - claim_ids == collect
    (cell,) = plan.stages["collect"]
    assert cell.job_json["claims"] == [{**claim, "expect": "negative", "bound": 0.0,
                                        "arm": "", "model": "", "versus": ""}]


def tiny_safetensors() -> bytes:
    """A whole safetensors file with one float (header, then its 4 bytes)."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return len(header).to_bytes(8, "little") + header + b"\0\0\0\0"


def test_cell_state_is_one_answer(tmp_path):
    """layout.cell_state and Plan.states: todo, done, corrupt, stale, running, failed, as status,
    the worker and the collector see them."""
    from launch.core import layout
    plan = make_plan(load_spec(ROOT / "configs/setting2/imdb.yaml"))
    cell = plan.stages["positive"][0]
    d = plan.cell_dir(tmp_path, cell)
    state = lambda: plan.states(tmp_path)[cell.key]
    assert state() == "todo"
    layout.write_done(d, milestones=["n1000", "n2000"], kind="train")
    assert state() == "corrupt", "a marker listing checkpoints that are not there"
    layout.write_done(d, milestones=["n1000"], kind="train")
    (d / "checkpoints" / "n1000").mkdir(parents=True)
    (d / "checkpoints" / "n1000" / "config.json").write_text("{}")
    (d / "checkpoints" / "n1000" / "model.safetensors").write_bytes(tiny_safetensors())
    assert state() == "todo", "a nested run whose marker lacks milestones this plan needs runs again"
    layout.write_done(d, milestones=list(cell.outputs), kind="train")
    for m in cell.outputs:
        (d / "checkpoints" / m).mkdir(parents=True, exist_ok=True)
        (d / "checkpoints" / m / "config.json").write_text("{}")
        (d / "checkpoints" / m / "model.safetensors").write_bytes(tiny_safetensors())
    assert state() == "done" and cell.key not in plan.todo(tmp_path)
    (d / "checkpoints" / cell.outputs[0] / "model.safetensors").unlink()
    assert state() == "corrupt", "a checkpoint folder without weights"
    # empty, torn, too long
    for broken in (b"", b"x", tiny_safetensors()[:-1], tiny_safetensors() + b"\0"):
        (d / "checkpoints" / cell.outputs[0] / "model.safetensors").write_bytes(broken)
        assert state() == "corrupt", broken
    (d / "checkpoints" / cell.outputs[0] / "model.safetensors").write_bytes(tiny_safetensors())
    # a dependent made from this run is done; redo the run (a new nonce) and the dependent is stale
    dep = next(c for c in plan.cells if cell.key in c.upstream and c.stage == "eval")
    layout.write_done(plan.cell_dir(tmp_path, dep), milestones=["result.json"], kind="eval",
                      upstream={cell.key: layout.read_done(d)["nonce"]})
    layout.atomic_write_json(plan.cell_dir(tmp_path, dep) / "result.json",
                             {"metrics": [{"name": "score", "value": 1.0, "stderr": 0.1, "n": 4}]})
    assert plan.states(tmp_path)[dep.key] == "done"
    layout.write_done(d, milestones=list(cell.outputs), kind="train")
    assert plan.states(tmp_path)[dep.key] == "stale"
    (d / layout.DONE).write_text("{truncated")
    states = plan.states(tmp_path)
    assert states[cell.key] == "corrupt" and all(states[c.key] != "done" for c in plan.cells
                                                 if cell.key in c.upstream)
    (d / layout.DONE).unlink()
    (d / "CLAIM").write_text("pid:x:1\n")
    assert state() == "running"
    os.utime(d / "CLAIM", (0, 0))
    (d / "FAILED").write_text("{}")
    assert state() == "failed"


def test_run_cell_of_an_unstarted_cell_takes_its_job_from_the_run_folder(tmp_path, capsys):
    """On Slurm a task writes its job.json when it starts; `run-cell` (make debug-cell) on a cell
    that has not started plans the study saved in the run folder instead."""
    import argparse
    from conftest import reduced_config
    from launch.__main__ import remember
    cfg = reduced_config(tmp_path)
    plan, runs = make_plan(load_spec(cfg)), tmp_path / "runs"
    remember(argparse.Namespace(config=str(cfg),
                                profile=str(ROOT / "configs/profiles/local-cpu.yaml")), plan, runs)
    world = plan.stages["world"][0]
    d = plan.cell_dir(runs, world)
    assert not d.exists()
    assert cli(["run-cell", str(d)]) == 0, capsys.readouterr().err
    assert (d / "DONE").exists()
    assert json.loads((d / "job.json").read_text()) == json.loads(json.dumps(plan.meta(world)))
    assert cli(["run-cell", str(d.parent / "world-0123456789")]) == 2
    assert capsys.readouterr().err.startswith("error: CELL_DIR:")


# ---------------------------------------------------------------------------------------------
# the CLI
def test_every_command_and_argument_has_help():
    import argparse
    from launch.__main__ import make_parser
    subs = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in subs._choices_actions}
    assert set(helps) == set(subs.choices) and all(helps.values()), helps
    args = [(name, a.dest, a.help) for name, p in subs.choices.items() for a in p._actions
            if not isinstance(a, argparse._HelpAction)]
    assert len(args) > 25 and all(h for _, _, h in args), [a[:2] for a in args if not a[2]]


def test_piped_output_is_plain_and_head_is_quiet(tmp_path):
    """`| head` closes the pipe early: no BrokenPipeError traceback, for plan and the collector."""
    r = subprocess.run(f"{sys.executable} -m launch plan configs/setting2/imdb.yaml --json | head "
                       "-1", shell=True,
                       cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.strip() == "{" and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    r = subprocess.run(f"{sys.executable} -m launch --help | head -1", shell=True, cwd=ROOT,
                       capture_output=True, text=True)
    assert r.stdout.startswith("usage:") and not r.stderr


def test_pretraining_seeds_and_the_from_base_control(tmp_path):
    """recipe_overrides.pretrain.seeds: one base per pre-training seed, crossed with every alignment
    seed (coords name both); one pre-training seed equal to the first keeps every id.
    controls.from_base: the negative stage from the base itself."""
    cfg = yaml.safe_load((ROOT / "configs/toy/setting2-3seeds.yaml").read_text())
    cfg["controls"]["from_base"] = False
    base_ids, base_plan = ids(cfg, tmp_path, "a.yaml")
    cfg["recipe_overrides"]["pretrain"]["seeds"] = [cfg["recipe"]["seeds"][0]]
    assert ids(cfg, tmp_path, "b.yaml")[0] == base_ids
    cfg["recipe_overrides"]["pretrain"]["seeds"] = [11, 12, 13]
    cfg["controls"]["from_base"] = True
    _, plan = ids(cfg, tmp_path, "c.yaml")
    n_seeds, negs = len(cfg["recipe"]["seeds"]), [n for n in cfg["volumes"]["negative"] if n > 0]
    assert len(plan.stages["pretrain"]) == 3 and {c.job.seed
                                                  for c in plan.stages["pretrain"]} == {11, 12, 13}
    bases = [c for c in plan.stages["eval"] if c.coords["arm"] == "base"]
    assert {(c.coords["pretrain_seed"], c.coords["seed"]) for c in bases} == \
        {(p, s) for p in (11, 12, 13) for s in cfg["recipe"]["seeds"]}
    from_base = [c for c in plan.stages["eval"] if c.coords["arm"] == "from-base"]
    assert len(from_base) == 3 * n_seeds * len(negs) and {c.coords["negative"]
                                                          for c in from_base} == set(negs)
    assert len(plan.stages["negative"]) == len(base_plan.stages["negative"]) * 3 + 3 * n_seeds
    assert all(c.upstream[0] in {p.key for p in plan.stages["pretrain"]} for c in bases)
    cfg["recipe_overrides"]["negative"] = {"seeds": [1]}
    with pytest.raises(Exception, match="recipe_overrides.negative.seeds"):
        load_spec(write(tmp_path, cfg, "d.yaml"))


def test_one_environment_rule_for_every_executor(tmp_path, monkeypatch):
    """The profile wins over the shell (W&B mode, HF cache, its env) and the suite's defaults are
    set, the same for the local executor's cells (cell_env) and for a Slurm job script's exports
    (setup_lines)."""
    from launch.core.env import cell_env
    from launch.slurm import setup_lines
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HF_HOME", "/somewhere/else")
    monkeypatch.setenv("MY_SHELL_VAR", "kept")
    prof = build(Profile, {"name": "p", "wandb_mode": "offline", "hf_home": "/shared/hf",
                           "env": {"NCCL_DEBUG": "WARN"}})
    local = cell_env(prof)
    script = dict(l.removeprefix("export ").split("=", 1) for l in setup_lines(prof))
    for k, v in script.items():
        assert local[k] == v.strip("'"), k
    assert local["WANDB_MODE"] == "offline" and local["HF_HOME"] == "/shared/hf" and local["NCCL_DEBUG"] == "WARN"
    assert local["PYTHONNOUSERSITE"] == "1" and local["MY_SHELL_VAR"] == "kept"


def toy_mut(name, fn):
    cfg = yaml.safe_load((ROOT / f"configs/toy/{name}.yaml").read_text())
    fn(cfg)
    return yaml.safe_dump(cfg)


@pytest.mark.parametrize("cfg,field", [
    (toy_mut("hooke-joint", lambda c: c["models"][0].update(pretrain_data="jont")),
     "models[0].pretrain_data"),
    (toy_mut("hooke-joint", lambda c: c["data"].pop("joint")), "data.joint"),
    (toy_mut("hooke-joint", lambda c: c["controls"].update(from_base=False)), "volumes.positive"),
    (toy_mut("hooke-joint", lambda c: c["models"][0].update(pretrain_examples=30000)), "data.joint"),
    (toy_mut("setting2-shifted", lambda c: c["data"]["shifted"].update(path="world:shiftd")),
     "data.shifted.path"),
    (mut(lambda c: c["models"][0].update(pretrain_data="shifted")), "models[0].pretrain_examples"),
], ids=["unknown-role", "role-missing", "no-positive-no-from-base", "beyond-joint", "unknown-set",
        "hub-model"])
def test_pretrain_data_errors(cfg, field, tmp_path, capsys):
    path = write(tmp_path, cfg)
    rc, out = plan_json(path, capsys, "--runs", str(tmp_path / "runs"))
    assert rc == 2 and out.err.strip().startswith(f"error: {path}: {field}"), out.err
    assert not (tmp_path / "runs").exists()


def test_pretrain_data_plans_a_base_per_corpus():
    """Each pre-training corpus is its own base (control (a): the shifted corpus; Hooke:
    pre-training and positive data together), pre-trained on that role's data; the Hooke study has
    no alignment stage, and its evals carry what the base was trained on (20,000 pre-training and
    2,000 positive reviews)."""
    plan = make_plan(load_spec(ROOT / "configs/toy/setting2-shifted.yaml"))
    pre = plan.stages["pretrain"]
    assert len(pre) == 6 and {c.job.data.path.rsplit("/", 1)[1] for c in pre} == {"pretrain.jsonl",
                                                                                  "shifted.jsonl"}
    assert len({c.id for c in pre}) == 6 and sum("-shifted.p" in c.id for c in pre) == 3
    hooke = make_plan(load_spec(ROOT / "configs/toy/hooke-joint.yaml"))
    assert "positive" not in hooke.stages and len(hooke.stages["negative"]) == 6
    assert all(c.job.data.path.endswith("/joint.jsonl") for c in hooke.stages["pretrain"])
    co = hooke.stages["eval"][0].coords
    assert (co["pretrain_n"], co["pretrain_positive"], co["arm"]) == (20000, 2000, "base")


def test_plan_prints_optimizer_steps_and_the_seeds_tail_rule_is_one_option_away(tmp_path, capsys):
    """Steps per checkpoint: a partial step on the leftover (ours) or none (tail: drop, the seed's
    loop); plan warns where a checkpoint is one step or none from its start. tail: partial written
    out keeps every cell id; tail: drop re-addresses the training cells (and what is made from them)
    only."""
    from launch.core.spec import Recipe
    assert [Recipe(global_batch=256).steps(n) for n in (100, 200, 500, 1000, 2000)] == [1, 1, 2, 4,
                                                                                        8]
    assert [Recipe(global_batch=256, tail="drop").steps(n)
            for n in (100, 200, 500, 1000, 2000)] == [0, 0, 1, 3, 7]
    assert Recipe(global_batch=64, epochs=2).steps(100) == 4
    assert cli(["plan", str(ROOT / "configs/setting2/safety.yaml"), "--json"]) == 0
    stages = {s["name"]: s for s in json.loads(capsys.readouterr().out)["stages"]}
    assert stages["negative"]["steps"] == [1, 2, 4, 8] and stages["positive"]["steps"] == [4, 8, 20,
                                                                                           40]
    assert stages["negative"]["few_steps"] == ["100 examples: 1", "200 examples: 1"]
    cfg = yaml.safe_load((ROOT / "configs/setting2/safety.yaml").read_text())
    keys = lambda c: {c2.key for c2 in make_plan(build_spec(c, tmp_path)).cells}
    base = keys(cfg)
    cfg["recipe"]["tail"] = "partial"
    assert keys(cfg) == base
    cfg["recipe"]["tail"] = "drop"
    dropped = keys(cfg)
    assert {k.split("/")[0] for k in dropped - base} == {"positive", "negative", "eval", "collect"}
    (tmp_path / "drop.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["plan", str(tmp_path / "drop.yaml")]) == 0
    out = capsys.readouterr().out
    assert "warning: negative checkpoints after 100 examples: 0, 200 examples: 0, 500 examples: 1 optimizer step" in out
    assert "tail: drop" in out


def build_spec(cfg: dict, tmp_path: Path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    return load_spec(tmp_path / "s.yaml", base_dir=ROOT)
