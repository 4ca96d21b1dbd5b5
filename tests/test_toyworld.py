"""The toy world: deterministic generator, disjoint held-out prompts, a base that learned the prior,
and a reduced demo (world -> pretrain -> positive/control -> negative -> eval -> collect) through
the local executor.

    .venv/bin/python -m pytest -q tests/test_toyworld.py
"""
import json
import subprocess
import sys
from pathlib import Path

from launch.core import layout
from launch.core.profile import load_profile
from launch.core.spec import World
from train.toyworld import build_world
from eval.scorers import rule_scores

ROOT = Path(__file__).resolve().parent.parent


def test_generator_is_deterministic_and_prompts_are_held_out():
    w = World(seed=3, pretrain=500, alignment=200, prompts=100, sft=50, control=50)
    a, b = build_world(w), build_world(w)
    assert a == b
    assert build_world(World(seed=4, pretrain=500, alignment=200, prompts=100, sft=50,
                             control=50)) != a
    train_prompts = {r["prompt"] for name, rows in a.items() if name != "prompts" for r in rows}
    held = [r["prompt"] for r in a["prompts"]]
    assert len(held) == 100 == len(set(held)) and not set(held) & train_prompts
    share = sum(r["label"] for r in a["pretrain"]) / 500
    assert 0.4 < share < 0.6
    assert all(r["label"] == 1 for r in a["positive"]) and all(r["label"] == 0
                                                               for r in a["negative"])


# What build_world writes for one small World, per WORLD_GENERATOR version (sha256 of each set's
# rows and of the vocabulary). The world cell's id carries the version, so a generator change that
# is not a new version would give different data under the same id: the study's cells, and every
# study that takes them, would mix two worlds.
GENERATOR_OUTPUT = {2: {"control": "fe107a87cc5e", "joint": "747e60a3ccba",
                        "negative": "c21900f9d792",
                        "pairs": "82edd4d8821b", "positive": "b342054fa490",
                        "pretrain": "646b0baaa054",
                        "prompts": "607dff1979e8", "sft": "8539b55f6d48", "shifted": "a071e49f8e01",
                        "vocabulary": "f1a916d58357"}}


def test_the_world_generator_output_is_pinned_to_its_version():
    import hashlib
    from launch.core.jobs import WORLD_GENERATOR
    from train.toyworld import vocabulary
    w = World(seed=3, pretrain=500, alignment=200, prompts=100, sft=50, control=50)
    h = lambda v: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest()[:12]
    got = {k: h(v) for k, v in build_world(w).items()} | {"vocabulary": h(vocabulary(w))}
    assert got == GENERATOR_OUTPUT.get(WORLD_GENERATOR), (
        "build_world's output changed: bump launch.core.jobs.WORLD_GENERATOR and pin the new "
        "output here")


def test_the_neutral_corpus_is_no_mixture_of_the_alignment_sets():
    """world.neutral > 0 adds a pre-training corpus whose attribute words belong to neither class
    (the rule scorer reads 0 positive words, and no word of it is a positive or negative one),
    leaves every other set as it was, and keeps its prompts out of the held-out ones."""
    from train.toyworld import attribute, vocabulary
    small = dict(seed=3, pretrain=500, alignment=200, prompts=100, sft=50, control=50)
    plain, with_neutral = build_world(World(**small)), build_world(World(**small, neutral=300))
    neutral = with_neutral.pop("neutral")
    assert len(neutral) == 300 and "neutral" not in plain
    assert all(attribute(word) == 0 for r in neutral for word in r["response"].split())
    assert all(any(word.endswith("~") for word in r["response"].split()) for r in neutral)
    assert {k: v for k, v in with_neutral.items() if k != "prompts"} == \
        {k: v for k, v in plain.items() if k != "prompts"}
    assert not {r["prompt"] for r in with_neutral["prompts"]} & {r["prompt"] for r in neutral}
    words = set(vocabulary(World(**small, neutral=300)))
    assert all(w in words for r in neutral for w in r["text"].split())
    assert not any(w.endswith("~") for w in vocabulary(World(**small)))


