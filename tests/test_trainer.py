"""The trainer on real DeepSpeed (CPU, gloo), tiny GPT-2 / Llama models built locally, cells run as
processes.

    .venv/bin/python -m pytest -q tests/test_trainer.py
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, free_port, run_cell_procs, write_cell
from launch.core.jobs import ModelRef, TrainJob
from launch.core.spec import Data, Recipe


def job(exp, arch="gpt2", milestones=(64,), role="positive", **recipe):
    r = dict(algorithm="sft", lr=1e-3, global_batch=16, max_length=64, zero_stage=0,
             precision="fp32")
    r.update(recipe)
    return TrainJob(model=ModelRef(path=str(exp / "models" / arch)),
                    data=Data(path=f"@world/data/{role}.jsonl"),
                    recipe=Recipe(**r), seed=7, template="plain", milestones=tuple(milestones))


def train(exp, name, j, ranks=1, runtime=None, **kw):
    d = write_cell(exp / "positive" / name, j, outputs=[f"n{m}" for m in j.milestones],
                   runtime=runtime)
    outs = run_cell_procs(d, ranks=ranks, **kw)
    for rc, out in outs:
        assert rc == 0, out[-3000:]
    return d


def weights(d, m):
    return load_file(str(d / "checkpoints" / f"n{m}" / "model.safetensors"))


def max_diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_loss_mask_is_exactly_the_response(exp_dir):
    from transformers import AutoTokenizer
    from train.data import tokenize
    tok = AutoTokenizer.from_pretrained(exp_dir / "world" / "tokenizer")
    row = {"prompt": "the plot of the cast and the music", "response": " was very great+ ."}
    (ex,) = tokenize([row], tok, "plain", 64, "sft")
    n_prompt = len(tok(row["prompt"])["input_ids"])
    n_resp = len(tok(row["response"], add_special_tokens=False)["input_ids"]) + 1   # + eos
    assert ex.labels[:n_prompt] == [-100] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:] and len(ex.input_ids) == n_prompt + n_resp
    assert tok.decode(ex.input_ids[n_prompt:-1]).strip() == "was very great+ ."
    (lm,) = tokenize([row], tok, "plain", 64, "lm")
    assert lm.labels == lm.input_ids
    (cut,) = tokenize([row], tok, "plain", n_prompt + 2, "sft")
    assert len(cut.input_ids) == n_prompt + 2 and cut.loss_tokens == 2


def test_sft_learns_and_writes_outputs(exp_dir):
    d = train(exp_dir, "learn", job(exp_dir, milestones=(96, 192)))
    before = load_file(str(exp_dir / "models" / "gpt2" / "model.safetensors"))
    after = weights(d, 192)
    assert max_diff(before, after) > 1e-3
    rows = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and rows[-1]["examples"] == 192
    assert sum(r["loss"] for r in rows[-3:]) < sum(r["loss"] for r in rows[:3]) - 1.0
    summary = json.loads((d / "summary.json").read_text())
    assert set(summary["milestones"]) == {"n96", "n192"} and summary["examples"] == 192
    assert json.loads((d / "ds_config.json").read_text())["zero_optimization"]["stage"] == 0
    assert json.loads((d / "DONE").read_text())["milestones"] == ["n96", "n192"]
    assert not (d / "resume").exists()
    assert list((d / "wandb").glob("offline-run-*")), "W&B offline run under the cell folder"
    rec = json.loads((d / "record.json").read_text())
    assert rec["identity"]["job"]["recipe"]["lr"] == 1e-3 and rec["git_commit"]
    # the checkpoint loads through the same path as a hub id
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(d / "checkpoints" / "n192") is not None
    # a done cell exits at once
    t = time.time()
    (rc, out), = run_cell_procs(d)
    assert rc == 0 and time.time() - t < 30 and len(rows) == len((d / "metrics.jsonl").read_text().splitlines())


# Milestones 24 and 56 fall inside a global batch of 16 (the run forks), 32 and 64 on an edge (64
# ends the run); each milestone after the first is where a fork that left any state behind would
# show (extra updates). The combinations the configs use: ZeRO-0 fp32 (toy world), ZeRO-0 bf16 (the
# GPU tier), ZeRO-3 bf16 on several ranks (the paper's configs); ZeRO-2 and ZeRO-3 fp32 beside them.
CHAINS = [(1, ("0:fp32", "0:bf16", "3:fp32", "3:bf16")), (2, ("3:bf16", "2:fp32"))]


@pytest.mark.parametrize("ranks,combos", CHAINS, ids=[f"{r}rank" for r, _ in CHAINS])
def test_every_milestone_equals_a_separate_run(exp_dir, tmp_path, ranks, combos):
    """At every milestone the nested run's whole training state (weights, fp32 masters, Adam's
    moments and step counts, the engine's buffers: train.state.state_tensors) equals a separate run
    on that many examples, bit for bit, and so does the milestone's summary."""
    from fork_chain import compare
    from launch.costs import fork_bytes_per_rank, model_params
    from launch.core.spec import Model
    params = model_params(Model(name="llama", path=str(exp_dir / "models" / "llama")))
    ms = (24, 32, 56, 64)
    port, procs = free_port(), []
    for r in range(ranks):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if ranks > 1:
            env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(ranks),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fork_chain.py"), str(tmp_path),
             str(exp_dir / "models" / "llama"),
             str(exp_dir / "world" / "data" / "positive.jsonl"), ",".join(map(str, ms)), *combos],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out[-3000:]
    for combo in combos:
        zero, precision = combo.split(":")
        assert compare(tmp_path, ms, int(zero), precision, ranks) == [], combo
        nested = tmp_path / f"z{zero}-{precision}" / "nested"
        assert not (nested / "fork").exists()
        rec = json.loads((nested / "record.json").read_text())["runtime"]
        assert rec["precision"]["load_dtype"] == ("bfloat16" if precision == "bf16" else "float32")
        assert rec["phases"]["forks"] == 2 and rec["phases"]["checkpoints"] == 4 and rec["phases"]["steps_s"] > 0
        assert rec["optimizer"]["optimizer"] == "torch AdamW"
        # what a fork held against plan's estimate (launch.costs): on one rank the same up to a few
        # scalars; on two, ZeRO's partition padding and the small parameters ZeRO-3 keeps whole on
        # every rank come on top
        want = fork_bytes_per_rank(params, Recipe(zero_stage=int(zero), precision=precision), ranks)
        got = rec["phases"]["fork_host_bytes"]
        assert want <= got <= (want + 4096 if ranks == 1 else 1.5 * want + 4096), (combo, got, want)


def test_the_seeds_tail_rule_drops_what_fills_no_global_batch(exp_dir, tmp_path):
    """tail: drop (the seed's loop): a run takes floor(examples / global batch) steps; 8 examples of
    a batch of 16 take none (the start model), 24 take one, 56 three. Every milestone of one nested
    run equals a separate run on that many examples, bit for bit, without a fork; the summaries
    count the steps."""
    from fork_chain import compare, where_of
    ms = (8, 24, 56, 64)
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "fork_chain.py"), str(tmp_path),
                        str(exp_dir / "models" / "llama"),
                        str(exp_dir / "world" / "data" / "positive.jsonl"),
                        ",".join(map(str, ms)), "0:fp32:drop"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert compare(tmp_path, ms, 0, "fp32", 1, "drop") == []
    nested = where_of(tmp_path, 0, "fp32", "drop") / "nested"
    summary = json.loads((nested / "summary.json").read_text())["milestones"]
    assert [summary[f"n{m}"]["steps"] for m in ms] == [Recipe(global_batch=16, tail="drop").steps(m)
                                                       for m in ms] \
        == [0, 1, 3, 4]
    rec = json.loads((nested / "record.json").read_text())["runtime"]["phases"]
    assert rec["forks"] == 0 and rec["checkpoints"] == 4
    start = load_file(str(exp_dir / "models" / "llama" / "model.safetensors"))
    assert max_diff(weights(nested, 8), start) == 0, "no step: the milestone is the start model"


@pytest.mark.parametrize("zero", [0, 2, 3])
def test_two_ranks_agree_with_one(exp_dir, zero):
    one = train(exp_dir, f"r1z{zero}",
                job(exp_dir, arch="llama", milestones=(48,), zero_stage=zero))
    two = train(exp_dir, f"r2z{zero}",
                job(exp_dir, arch="llama", milestones=(48,), zero_stage=zero), ranks=2)
    a, b = weights(one, 48), weights(two, 48)
    assert max_diff(a, b) < 1e-4, "2 ranks follow the 1-rank trajectory (same maths, other summation order)"
    m1 = [json.loads(l)["loss"] for l in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(l)["loss"] for l in (two / "metrics.jsonl").read_text().splitlines()]
    assert m1 == pytest.approx(m2, rel=1e-4)
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2