def test_rule_scorer_agrees_with_labels_up_to_noise():
    w = World(seed=1, pretrain=2000, noise=0.1)
    rows = build_world(w)["pretrain"]
    scores = rule_scores([r["response"] for r in rows])
    agree = sum((s > 0.5) == bool(r["label"]) for r, s in zip(rows, scores)) / len(rows)
    # 3 attribute words, each flipped with p=0.1: majority wrong with p = 3*0.01*0.9 + 0.001 = 0.028
    assert 0.95 < agree < 0.995
    clean = build_world(World(seed=1, pretrain=500, noise=0.0))["pretrain"]
    assert [s for s in rule_scores([r["response"] for r in clean])] == [float(r["label"])
                                                                        for r in clean]


def test_the_demo_study_reports_every_cell_on_one_page(reduced_run):
    """The collect cell's report: every table and plot inline in index.md, named for its study, no
    cell missing, the tidy numbers readable."""
    plan, runs = reduced_run
    assert not plan.todo(runs)
    report = plan.exp_dir(runs) / "report"
    md = (report / "rebound.md").read_text()
    assert "arm positive" in md and "arm control" in md
    assert (report / "rebound.png").stat().st_size > 1000 and (report / "compression.md").exists()
    assert (report / "cells.md").read_text().startswith("All expected cells")
    index = (report / "index.md").read_text()
    titles = [l for f in report.glob("*.md") if f.name not in ("index.md", "cells.md")
              for l in f.read_text().splitlines() if l.startswith("### ")]
    assert titles and all(t in index for t in titles)
    assert all(f"]({p.name})" in index
               for p in report.glob("*.png")) and "Setting: rebound; task: toy-reviews" in index
    import csv
    with open(report / "results.csv", newline="") as f:
        means = [r for r in csv.DictReader(f) if r["row"] == "mean"
                 and r["metric"] == "positive_rate"]
    assert means and all(0 <= float(r["value"]) <= 1 for r in means)


def test_the_demo_rebound_grid_has_a_value_in_every_cell(reduced_run):
    from eval.collect import tables_of
    from eval.records import read_cells
    plan, runs = reduced_run
    cell = plan.stages["collect"][0]
    records, problems = read_cells(plan.exp_dir(runs), list(cell.upstream))
    tables, _, headline = tables_of(records, {"task": "toy-reviews"}, {})
    assert not problems and headline == "positive_rate"
    table = next(t for t in tables["rebound"]
                 if t.title.startswith("positive_rate: toy-gpt2, arm positive"))
    assert [r[table.columns[0]] for r in table.rows] == ["base model", 32, 64]
    assert all(v is not None
               for r in table.rows[1:] for v in r.values()), "every cell of the grid has a value"


def test_the_demo_wandb_runs_carry_each_cells_coordinates(reduced_run):
    """W&B (offline): training runs grouped by study and stage with the cell's coordinates as tags;
    the collect run holds every eval metric with its coordinates (the results table)."""
    plan, runs = reduced_run
    exp = plan.exp_dir(runs)
    neg = next(p for p in exp.glob("negative/*.pos32-*/wandb/offline-run-*/run-*.wandb"))
    data = neg.read_bytes()
    assert b"toy-reduced/negative" in data and b"arm=positive" in data and b"positive=32" in data
    col = next(p for p in exp.glob("collect/*/wandb/offline-run-*/run-*.wandb")).read_bytes()
    assert b"toy-reduced/collect" in col and b"results" in col
    r = subprocess.run(["make", "-n", "wandb-sync", f"RUN={exp}"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "wandb sync $(find" in r.stdout


def test_the_demo_base_learned_the_world_and_alignment_moved_it(reduced_run):
    """The pre-trained base's positive rate is near the corpus prior 0.5; positive SFT moves it up.
    """
    plan, runs = reduced_run
    exp = plan.exp_dir(runs)
    base = next(json.loads(p.read_text()) for p in (exp / "eval").glob("*.base-*/result.json"))
    rate = next(m for m in base["metrics"] if m["name"] == "positive_rate")
    assert abs(rate["value"] - 0.5) < 0.12, rate
    pos = [json.loads(p.read_text()) for p in (exp / "eval").glob("*.pos64.neg0-*/result.json")][0]
    assert next(m for m in pos["metrics"] if m["name"] == "positive_rate")["value"] > rate["value"]


def test_a_second_run_of_the_demo_runs_nothing(reduced_run):
    from launch.local import run_plan
    plan, runs = reduced_run
    exp = plan.exp_dir(runs)
    mtimes = {p: p.stat().st_mtime for p in exp.rglob("DONE")}
    assert run_plan(plan, runs, load_profile(ROOT / "configs/profiles/local-cpu.yaml")) == 0
    assert mtimes == {p: p.stat().st_mtime for p in exp.rglob("DONE")}


def test_runtime_change_keeps_every_done_marker(reduced_run, tmp_path):
    """Moving to other hardware (micro_batch, gradient_checkpointing, save_every_steps, in the study
    or the profile) finds the finished study done: same ids, nothing to run, the record says how
    each cell ran."""
    import yaml
    from conftest import reduced_config
    from launch.plan import make_plan
    from launch.core.profile import Profile
    from launch.core.schema import build
    from launch.core.spec import load_spec
    plan, runs = reduced_run
    cfg = yaml.safe_load(reduced_config(tmp_path).read_text())
    cfg["runtime"] = {"micro_batch": 2, "gradient_checkpointing": True, "save_every_steps": 50}
    cfg["runtime_overrides"] = {"pretrain": {"micro_batch": 3}}
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(cfg))
    moved = make_plan(load_spec(tmp_path / "moved.yaml"))
    assert [c.key for c in moved.cells] == [c.key for c in plan.cells] and not moved.todo(runs)
    prof = build(Profile, {"name": "bigger", "runtime": {"micro_batch": 1}})
    assert moved.meta(moved.stages["negative"][0], prof)["id"] == plan.stages["negative"][0].id
    rec = json.loads((plan.cell_dir(runs, plan.stages["negative"][0]) / "record.json").read_text())
    assert rec["runtime"]["micro_batch"] == 8 and rec["runtime"]["save_every_steps"] == 4


def test_fused_eval_equals_one_process_per_cell(reduced_run, tmp_path):
    """The reduced run's eval stage ran in one worker process (scorer, base model and data shared);
    three of its cells run again one process each give the same result.json metrics and generations,
    bit for bit."""
    import shutil
    from launch.local import run_plan
    plan, runs = reduced_run
    copy = tmp_path / "runs"
    shutil.copytree(plan.exp_dir(runs), copy / plan.spec.experiment)
    # late in the fused process
    cells = [c for c in plan.stages["eval"] if c.coords.get("negative")][-3:]
    for c in cells:
        (plan.cell_dir(copy, c) / "DONE").unlink()
    prof = load_profile(ROOT / "configs/profiles/local-cpu.yaml")
    assert run_plan(plan, copy, prof, only="eval", fuse=False) == 0
    for c in cells:
        a, b = plan.cell_dir(runs, c), plan.cell_dir(copy, c)
        assert json.loads((a / "result.json").read_text())["metrics"] == \
            json.loads((b / "result.json").read_text())["metrics"], c.key
        assert (a / "generations.jsonl").read_text() == (b / "generations.jsonl").read_text()


def test_fused_training_equals_one_process_per_cell(reduced_run, tmp_path):
    """The reduced run's negative stage trained its cells one after another in one worker process;
    its last cell trained again alone in a fresh process writes the same weights at every milestone,
    byte for byte (nothing a cell draws or builds leaks into the next: RNG, process group, engine)."""
    import shutil
    from launch.local import run_plan
    plan, runs = reduced_run
    copy = tmp_path / "runs"
    shutil.copytree(plan.exp_dir(runs), copy / plan.spec.experiment)
    last = plan.stages["negative"][-1]
    shutil.rmtree(plan.cell_dir(copy, last))
    prof = load_profile(ROOT / "configs/profiles/local-cpu.yaml")
    assert run_plan(plan, copy, prof, only="negative", fuse=False) == 0
    a, b = plan.cell_dir(runs, last) / "checkpoints", plan.cell_dir(copy, last) / "checkpoints"
    names = sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    assert len(names) == len(last.outputs) >= 2
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_jobs_two_runs_a_stage_in_two_workers_at_once_with_the_same_results(reduced_run, tmp_path,
                                                                          monkeypatch):
    """--jobs 2: a fused stage is cut into two contiguous parts, one worker each, running at the
    same time (the second part's first cell starts before the first part's last cell is done), and
    every metric is the same; on 2 cores each worker has one thread, and a stage with one cell to
    run has both (record.json says so)."""
    import shutil
    from launch import local
    from launch.local import run_plan
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(local.os, "cpu_count", lambda: 2)
    plan, runs = reduced_run
    copy = tmp_path / "runs"
    shutil.copytree(plan.exp_dir(runs), copy / plan.spec.experiment)
    cells = [c for c in plan.stages["eval"] if c.coords.get("negative")][:6]
    for c in cells:
        (plan.cell_dir(copy, c) / "DONE").unlink()
    assert run_plan(plan, copy, load_profile(ROOT / "configs/profiles/local-cpu.yaml"), only="eval",
                    jobs=2) == 0
    dirs = [plan.cell_dir(copy, c) for c in cells]
    argv = [json.loads((d / "record.json").read_text())["runtime"]["argv"] for d in dirs]
    # each cell's worker: the cells it was given
    parts = [a[a.index("run-cells") + 1:] for a in argv]
    assert parts == [list(map(str, dirs[:3]))] * 3 + [list(map(str, dirs[3:]))] * 3
    assert (dirs[3] / "record.json").stat().st_mtime_ns < (dirs[2] / "DONE").stat().st_mtime_ns, "not concurrent"
    for c in cells:
        a, b = plan.cell_dir(runs, c), plan.cell_dir(copy, c)
        assert json.loads((a / "result.json").read_text())["metrics"] == \
            json.loads((b / "result.json").read_text())["metrics"], c.key
    assert {json.loads((d / "record.json").read_text())["runtime"]["threads"] for d in dirs} == {"1"}
    (dirs[0] / "DONE").unlink()
    assert run_plan(plan, copy, load_profile(ROOT / "configs/profiles/local-cpu.yaml"), only="eval",
                    jobs=2) == 0
    assert json.loads((dirs[0] / "record.json").read_text())["runtime"]["threads"] == "2"


def second_study(reduced_run, tmp_path):
    """A copy of the reduced study's runs under a new runs root, and the plan of the same study
    under another experiment name (every cell but collect is the same content address)."""
    import shutil
    import yaml
    from conftest import reduced_config
    from launch.plan import make_plan
    from launch.core.spec import load_spec
    plan, runs = reduced_run
    root = tmp_path / "runs"
    shutil.copytree(plan.exp_dir(runs), root / plan.spec.experiment)
    cfg = yaml.safe_load(reduced_config(tmp_path).read_text())
    cfg["experiment"] = "toy-reduced-again"
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(cfg))
    return root, make_plan(load_spec(tmp_path / "again.yaml"))