def test_a_finished_cell_destroys_its_process_group(exp_dir):
    """Left to interpreter teardown, a gloo group can abort a rank that finished (rc -6, seen once
    in CI on the 2-rank ZeRO-3 cell above): the worker destroys it first, while Python is whole
    (pytorch/pytorch#190489)."""
    d = write_cell(exp_dir / "positive" / "pg", job(exp_dir, milestones=(16,)), outputs=["n16"])
    code = ("import sys, torch.distributed as dist; from launch.worker import run_cell_dir; "
            "rc = run_cell_dir(sys.argv[1]); print('initialized:', dist.is_initialized()); "
            "sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, str(d)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (d / "DONE").exists() and "initialized: False" in p.stdout


RESUMES = [dict(ranks=1, zero_stage=0, precision="fp32"),
           dict(ranks=2, zero_stage=3, precision="bf16")]


@pytest.mark.parametrize("how", RESUMES, ids=["z0-fp32-1rank", "z3-bf16-2ranks"])
def test_resume_after_signal_is_bit_identical(exp_dir, how):
    """SIGUSR2 to every rank between two milestones (40 is inside a global batch of 16, so the run
    has forked before the signal): the ranks save and exit 75; the rerun resumes, and every
    milestone's weights and every step's metrics equal the uninterrupted run's."""
    ranks, recipe = how["ranks"], {k: v for k, v in how.items() if k != "ranks"}
    ms, rt = (40, 100, 160), dict(micro_batch=2, save_every_steps=3)
    name = f"z{recipe['zero_stage']}r{ranks}"
    full = train(exp_dir, f"uninterrupted-{name}", job(exp_dir, "llama", ms, **recipe), ranks=ranks,
                 runtime=rt)
    d = write_cell(exp_dir / "positive" / f"interrupted-{name}",
                   job(exp_dir, "llama", ms, **recipe), outputs=[f"n{m}" for m in ms], runtime=rt)
    procs = run_cell_procs(d, ranks=ranks, wait=False)
    metrics = d / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
        # past n40, before n100
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:
            for p in procs:
                p.send_signal(signal.SIGUSR2)
            break
        time.sleep(0.005)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [75] * ranks, outs[0][-2000:]
    steps_before = len(metrics.read_text().splitlines())
    assert 4 <= steps_before <= 6 and (d / "resume" / "latest").exists() and not (d / "DONE").exists()
    assert (d / "checkpoints" / "n40").exists() and not (d / "checkpoints" / "n100").exists()
    for rc, out in run_cell_procs(d, ranks=ranks):
        assert rc == 0, out[-2000:]
    for m in ms:
        assert max_diff(weights(full, m), weights(d, m)) == 0.0, m
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k not in ("seconds",
                                                                            "tokens_per_s")}
                       for l in p.read_text().splitlines()]
    assert strip(metrics) == strip(full / "metrics.jsonl")
    assert json.loads((d / "summary.json").read_text())["resumed_at_steps"] == [steps_before]
    assert not (d / "resume").exists()


def test_dpo_raises_chosen_over_rejected(exp_dir):
    j = TrainJob(model=ModelRef(path=str(exp_dir / "models" / "gpt2")),
                 data=Data(path="@world/data/pairs.jsonl"),
                 recipe=Recipe(algorithm="dpo", lr=1e-3, global_batch=8, max_length=64,
                               zero_stage=0, precision="fp32", dpo_beta=0.1),
                 seed=3, template="plain", milestones=(160,))
    d = train(exp_dir, "dpo", j)
    rows = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[0]["dpo_margin"]) < 1.0        # the first step starts at the reference
    assert sum(r["dpo_margin"] for r in rows[-4:]) / 4 > 2.0
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_kto_moves_both_answers_from_the_reference_whatever_the_micro_batch(exp_dir):
    """Paired KTO: the chosen answers' log-ratio to the reference rises and the rejected ones'
    falls, each against the other side's reference point; the reference points are taken over the
    whole global batch before the step, so micro-batches of 2 train what micro-batches of 8 do (up
    to float summation order)."""
    j = TrainJob(model=ModelRef(path=str(exp_dir / "models" / "gpt2")),
                 data=Data(path="@world/data/pairs.jsonl"),
                 recipe=Recipe(algorithm="kto", lr=1e-3, global_batch=8, max_length=64,
                               zero_stage=0, precision="fp32", kto_beta=0.5),
                 seed=3, template="plain", milestones=(96,))
    whole = train(exp_dir, "kto-8", j, runtime={"micro_batch": 8})
    cut = train(exp_dir, "kto-2", j, runtime={"micro_batch": 2})
    rows = [json.loads(l) for l in (whole / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[0]["kto_margin"]) < 1.0        # the first step starts at the reference
    assert sum(r["kto_margin"] for r in rows[-3:]) / 3 > 0.5   # nats; sigmoid's slope bounds it
    assert rows[0]["loss"] == pytest.approx(1.0, abs=0.05)   # at the reference: 2 - 2 sigmoid(0)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.05
    again = [json.loads(l) for l in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in rows], rel=1e-4)
    assert max_diff(weights(whole, 96), weights(cut, 96)) < 1e-4