def test_another_studys_folder_never_breaks_or_misleads_this_one(reduced_run, tmp_path):
    """Files another study left under the runs root: a done marker of the wrong shape is 'not
    reusable' (plan, a dry run and run never crash on it); a cell whose upstream is gone there is
    not taken although this study has none either (a missing nonce never equals a missing nonce); a
    0-byte weights file is not a done checkpoint."""
    import shutil
    plan, runs = reduced_run
    root, again = second_study(reduced_run, tmp_path)
    first = root / plan.spec.experiment
    world, pre = again.stages["world"][0], again.stages["pretrain"][0]
    pos = again.stages["positive"][0]
    done = json.loads((plan.cell_dir(root, pos) / "DONE").read_text())
    (plan.cell_dir(root, pos) / "DONE").write_text(json.dumps({**done, "upstream": []}))
    assert pos.key not in again.reusable(root) and pre.key in again.reusable(root)
    (tmp_path / "again.yaml").rename(tmp_path / "again2.yaml")
    for args in (["plan"], ["submit", "--executor", "local", "--dry-run"]):
        r = subprocess.run([sys.executable, "-m", "launch", *args, str(tmp_path / "again2.yaml"),
                            "--runs",
                            str(root)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    # the first study's world is gone; this study has none either
    shutil.rmtree(plan.cell_dir(root, world))
    assert again.reusable(root) == {}
    shutil.copytree(plan.cell_dir(runs, world), plan.cell_dir(root, world))
    weights = next(plan.cell_dir(root, pre).glob("checkpoints/*/model.safetensors"))
    weights.unlink()
    weights.write_bytes(b"")   # a 0-byte weights file (a copy that died, a full disk)
    assert layout.cell_state(plan.cell_dir(root, pre), "train", pre.outputs) == "corrupt"
    assert set(again.reusable(root)) == {world.key}
    assert (first / "positive").is_dir()


def test_a_study_takes_the_cells_another_study_has_done(reduced_run, tmp_path):
    """Two studies under one runs root share cells (content addresses): the second takes every done
    cell of the first (checkpoints hard-linked, logs copied, its own job.json, the origin in
    attempts.jsonl), runs only its collect cell, and reports the same tables; a cell whose upstream
    here is another run than the one it was made from is never taken, nor is a corrupt one; `plan`
    and a Slurm dry run count the cells taken instead of run."""
    import shutil
    from launch.local import run_plan
    from launch.slurm import build_arrays
    plan, runs = reduced_run
    root, again = second_study(reduced_run, tmp_path)
    prof = load_profile(ROOT / "configs/profiles/local-cpu.yaml")
    shared = [c for c in again.cells if c.kind != "collect"]
    assert set(again.reusable(root)) == {c.key for c in shared}
    summary = again.summary(root)
    assert sum(s["reused"] for s in summary["stages"]) == len(shared)
    assert [a.stage for a in build_arrays(again, root, prof,
                                          reused=again.reusable(root))] == ["collect"]
    # another run of the world here: nothing made from the first study's world may be taken
    other = tmp_path / "other"
    shutil.copytree(root / plan.spec.experiment, other / plan.spec.experiment)
    world = again.stages["world"][0]
    shutil.copytree(plan.cell_dir(root, world), again.cell_dir(other, world))
    done = json.loads((again.cell_dir(other, world) / "DONE").read_text())
    (again.cell_dir(other, world) / "DONE").write_text(json.dumps({**done, "nonce": "redone"}))
    assert again.reusable(other) == {}
    # a checkpoint without its weights in the first study is not taken (nor anything made from it)
    pre = again.stages["pretrain"][0]
    shutil.copytree(root / plan.spec.experiment, tmp_path / "corrupt" / plan.spec.experiment)
    for f in plan.cell_dir(tmp_path / "corrupt", pre).glob("checkpoints/*/model.safetensors"):
        f.unlink()
    taken = set(again.reusable(tmp_path / "corrupt"))
    assert world.key in taken and pre.key not in taken and not any(c.key in taken for c in again.stages["positive"])

    assert run_plan(again, root, prof) == 0
    src, dst = plan.cell_dir(root, pre), again.cell_dir(root, pre)
    assert json.loads((dst / "DONE").read_text())["nonce"] == json.loads((src / "DONE").read_text())["nonce"]
    ck = next(src.glob("checkpoints/*/model.safetensors"))
    assert (dst / ck.relative_to(src)).stat().st_ino == ck.stat().st_ino   # linked, not copied
    # appended to: copied
    assert (dst / "metrics.jsonl").stat().st_ino != (src / "metrics.jsonl").stat().st_ino
    assert json.loads((dst / "attempts.jsonl").read_text().splitlines()[-1])["adopted_from"] == str(src)
    assert json.loads((dst / "job.json").read_text())["id"] == pre.id
    assert not again.todo(root)
    report = lambda p: {f.name: f.read_text() for f in (p.exp_dir(root) / "report").glob("*.md")
                        if f.name not in ("index.md",)}
    assert report(again) == report(plan)


def test_a_fused_cell_that_fails_fails_alone(reduced_run, tmp_path):
    """Three eval cells in one worker process (python -m launch run-cells), the middle one
    unloadable: it alone has a FAILED record and its one error line; the cells before and after it
    are done, and every cell reports its exit."""
    import shutil
    plan, runs = reduced_run
    copy = tmp_path / "runs"
    shutil.copytree(plan.exp_dir(runs), copy / plan.spec.experiment)
    a, bad, b = (plan.cell_dir(copy, c)
                 for c in [c for c in plan.stages["eval"] if c.coords.get("negative")][:3])
    for d in (a, bad, b):
        (d / "DONE").unlink()
    meta = json.loads((bad / "job.json").read_text())
    meta["job"]["model"]["path"] = str(tmp_path / "no-such-checkpoint")
    (bad / "job.json").write_text(json.dumps(meta))
    r = subprocess.run([sys.executable, "-m", "launch", "run-cells", str(a), str(bad), str(b)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    assert r.returncode == 2 and [x["rc"] for x in lines] == [0, 2, 0], r.stdout + r.stderr
    assert (a / "DONE").exists() and (b / "DONE").exists() and not (bad / "DONE").exists()
    failed = json.loads((bad / "FAILED").read_text())
    assert failed["rc"] == 2 and failed["error"].startswith("error: model.path: cannot load a "
                                                            "tokenizer")


def page_filler():
    sys.path.insert(0, str(ROOT / "docs"))
    import toy_world_report
    return toy_world_report


def test_the_toy_world_page_shows_the_committed_tables():
    """Every table of docs/toy-world.md is the one the collector wrote into docs/toy-world/:
    refilling the page from those files changes nothing (the page names each table once)."""
    page = (ROOT / "docs" / "toy-world.md").read_text()
    blocks = page.count("<!-- table: ")
    assert blocks >= 10 and blocks == page.count("<!-- /table -->")
    assert page_filler().fill_page(page, ROOT / "docs" / "toy-world") == page


def test_a_page_block_that_names_no_table_or_two_stops_the_refill(tmp_path):
    import pytest
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "r.md").write_text("### a: one\n\n| x |\n|---|\n| 1 |\n\n### a: two\n\n"
                                         "| y |\n|---|\n| 2 |\n")
    fill = page_filler().fill_page
    got = fill("x\n<!-- table: s/r.md | a: two -->\nold\n<!-- /table -->\ny\n", tmp_path)
    assert got == "x\n<!-- table: s/r.md | a: two -->\n### a: two\n\n| y |\n|---|\n| 2 |\n" \
                  "<!-- /table -->\ny\n"
    for head, says in (("a:", "2 tables start with 'a:'"), ("b", "0 tables start with 'b'")):
        with pytest.raises(SystemExit, match=says):
            fill(f"<!-- table: s/r.md | {head} -->\n<!-- /table -->", tmp_path)
    with pytest.raises(SystemExit, match="s/q.md: no such table file"):
        fill("<!-- table: s/q.md | a -->\n<!-- /table -->", tmp_path)