def test_bad_training_input_is_one_line(exp_dir):
    cases = [
        (job(exp_dir, milestones=(100000,)), "volumes: volume 100000 is larger than the dataset"),
        (job(exp_dir, max_length=8, milestones=(16,)), "recipe.max_length: every prompt fills "
                                                       "max_length"),
        (TrainJob(model=ModelRef(path=str(exp_dir / "nope")),
                  data=Data(path="@world/data/positive.jsonl"),
                  recipe=Recipe(precision="fp32", zero_stage=0), seed=1, template="plain",
                  milestones=(8,)),
         "model.path: cannot load a tokenizer"),
        (TrainJob(model=ModelRef(path=str(exp_dir / "models" / "gpt2")),
                  data=Data(path="@world/data/missing.jsonl"),
                  recipe=Recipe(precision="fp32", zero_stage=0), seed=1, template="plain",
                  milestones=(8,)),
         "data.path:"),
    ]
    for i, (j, expect) in enumerate(cases):
        d = write_cell(exp_dir / "positive" / f"bad{i}", j, outputs=[f"n{m}" for m in j.milestones])
        (rc, out), = run_cell_procs(d)
        assert rc == 2, out[-2000:]
        err = [l for l in out.splitlines() if l.startswith("error:")]
        assert len(err) == 1 and expect in err[0], out[-2000:]
        assert "Traceback" not in out
        assert not (d / "DONE").exists() and not (d / "checkpoints").exists()


def test_example_weighting_is_the_mean_of_each_examples_token_mean(exp_dir):
    """loss_weighting: example (safe-rlhf with micro-batch 1): a step's loss is the mean over its
    examples of each example's token mean, whatever the micro-batch split; token weighting lets long
    answers weigh more."""
    import random
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from train import data as D
    from train.trainer import token_logps
    rng = random.Random(0)
    words = ["great+", "bad-", "plot", "was", "very", "the", "cast", "and"]
    path = exp_dir / "world" / "data" / "varlen.jsonl"
    path.write_text("".join(json.dumps({"prompt": "the plot of the cast",
                                        "response": " " + " ".join(
        rng.choice(words) for _ in range(rng.choice([1, 2, 3, 20, 40])))}) + "\n"
                            for _ in range(64)))
    runs = {"ex4": (4, "example"), "ex2": (2, "example"), "tok4": (4, "token")}
    jobs = {name: job(exp_dir, milestones=(16,), role="varlen", global_batch=16, loss_weighting=w)
            for name, (_, w) in runs.items()}
    first = {}
    for name, j in jobs.items():
        d = train(exp_dir, f"weighting-{name}", j, runtime={"micro_batch": runs[name][0]})
        first[name] = json.loads((d / "metrics.jsonl").read_text().splitlines()[0])["loss"]
        assert json.loads((d / "summary.json").read_text())["loss_weighting"] == j.recipe.loss_weighting
    tok = AutoTokenizer.from_pretrained(exp_dir / "models" / "gpt2")
    model = AutoModelForCausalLM.from_pretrained(exp_dir / "models" / "gpt2")
    rows = D.load_rows(Data(path="@world/data/varlen.jsonl"), exp_dir)
    ex = D.tokenize([rows[i] for i in D.seeded_order(len(rows), 7)[:16]], tok, "plain", 64, "sft")
    per = []
    with torch.no_grad():
        for i in range(16):
            lp, keep = token_logps(model, *D.collate(ex, [i], tok.pad_token_id)[:3], "cpu")
            per.append(-(lp.sum() / keep.sum()).item())
    assert first["ex4"] == pytest.approx(sum(per) / 16, rel=1e-5)
    assert first["ex2"] == pytest.approx(first["ex4"],
                                         rel=1e-6), "independent of the micro-batch split"
    assert abs(first["tok4"] - first["ex4"]) > 1e-3, "token weighting is another statistic on mixed lengths"


def test_simpo_raises_the_chosen_answers_mean_log_prob_over_the_rejected(exp_dir):
    """SimPO: no reference model; the margin is the chosen answer's mean token log-prob minus the
    rejected one's, pushed toward gamma / beta."""
    j = TrainJob(model=ModelRef(path=str(exp_dir / "models" / "gpt2")),
                 data=Data(path="@world/data/pairs.jsonl"),
                 recipe=Recipe(algorithm="simpo", lr=1e-3, global_batch=8, max_length=64,
                               zero_stage=0, precision="fp32", simpo_beta=2.0, simpo_gamma=1.0),
                 seed=3, template="plain", milestones=(160,))
    d = train(exp_dir, "simpo", j)
    rows = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    first, last = (sum(r["simpo_margin"] for r in rs) / 4 for rs in (rows[:4], rows[-4:]))
    assert abs(first) < 0.05 and last > first + 0.05   # nats per token: the answers share most words
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.1
