"""Eval stage and collector: batched generation, scorers with known answers, and the collector's
tables.

    .venv/bin/python -m pytest -q tests/test_eval.py
"""
import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

from eval import scorers as S
from eval.collect import collect
from eval.evaluate import generate, logit_metric, metric
from eval.stats import mean_ci
from launch.__main__ import main as launch_main
from launch.core.jobs import Context
from launch.core.layout import atomic_write_json, write_done
from eval.tables import text as tables_text
from launch.core.spec import Scorer


@pytest.fixture(scope="module")
def tiny(exp_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(exp_dir / "models" / "llama")
    model = AutoModelForCausalLM.from_pretrained(exp_dir / "models" / "llama").eval()
    return tok, model


def test_batched_generation_equals_one_at_a_time(exp_dir, tiny):
    tok, model = tiny
    rows = [json.loads(l)
            for l in (exp_dir / "world" / "data" / "pretrain.jsonl").read_text().splitlines()[:12]]
    # prompts of different lengths, so that left padding really happens
    prompts = [" ".join(r["prompt"].split()[: 3 + i % 6]) for i, r in enumerate(rows)]
    batched = generate(model, tok, prompts, "plain", max_new_tokens=12, batch_size=5)
    single = [generate(model, tok, [p], "plain", max_new_tokens=12, batch_size=1)[0]
              for p in prompts]
    assert batched == single
    assert any(batched)


def test_sampler_nll_is_the_models_own_at_temperature_one(exp_dir, tiny):
    """Setting I's target entropy: at temperature 1 and top-p 1 the sampler's recorded -log p of
    what it drew (EOS included, nothing after it) equals the model's teacher-forced NLL of the same
    tokens; at temperature 0.05 it is the sharpened distribution's, lower; greedy records 0.
    Sampling is unchanged by recording it."""
    from train.data import prompt_text
    tok, model = tiny

    # the word-level tokenizer, decoding what was drawn word for word (a random model
    class KeepSpecials:
        def __init__(self, t):   # draws PAD or BOS now and then, which the suite's decode drops)
            self.t = t

        def __getattr__(self, name):
            return getattr(self.t, name)

        def __call__(self, *a, **k):
            return self.t(*a, **k)

        def decode(self, ids, skip_special_tokens=False):
            return self.t.decode(ids, skip_special_tokens=False)
    rows = [json.loads(l)
            for l in (exp_dir / "world" / "data" / "pretrain.jsonl").read_text().splitlines()[:6]]
    prompts = [" ".join(r["prompt"].split()[: 3 + i % 4]) for i, r in enumerate(rows)]
    nll: list = []
    gens = generate(model, KeepSpecials(tok), prompts, "plain", 10, 1.0, 1.0, batch_size=4, seed=3,
                    nll=nll)
    assert generate(model, tok, prompts, "plain", 10, 1.0, 1.0, batch_size=4, seed=3, nll=[]) == \
        generate(model, tok, prompts, "plain", 10, 1.0, 1.0, batch_size=4, seed=3)
    for p, g, (nats, n) in zip(prompts, gens, nll):
        head = tok(prompt_text(p, "plain"))["input_ids"]
        drawn = tok(g, add_special_tokens=False)["input_ids"]
        drawn = drawn[:drawn.index(tok.eos_token_id) + 1] if tok.eos_token_id in drawn else drawn
        ids = head + drawn
        assert n == len(drawn) >= 1
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        want = -sum(lp[t - 1, ids[t]].item() for t in range(len(head), len(ids)))
        assert nats == pytest.approx(want, rel=1e-4, abs=1e-4)
    cold: list = []
    generate(model, tok, prompts, "plain", 10, 0.05, 0.95, batch_size=4, seed=3, nll=cold)
    assert sum(a for a, _ in cold) < 0.75 * sum(a for a, _ in nll)
    greedy: list = []
    generate(model, tok, prompts, "plain", 10, nll=greedy)
    assert greedy == [(0.0, 0)] * len(prompts)


def test_rule_scorer_is_exact_on_labelled_samples(exp_dir):
    rows = [json.loads(l)
            for l in (exp_dir / "world" / "data" / "pretrain.jsonl").read_text().splitlines()]
    scores = S.rule_scores([r["response"] for r in rows])
    from train.toyworld import attribute
    for r, s in zip(rows, scores):
        net = sum(attribute(w) for w in r["response"].split())
        assert s == (1.0 if net > 0 else 0.0 if net < 0 else 0.5)
    clean = [r for r in rows
             if all(attribute(w) in (0, 1 if r["label"] else -1) for w in r["response"].split())]
    assert clean and all(s == r["label"]
                         for r, s in zip(clean, S.rule_scores([r["response"] for r in clean])))
    assert S.rule_scores(["was great+ and bad- also fine+",
                          "dull- .", "nothing here"]) == [1.0, 0.0, 0.5]


def test_classifier_scorer_known_output(tmp_path, exp_dir):
    """A BERT sequence classifier whose head is a bias only: P(POSITIVE) = softmax([0, 1.5])[1] for
    every text."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    tok = AutoTokenizer.from_pretrained(exp_dir / "world" / "tokenizer")
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=2,
                     id2label={0: "NEGATIVE", 1: "POSITIVE"},
                     label2id={"NEGATIVE": 0, "POSITIVE": 1}, pad_token_id=tok.pad_token_id)
    m = BertForSequenceClassification(cfg)
    with torch.no_grad():
        m.classifier.weight.zero_()
        m.classifier.bias.copy_(torch.tensor([0.0, 1.5]))
    m.save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    scorer = S.ClassifierScorer(Scorer(kind="classifier", model=str(tmp_path / "clf"),
                                       positive_label="positive"),
                                torch.device("cpu"))
    expect = 1 / (1 + math.exp(-1.5))
    assert scorer(["the plot was great+", "dull- ."]) == pytest.approx([expect, expect], abs=1e-6)
    from launch.core.schema import ConfigError
    with pytest.raises(ConfigError, match="positive_label"):
        S.ClassifierScorer(Scorer(kind="classifier", model=str(tmp_path / "clf"),
                                  positive_label="HAPPY"),
                           torch.device("cpu"))


def test_score_model_known_weights(tmp_path, exp_dir):
    """A LlamaForScore-form checkpoint: backbone + score_head; zero weight, bias 0.7 -> score -0.7
    with sign -1."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel
    tok = AutoTokenizer.from_pretrained(exp_dir / "world" / "tokenizer")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64)
    out = tmp_path / "cost"
    LlamaModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    f = out / "model.safetensors"
    tensors = load_file(str(f))
    w = torch.zeros(1, 16)
    tensors.update({"score_head.weight": w, "score_head.bias": torch.tensor([0.7])})
    save_file(tensors, str(f), metadata={"format": "pt"})
    scorer = S.ScoreModelScorer(Scorer(kind="score_model", model=str(out), sign=-1.0, max_length=8),
                                torch.device("cpu"))
    assert scorer(["the plot was great+ and very long text " * 4,
                   "dull- ."]) == pytest.approx([-0.7, -0.7])
    # a real head: the score is the head applied to the last token's hidden state
    w[0, :] = torch.arange(16) / 16
    tensors["score_head.weight"] = w
    save_file(tensors, str(f), metadata={"format": "pt"})
    scorer = S.ScoreModelScorer(Scorer(kind="score_model", model=str(out), sign=1.0),
                                torch.device("cpu"))
    # read at the EOS it is trained to end with
    enc = tok(["dull- ." + tok.eos_token], return_tensors="pt")
    assert enc["input_ids"][0, -1].item() == tok.eos_token_id
    with torch.no_grad():
        h = scorer.backbone(**enc).last_hidden_state[0, -1]
    assert scorer(["dull- ."])[0] == pytest.approx(float(h @ w[0] + 0.7), abs=1e-5)
    # the seed's way (append_eos: false): read at the answer's own last token; dtype float32 over a
    # bf16 checkpoint
    LlamaModel(cfg).to(torch.bfloat16).save_pretrained(out)
    tensors = load_file(str(f))
    tensors.update({"score_head.weight": w, "score_head.bias": torch.tensor([0.7])})
    save_file(tensors, str(f), metadata={"format": "pt"})
    seed = S.ScoreModelScorer(Scorer(kind="score_model", model=str(out), append_eos=False,
                                     dtype="float32"),
                              torch.device("cpu"))
    auto = S.ScoreModelScorer(Scorer(kind="score_model", model=str(out)), torch.device("cpu"))
    assert seed.backbone.dtype == torch.float32 and auto.backbone.dtype == torch.bfloat16
    enc = tok(["dull- ."], return_tensors="pt")
    assert enc["input_ids"][0, -1].item() != tok.eos_token_id
    with torch.no_grad():
        h = seed.backbone(**enc).last_hidden_state[0, -1]
    assert seed(["dull- ."])[0] == pytest.approx(float(h @ w[0] + 0.7), abs=1e-5)


def test_worst_of_k_samples_per_prompt(tmp_path, exp_dir):
    """aggregate: worst (the seed's safety number): each prompt's lowest score among its samples,
    averaged over prompts; n counts prompts. Checked against the scores of the generations the cell
    wrote."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel
    from eval.evaluate import main as eval_main
    from launch.core.jobs import EvalJob, ModelRef
    from launch.core.schema import ConfigError
    from launch.core.spec import Data, Eval
    tok = AutoTokenizer.from_pretrained(exp_dir / "world" / "tokenizer")
    out = tmp_path / "cost"
    LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1,
                           num_attention_heads=2, max_position_embeddings=128)).save_pretrained(out)
    tok.save_pretrained(out)
    tensors = load_file(str(out / "model.safetensors"))
    tensors.update({"score_head.weight": torch.randn(1, 16,
                                                     generator=torch.Generator().manual_seed(0)),
                    "score_head.bias": torch.tensor([0.0])})
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    scorer = Scorer(kind="score_model", model=str(out), append_eos=False)
    with pytest.raises(ConfigError, match="aggregate"):
        Eval(prompts=4, aggregate="worst", scorer=scorer)
    ev = Eval(prompts=5, samples_per_prompt=3, aggregate="worst", max_new_tokens=6, temperature=1.0,
              scorer=scorer)
    ref = ModelRef(path=str(exp_dir / "models" / "gpt2"))
    job = EvalJob(model=ref, base=ref, prompts=Data(path="@world/data/prompts.jsonl"), eval=ev,
                  template="plain")
    cell = tmp_path / "eval" / "worst"
    cell.mkdir(parents=True)
    eval_main(job, Context("eval/worst", {}, (), cell, exp_dir))
    got = next(m for m in json.loads((cell / "result.json").read_text())["metrics"]
               if m["name"] == "score")
    rows = [json.loads(l) for l in (cell / "generations.jsonl").read_text().splitlines()]
    scores = S.ScoreModelScorer(scorer, torch.device("cpu"))([r["prompt"] + r["response"]
                                                              for r in rows])
    worst = [min(scores[i:i + 3]) for i in range(0, 15, 3)]
    assert len(rows) == 15 and got["n"] == 5 and got["value"] == pytest.approx(sum(worst) / 5,
                                                                               abs=1e-5)
    assert got["value"] < sum(scores) / 15


def test_kl_self_zero_and_uniform_bits(exp_dir, tiny):
    from train.data import tokenize
    tok, model = tiny
    rows = [json.loads(l)
            for l in (exp_dir / "world" / "data" / "positive.jsonl").read_text().splitlines()[:6]]
    ex = tokenize(rows, tok, "plain", 64, "sft")
    assert max(S.kl_per_token(model, model, ex, tok.pad_token_id)) == pytest.approx(0.0, abs=1e-6)
    from transformers import AutoModelForCausalLM
    uniform = AutoModelForCausalLM.from_pretrained(exp_dir / "models" / "llama").eval()
    with torch.no_grad():
        uniform.lm_head.weight.zero_()
    per, _ = S.bits_per_token(uniform, ex, tok.pad_token_id)
    assert per == pytest.approx([math.log2(uniform.config.vocab_size)] * len(ex), abs=1e-5)


def test_metric_and_logit_space():
    m = metric("positive_prob", [1, 0, 1, 1], True, scorer="rule")
    assert m["value"] == 0.75 and m["n"] == 4 and m["stderr"] == pytest.approx(0.25)
    # binomial: sqrt(p (1 - p) / n)
    m = metric("positive_rate", [1, 0, 1, 1], True, share=True, scorer="rule")
    assert m["value"] == 0.75 and m["stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    lm = logit_metric(m)
    assert lm["name"] == "positive_logit" and lm["value"] == pytest.approx(math.log(3))


def test_headline_is_the_share_classified_positive(exp_dir, tmp_path):
    """The paper's IMDb number is the share of generations a classifier calls positive: with
    P(positive) = 0.8 for every text that share is 1.0 (binomial error 0), while the mean
    probability, kept beside it, is 0.8."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    from eval.evaluate import main as eval_main
    from launch.core.jobs import EvalJob, ModelRef
    from launch.core.spec import Data, Eval
    tok = AutoTokenizer.from_pretrained(exp_dir / "world" / "tokenizer")
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=2,
                     pad_token_id=tok.pad_token_id,
                     id2label={0: "NEGATIVE", 1: "POSITIVE"},
                     label2id={"NEGATIVE": 0, "POSITIVE": 1})
    for bias, share, prob in ((math.log(4), 1.0, 0.8), (-math.log(4), 0.0, 0.2)):
        m = BertForSequenceClassification(cfg)
        with torch.no_grad():
            m.classifier.weight.zero_()
            m.classifier.bias.copy_(torch.tensor([0.0, bias]))
        m.save_pretrained(tmp_path / "clf")
        tok.save_pretrained(tmp_path / "clf")
        ref = ModelRef(path=str(exp_dir / "models" / "gpt2"))
        job = EvalJob(model=ref, base=ref, prompts=Data(path="@world/data/prompts.jsonl"),
                      template="plain",
                      eval=Eval(prompts=12, max_new_tokens=4, scorer=Scorer(kind="classifier",
                                                                            model=str(tmp_path / "clf"))))
        out = tmp_path / f"cell{bias > 0}"
        out.mkdir()
        eval_main(job, Context("eval/clf", {}, (), out, exp_dir))
        got = {m["name"]: m for m in json.loads((out / "result.json").read_text())["metrics"]}
        assert got["positive_rate"]["value"] == share and got["positive_rate"]["stderr"] == 0.0
        assert got["positive_prob"]["value"] == pytest.approx(prob, abs=1e-6)
        assert got["positive_rate"]["statistic"] == "share classified positive"


# ---------------------------------------------------------------------------------------------
# collector
def fake_cell(exp: Path, stage: str, cid: str, coords: dict, payload: dict | str | None, done=True):
    d = exp / stage / cid
    d.mkdir(parents=True)
    # Setting I cross cells are training cells
    kind = {"eval": "eval", "responses": "generate"}.get(stage, "train")
    atomic_write_json(d / "job.json",
                      {"stage": stage, "kind": kind, "id": cid, "coords": coords, "job": {},
                                       "upstream": [], "outputs": []})
    name = "summary.json" if kind == "train" else "result.json"
    if isinstance(payload, str):
        (d / name).write_text(payload)
    elif payload is not None:
        atomic_write_json(d / name, payload)
    if done:
        write_done(d)
    return f"{stage}/{cid}"


def rate(v, se=0.02):
    return {"metrics": [{"name": "positive_rate", "value": v, "stderr": se, "n": 400,
                         "higher_is_better": True}]}


def test_collector_tables_cis_and_problems(tmp_path):
    exp = tmp_path / "toy"
    keys = []
    vals = {1: {(0, 0): 0.5, (100, 0): 0.8, (100, 50): 0.6, (200, 0): 0.9, (200, 50): 0.55},
            2: {(0, 0): 0.52, (100, 0): 0.82, (100, 50): 0.64, (200, 0): 0.88, (200, 50): 0.5},
            3: {(0, 0): 0.54, (100, 0): 0.78, (100, 50): 0.62, (200, 0): 0.92, (200, 50): 0.6}}
    for seed, cells in vals.items():
        for (p, n), v in cells.items():
            arm = "base" if p == 0 else "positive"
            keys.append(fake_cell(exp, "eval", f"m.s{seed}.p{p}.n{n}",
                                  {"model": "m", "seed": seed, "arm": arm,
                                                                        "positive": p,
                                   "negative": n}, rate(v)))
    keys.append(fake_cell(exp, "eval", "m.s4.p100.n0",
                          {"model": "m", "seed": 4, "arm": "positive", "positive": 100,
                                                        "negative": 0}, '{"metrics": [trunc'))
    keys.append(fake_cell(exp, "eval", "m.s4.p200.n0",
                          {"model": "m", "seed": 4, "arm": "positive", "positive": 200,
                                                        "negative": 0}, None, done=False))
    keys.append("eval/m.s5.p100.n0-never")
    s = collect(exp, keys)   # the collect cell's upstream: every cell the plan expects
    problems = {k: (st, why) for k, st, why in s["problems"]}   # the states of layout.cell_state
    assert problems == {"eval/m.s4.p100.n0": ("corrupt", "result.json unreadable"),
                        "eval/m.s4.p200.n0": ("todo", "no done marker"),
                        "eval/m.s5.p100.n0-never": ("todo", "never started")}
    md = (exp / "report" / "rebound.md").read_text()
    m, ci, n = mean_ci([0.6, 0.64, 0.62])
    assert n == 3 and m == pytest.approx(0.62) and ci == pytest.approx(4.302653 * 0.02 / math.sqrt(3))
    assert f"| 100 | {0.8:.3f} ± {mean_ci([0.8, 0.82, 0.78])[1]:.3f} | {m:.3f} ± {ci:.3f} |" in md
    assert f"| base model | {0.52:.3f} ± {mean_ci([0.5, 0.52, 0.54])[1]:.3f} |" in md
    # the change over the first 50 negative examples: per seed (paired), then mean ± CI over seeds
    dm, dci, _ = mean_ci([0.6 - 0.8, 0.64 - 0.82, 0.62 - 0.78])
    assert f"| m | positive | 100 | {dm:+.3f} ± {dci:.3f} |" in md
    tex = (exp / "report" / "rebound.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and "0.620" in tex
    for ext in ("png", "pdf"):
        assert (exp / "report" / f"rebound.{ext}").stat().st_size > 1000
    assert "corrupt" in (exp / "report" / "cells.md").read_text()


def test_collector_read_in_parts_and_drawn_apart_equals_one_process(tmp_path, monkeypatch):
    """The collector reads large studies in parts, one forked process per core, and draws its plots
    in forked processes while it writes the tables: the records, the problems (in the plan's order)
    and every report file are those of one process doing it all; a child's error reaches the
    caller, and a child that dies is an error, never a silent gap."""
    import os

    from eval import collect as C
    from eval.records import read_cells
    exp = tmp_path / "toy"
    keys = [fake_cell(exp, "eval", f"m.s{s}.p{p}.n{n}", {"model": "m", "seed": s,
                                                          "arm": "positive", "positive": p,
                                                          "negative": n}, rate(0.5 + s / 50 - n / 500))
            for s in range(3) for p in (100, 200) for n in (0, 10, 50)]
    keys[4:4] = [fake_cell(exp, "eval", "m.s9.p100.n0", {"model": "m", "seed": 9}, "{trunc"),
                 "eval/never"]
    serial = read_cells(exp, keys)
    monkeypatch.setattr(C, "READ_APART", 3)   # several parts even for 20 cells
    monkeypatch.setattr(C, "cores", lambda: 2)   # forked on any machine
    assert C.read_all(exp, keys) == serial
    parallel = C.collect(exp, keys)
    report = {f.name: f.read_bytes() for f in (exp / "report").rglob("*") if f.is_file()}
    monkeypatch.setattr(C, "cores", lambda: 1)
    assert C.read_all(exp, keys) == serial
    one = C.collect(exp, keys)
    assert one["problems"] == parallel["problems"] == serial[1] and one["files"] == parallel["files"]
    again = {f.name: f.read_bytes() for f in (exp / "report").rglob("*") if f.is_file()}
    assert again.keys() == report.keys() and {"rebound.png", "rebound.pdf"} <= report.keys()
    assert [k for k in report if k != "index.md" and not k.endswith((".png", ".pdf"))
            and report[k] != again[k]] == []
    monkeypatch.setattr(C, "cores", lambda: 2)

    def fails():
        raise ValueError("a bad panel")
    with pytest.raises(ValueError, match="a bad panel"):
        C.forked(fails)()
    with pytest.raises(RuntimeError, match="died"):
        C.forked(os._exit, 3)()
    assert C.forked(sorted, [3, 1, 2])() == [1, 2, 3]


def test_with_several_pretraining_seeds_the_unit_is_the_base(tmp_path):
    """Three bases (pre-training seeds) x two alignment seeds: the mean and its interval are over the
    three bases, each the mean of its two chains (t with 2 df), in the tables, results.csv and the
    titles; counting the six chains as independent would give a narrower interval (5 df)."""
    from eval.stats import stat
    exp = tmp_path / "toy"
    # the bases differ; the alignment seeds of one base nearly agree
    level = {1: 0.50, 2: 0.60, 3: 0.75}
    chain = {(ps, s): level[ps] + (0.002 if s == 42 else -0.002) for ps in level for s in (42, 43)}
    for (ps, s), v in chain.items():
        for p, n, shift in ((100, 0, 0.3), (100, 50, 0.0)):
            fake_cell(exp, "eval", f"m.b{ps}.s{s}.p{p}.n{n}",
                      {"model": "m", "pretrain_seed": ps, "seed": s, "arm": "positive",
                       "positive": p, "negative": n}, rate(v + shift))
    from launch.core.spec import Claim
    claim = Claim("negatives lower the rate", "positive_rate", "change", 50)
    collect(exp, study={"experiment": "toy", "setting": "rebound", "task": "toy-reviews"},
            claims=[claim])
    claims = (exp / "report" / "claims.md").read_text()
    assert "| negatives lower the rate | change@50 of positive_rate | negative sign | 1 | 1 | 0 | 0 " \
           "| reproduced |" in claims and "| 3 bases, 2 df |" in claims
    by_base = [sum(v for (ps, _), v in chain.items() if ps == b) / 2 for b in level]
    m, half, n = mean_ci(by_base)
    assert n == 3 and half == pytest.approx(4.302653 * (sum((x - m) ** 2 for x in by_base) / 2)
                                            ** 0.5 / 3 ** 0.5, rel=1e-5)
    assert half > mean_ci(list(chain.values()))[1] * 1.5   # chains as units: narrower, wrong
    md = (exp / "report" / "rebound.md").read_text()
    assert f"| 100 | {m + 0.3:.3f} ± {half:.3f} | {m:.3f} ± {half:.3f} |" in md
    assert "t 95% over 3 bases, 2 df (each base: the mean of its alignment seeds)" in md
    with open(exp / "report" / "results.csv", newline="") as f:
        means = [r for r in csv.DictReader(f) if r["row"] == "mean"]
    assert {(r["unit"], r["n_units"]) for r in means} == {("bases", "3")}
    assert float(means[0]["ci_high"]) - float(means[0]["value"]) == pytest.approx(half)
    # one base: its alignment seeds are the units (the study says nothing beyond that base)
    one = stat({(1, 42): 0.5, (1, 43): 0.7})
    assert one.unit == "seeds" and one.n == 2


def test_copies_of_a_chain_add_no_information():
    """Every statistic over chains sits inside bases: duplicating each base's chain (a second
    alignment seed that happens to agree) leaves the interval as it was, in the paired window
    statistics and in the start-adjusted (cluster-robust) effect; treating chains as independent
    would shrink both by about sqrt(2)."""
    from eval.analysis import Curve, Point, adjusted_table, window_table
    bases = {1: 0.03, 2: -0.05, 3: 0.01, 4: 0.04}   # each base's own deviation

    def curves(copies):
        out = []
        for model, arm, start, level, c in (("gpt", "positive", 100, 1.0, 0.0),
                                            ("gpt", "positive", 200, 2.0, 0.0),
                                            ("gpt", "positive", 400, 3.0, 0.0),
                                            ("gpt", "control", 300, 1.5, 0.2)):
            keys = [(b, s) for b in bases for s in range(copies)]
            at0 = {k: level + bases[k[0]] for k in keys}
            at100 = {k: v - 0.5 * v + c + bases[k[0]] * (start / 100) for k, v in at0.items()}
            out.append(Curve(model, arm, start, [Point(0, level, 0, 4, at0),
                                                 Point(100, 0, 0, 4, at100)]))
        return out
    one, two = curves(1), curves(2)
    w1, w2 = (window_table(c, "positive_logit") for c in (one, two))
    for r1, r2 in zip(w1.rows, w2.rows):
        a, b = r1["change@100"], r2["change@100"]
        assert (a.n, a.unit, b.n, b.unit) == (4, "bases", 4, "bases")
        assert b.half == pytest.approx(a.half)
    assert "t 95% over 4 bases, 3 df" in w2.title
    (c1,), (c2,) = ([r["arm effect c"] for r in adjusted_table(c, "positive_logit").rows
                     if r["window"] == 100] for c in (one, two))
    assert c1.mean == pytest.approx(c2.mean) and (c1.n, c2.n, c2.unit) == (4, 4, "bases")
    # the same clusters; only CR1's small-sample factor (n - 1) / (n - 3) moves with n
    factor = ((32 - 1) / (32 - 3) / ((16 - 1) / (16 - 3))) ** 0.5
    assert c2.half == pytest.approx(c1.half * factor, rel=1e-6)


def test_claims_are_tested_as_families_with_holm():
    """Holm and the t tests against published values; then a claim family of three tests (starts
    200, 400 and 800 against 100, deeper@50 over three bases): p from each test's own mean and
    standard error, Holm-adjusted within the claim; tests resolved alone (p < 0.05) but not after
    Holm are unresolved; an equivalence claim holds only where the 90 % interval sits inside its
    bound."""
    from eval.analysis import Curve, Point, claims_tables
    from eval.stats import Stat, holm, p_equivalent, p_value, t_quantile
    from launch.core.spec import Claim
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert p_value(Stat(2.0, 2.776445, 5)) == pytest.approx(0.116117, abs=1e-6)   # t=2, 4 df
    assert p_value(Stat(2.776445, 2.776445, 5)) == pytest.approx(0.05, abs=1e-6)
    # mean 0, se 0.1, 9 df, bound 0.2: one-sided P(T > 2) = 0.0383
    assert p_equivalent(Stat(0.0, t_quantile(0.95, 9) * 0.1, 10), 0.2) == pytest.approx(0.0383,
                                                                                        abs=1e-4)
    # deeper@50 (change minus start 100's change, per base): start 200 clearly more (-0.3),
    # starts 400 and 800 a little more, each with p between 0.025 and 0.05 alone
    drop = {100: {1: -0.10, 2: -0.12, 3: -0.11},
            200: {1: -0.40, 2: -0.43, 3: -0.41},
            400: {1: -0.125, 2: -0.17, 3: -0.1475},
            800: {1: -0.12, 2: -0.165, 3: -0.1425}}
    curves = [Curve("gpt", "positive", start, [
        Point(0, 1.0, 0, 3, {(b, 42): 1.0 for b in d}),
        Point(50, 0, 0, 3, {(b, 42): 1.0 + v for b, v in d.items()})]) for start, d in drop.items()]
    claim = Claim("deeper falls more", "positive_logit", "deeper", 50)
    verdicts, tests = claims_tables(lambda metric: curves, [claim])
    rows = tests.rows
    assert [r["start"] for r in rows] == [200, 400, 800]
    ps = []
    for r, start in zip(rows, (200, 400, 800)):
        diffs = [drop[start][b] - drop[100][b] for b in (1, 2, 3)]
        m = sum(diffs) / 3
        se = (sum((x - m) ** 2 for x in diffs) / 2 / 3) ** 0.5
        assert r["value"].mean == pytest.approx(m) and r["units"] == "3 bases, 2 df"
        ps.append(p_value(Stat(m, t_quantile(0.95, 2) * se, 3)))
        assert r["p"].mean == pytest.approx(ps[-1])
    assert ps[0] < 0.01 and all(0.025 < p < 0.05 for p in ps[1:])   # alone: all three resolved
    assert [r["p Holm"].mean for r in rows] == pytest.approx(holm(ps))
    assert [r["result"] for r in rows] == ["as expected", "unresolved", "unresolved"]
    (v,) = verdicts.rows
    assert (v["tests"], v["as expected"], v["unresolved"], v["verdict"]) == (3, 1, 2,
                                                                             "partly (1 of 3)")
    # the same numbers read as a claim of 'no difference' within 0.05: not shown
    eq = Claim("no difference", "positive_logit", "deeper", 50, expect="equivalent", bound=0.05)
    v = claims_tables(lambda metric: curves, [eq])[0].rows[0]
    assert v["verdict"] == "unresolved" and v["expects"] == "|effect| < 0.05"
    # and within 0.5, every difference is small enough: equivalent
    wide = Claim("no difference", "positive_logit", "deeper", 50, expect="equivalent", bound=0.5)
    v = claims_tables(lambda metric: curves, [wide])[0].rows[0]
    assert v["verdict"] == "reproduced" and v["as expected"] == 3


def test_results_csv_is_tidy_and_equals_the_markdown(tmp_path):
    """results.csv reads as numbers with the csv module (and pandas where present): one row per seed
    and cell and metric, one 'mean' row per cell and metric whose mean and CI are the Markdown
    table's."""
    exp = tmp_path / "toy"
    vals = {1: {(0, 0): 0.5, (100, 0): 0.8, (100, 50): 0.6},
            2: {(0, 0): 0.52, (100, 0): 0.82, (100, 50): 0.64},
            3: {(0, 0): 0.54, (100, 0): 0.78, (100, 50): 0.62}}
    for seed, cells in vals.items():
        for (p, n), v in cells.items():
            fake_cell(exp, "eval", f"m.s{seed}.p{p}.n{n}",
                      {"model": "m", "seed": seed, "arm": "base" if p == 0 else
                                                            "positive", "positive": p,
                       "negative": n}, rate(v))
    collect(exp, study={"experiment": "toy", "setting": "rebound", "task": "toy-reviews"})
    report = exp / "report"
    with open(report / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == __import__("eval.collect", fromlist=["RESULT_COLUMNS"]).RESULT_COLUMNS
    seed_rows = [r for r in rows if r["row"] == "seed"]
    means = {(int(r["start_volume"]), int(r["negative_volume"])): r for r in rows
             if r["row"] == "mean"}
    assert len(seed_rows) == 9 and len(means) == 3 and {r["study"] for r in rows} == {"toy"}
    assert {r["setting"] for r in rows} == {"rebound"}
    md = (report / "rebound.md").read_text()
    for (p, n), r in means.items():
        value, high = float(r["value"]), float(r["ci_high"])
        assert int(r["n_units"]) == 3 and r["unit"] == "seeds" and r["ci_kind"] == "t 95% over 3 seeds, 2 df"
        assert f"{value:.3f} ± {(high - value):.3f}" in md
        per_seed = [float(x["value"]) for x in seed_rows if (int(x["start_volume"]),
                                                             int(x["negative_volume"])) ==
                    (p, n)]
        assert value == pytest.approx(sum(per_seed) / 3)
    assert all(float(r["stderr"]) == 0.02 and int(r["n"]) == 400 for r in seed_rows)
    lines = (report / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(rows) and json.loads(lines[0])["value"] == float(rows[0]["value"])
    try:
        import pandas as pd
    except ImportError:
        return
    df = pd.read_csv(report / "results.csv")
    assert df["value"].dtype.kind == "f" and df["negative_volume"].dtype.kind in "if"


def test_report_index_and_compact_terminal_tables(tmp_path):
    """index.md shows every table and plot inline; at 80 columns, or piped, the tables print without
    wrapping."""
    import subprocess
    import sys
    exp = tmp_path / "toy"
    for seed in (1, 2):
        for p, n, v in ((0, 0, 0.5), (100, 0, 0.8), (100, 25, 0.7), (100, 50, 0.6),
                        (100, 100, 0.55), (100, 200, 0.4),
                        (100, 400, 0.1), (200, 0, 0.9), (200, 400, 0.12)):
            fake_cell(exp, "eval", f"m.s{seed}.p{p}.n{n}",
                      {"model": "m", "seed": seed, "arm": "base" if p == 0 else
                                                            "positive", "positive": p,
                       "negative": n},
                      {"metrics": [{"name": "positive_rate", "value": v + seed / 100,
                                    "stderr": 0.02, "n": 400},
                                   {"name": "positive_logit", "value": math.log(v / (1 - v)),
                                    "stderr": 0.1, "n": 400}]})
    (exp / "study.yaml").write_text("experiment: toy\nsetting: rebound\ntask: toy-reviews\n")
    s = collect(exp)
    index = (exp / "report" / "index.md").read_text()
    for t in s["tables"]["rebound"]:
        assert f"### {t.title}" in index
    assert "![rebound](rebound.png)" in index and "study.yaml" in index and "setting: rebound" in index
    r = subprocess.run([sys.executable, "-m", "launch", "collect", str(exp)], capture_output=True,
                       text=True,
                       env={**__import__("os").environ, "COLUMNS": "80"},
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    # (the last line is the report's path)
    assert max(len(l) for l in out[:-1]) <= 80, max(out[:-1], key=len)
    assert not any(__import__("re").search(r"\d ± \d", l)
                   for l in out), "mean and CI print as two tables"
    assert "0.815" in r.stdout and out[-1].startswith("report: ") and out[-1].rstrip().endswith("index.md (18 cells "
                                                                                                  "in tables, 0 not)")
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "launch", "collect", str(exp), "--json"],
                       capture_output=True, text=True, cwd=root)
    got = __import__("json").loads(r.stdout)
    assert r.returncode == 0 and got["records"] == 18 and got["tables"]["rebound"][0]["title"] == s["tables"][
        "rebound"][0].title
    r = subprocess.run(f"{sys.executable} -m launch collect {exp} --json | head -1", shell=True,
                       capture_output=True, text=True, cwd=root)
    assert r.stdout.strip() == "{" and "Traceback" not in r.stderr, r.stderr


def test_collector_setting1_table(tmp_path):
    exp = tmp_path / "s1"
    losses = {(1, 2): 0.30, (2, 1): 0.20, (1, 3): 0.35, (3, 1): 0.22, (2, 3): 0.25, (3, 2): 0.26}
    for (i, j), v in losses.items():
        fake_cell(exp, "cross", f"m.t{i}-D{j}", {"model": "m", "seed": 1, "from": i, "to": j,
                                                  "direction": "forward" if i < j else "inverse"},
                  {"mean_loss": v})
    s = collect(exp)
    rows = s["tables"]["resistance"][0].rows
    assert [r["pair"] for r in rows] == ["θ1↔θ2", "θ1↔θ3", "θ2↔θ3"]
    gap = [r["paired gap"] for r in rows]   # one seed: a number, no interval
    assert gap[0].text() == "+0.1000" and gap[0].half is None and gap[2].mean < 0
    # numbers as numbers, by name
    with open(exp / "report" / "tables" / "resistance.csv", newline="") as f:
        first = next(csv.DictReader(f))
    assert float(first["paired gap"]) == pytest.approx(0.30 - 0.20) and first["inverse (θj→Di)"] == repr(0.20)
    assert (exp / "report" / "resistance.png").stat().st_size > 1000
    # the paper's Table 1 layout: one row per dataset and model, neighbouring pairs first
    (wide,) = [t for t in s["tables"]["resistance"] if t.name == "resistance-paper"]
    assert wide.columns == ["dataset", "model", "θ2→θ1", "θ1→θ2", "θ3→θ2", "θ2→θ3", "θ3→θ1",
                            "θ1→θ3"]
    (row,) = wide.rows
    assert [row[c].mean for c in wide.columns[2:]] == [0.20, 0.30, 0.26, 0.25, 0.22, 0.35]


def test_collector_setting1_kl_table_in_the_papers_shape(tmp_path):
    """The paper's Table 2: per slice pair, the KL change of the forward and the inverse run (the
    cross eval's kl_to_base from its start slice), the gap paired by seed; the paper's printed pair
    beside ours; no rebound table or plot from Setting I's evals."""
    exp = tmp_path / "s1kl"
    kl = {(1, 2): 0.45, (2, 1): 0.28, (2, 3): 0.30, (3, 2): 0.31}
    for seed in (1, 2, 3):
        for (i, j), v in kl.items():
            co = {"model": "llama2-7b", "seed": seed, "from": i, "to": j,
                  "direction": "forward" if i < j else "inverse"}
            fake_cell(exp, "cross", f"m.s{seed}.t{i}-D{j}", co, {"mean_loss": 0.2})
            fake_cell(exp, "eval", f"m.s{seed}.t{i}-D{j}", co,
                      {"metrics": [{"name": "kl_to_base", "value": v + seed / 100,
                                    "stderr": 0.01, "n": 8},
                                   {"name": "bits_per_token/target", "value": 1.0,
                                    "stderr": 0.1, "n": 8}]})
    s = collect(exp, study={"task": "alpaca", "setting": "resistance"},
                models={"llama2-7b": "meta-llama/Llama-2-7b-hf"})
    loss, wide, klt = s["tables"]["resistance"]
    assert (loss.name, wide.name, klt.name) == ("resistance", "resistance-paper", "resistance-kl")
    assert len(loss.rows) == 2 and wide.rows[0]["dataset"] == "alpaca"
    first, second = klt.rows
    assert first["pair"] == "θ1↔θ2" and first["forward (θi→Dj)"].mean == pytest.approx(0.47)
    assert first["inverse (θj→Di)"].mean == pytest.approx(0.30) and first["forward (θi→Dj)"].n == 3
    assert first["paired gap"].text() == "+0.1700 ± 0.0000 resolved"
    assert second["paired gap"].mean == pytest.approx(-0.01) and second["paired gap"].resolved
    assert "rebound" not in s["tables"] and not (exp / "report" / "rebound.png").exists()
    with open(exp / "report" / "tables" / "resistance-kl.csv", newline="") as f:
        assert float(next(csv.DictReader(f))["paired gap"]) == pytest.approx(0.17)
    paper = {r["slices"]: r for r in s["tables"]["paper"][0].rows if r["metric"] == "kl_to_base"}
    assert paper["θ1→D2"]["paper"] == "0.4568" and paper["θ1→D2"]["ours"].mean == pytest.approx(0.47)
    assert paper["θ2→D1"]["paper"] == "0.2796" and paper["θ2→D1"]["ours"].n == 3


def test_collect_cli_bad_dir(capsys, tmp_path):
    assert launch_main(["collect", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("error: RUN_DIR:")
    assert not (tmp_path / "nope").exists()


def test_models_sort_by_their_numbers():
    from eval.stats import natural
    assert sorted(["toy-20k", "toy-5k", "toy-10k"], key=natural) == ["toy-5k", "toy-10k", "toy-20k"]
    assert sorted(["tl-3T", "tl-2.5T", "tl-2T"], key=natural) == ["tl-2T", "tl-2.5T", "tl-3T"]


def test_statistics_say_what_they_are(tmp_path):
    """Exact t quantiles at any df (not 1.96 past 30, which narrows intervals), the interval type
    and n in every table header, and LaTeX that escapes every special character."""
    from eval.analysis import Curve, Point, rebound_tables
    from eval.stats import t_quantile
    from eval.tables import Table, latex_escape
    table = {1: 12.7062, 2: 4.3027, 5: 2.5706, 30: 2.0423, 40: 2.0211, 100: 1.9840, 1000: 1.9623}
    assert all(abs(t_quantile(0.95, df) - q) < 1e-4 for df, q in table.items())
    assert abs(t_quantile(0.99, 5) - 4.0321) < 1e-4
    vals = [0.5 + 0.01 * (i % 7) for i in range(40)]
    m, half, n = mean_ci(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / 39)
    assert n == 40 and half == pytest.approx(2.0227 * sd / math.sqrt(40), rel=1e-3)   # t(0.975, 39)
    exp = tmp_path / "toy"
    for seed in (1, 2, 3):
        for p, neg in ((0, 0), (100, 0), (100, 50)):
            fake_cell(exp, "eval", f"m.s{seed}.p{p}.n{neg}",
                      {"model": "m", "seed": seed, "arm": "base" if p == 0 else
                                                              "positive", "positive": p,
                       "negative": neg},
                      rate(0.5 + 0.01 * seed + p / 1000))
    fake_cell(exp, "eval", "m.s4.p100.n0",
              {"model": "m", "seed": 4, "arm": "positive", "positive": 100,
                                            "negative": 0}, rate(0.6))
    s = collect(exp)
    for t in s["tables"]["rebound"]:
        assert "95%" in t.title and "seeds" in t.title, t.title
    title = s["tables"]["rebound"][0].title
    assert "3-4 seeds" in title, "a table whose cells rest on different numbers of seeds says so"
    records = [{"stage": "eval",
                "coords": {"model": "m", "arm": "positive", "positive": 1, "negative": 0,
                                            "seed": 1}, "data": rate(0.7)}]
    _, curves = rebound_tables(records, "positive_rate")
    assert curves == [Curve("m", "positive", 1,
                            [Point(0, 0.7, curves[0].points[0].half, 1, {1: 0.7})])]
    special = "a_b 50% #1 & {x} $y ^z ~w \\ <|> θ1↔θ2 → −0.1 · Δ ±"
    esc = latex_escape(special)
    assert not re.search(r"(?<!\\)[_%#&{}$^~]",
                         esc.replace(r"\{", "").replace(r"\}", "").replace("{}", "")
                         .replace(r"\$", "").replace("$", "")), esc
    assert all(c.isascii() for c in esc), esc
    t = Table("t", special, [special])
    t.add(special)
    assert t.latex().count(esc) == 3
    md = Table("h", "Hooke", ["|D_pre|·Δpre", "n"])
    md.add("+1.0 ± 0.1", 3)
    assert [len(re.split(r"(?<!\\)\|", line)) for line in md.markdown().splitlines()[2:]] == [4, 4,
                                                                                              4]


def test_window_statistics_resolve_an_ordering_and_a_return(tmp_path):
    """Paired drops per window with CIs, the deeper-minus-shallowest difference marked resolved only
    when its CI excludes 0, and the negatives needed to reach each seed's own base level
    (interpolated)."""
    from eval.analysis import Curve, Point, window_stats, window_table
    seeds = (1, 2, 3)
    noise = {1: -0.01, 2: 0.0, 3: 0.01}

    def curve(start, drops, at0):
        pts = [Point(0, at0, 0, 3, {s: at0 + noise[s] for s in seeds})]
        for n, d in drops.items():
            pts.append(Point(n, at0 - d, 0, 3,
                             {s: at0 + noise[s] - d - noise[s] * (n / 100) for s in seeds}))
        return Curve("m", "positive", start, pts)
    base = Curve("m", "base", 0, [Point(0, 0.0, 0, 3, {s: 0.0 for s in seeds})])
    shallow = curve(100, {25: 0.5, 50: 1.0, 100: 2.0, 200: 3.0}, 1.5)   # reaches 0 at 75 examples
    # drops 1.2 more by 100: resolved
    deep = curve(800, {25: 0.8, 50: 1.6, 100: 3.2, 200: 4.0}, 3.0)
    same = curve(400, {25: 0.5, 50: 1.0, 100: 2.0 + 0.0, 200: 3.0}, 1.5)
    stats = {r["start"]: r for r in window_stats([shallow, same, deep, base], "positive_logit")}
    m = sum(stats[800]["deeper@100"].values()) / 3
    assert m == pytest.approx(-1.2) and set(stats[800]) >= {"change@25", "change@50", "change@100",
                                                            "return"}
    assert stats[100]["return"][2] == pytest.approx(75.0) and stats[100]["return_of"] == 3
    t = window_table([shallow, same, deep, base], "positive_logit")
    rows = {r["start"]: r for r in t.rows}
    assert t.columns[3:] == ["change@25", "change@50", "change@100", "change@200",
                             "minus smallest start @100",
                             "negatives to base", "seeds reaching base",
                             "negatives minus smallest start's"]
    deeper = {k: r["minus smallest start @100"] for k, r in rows.items()}
    assert deeper[800].resolved and deeper[800].text().endswith("resolved") and not deeper[400].resolved
    # a fall is negative
    assert deeper[100] is None and rows[100]["change@25"].mean == pytest.approx(-0.5)
    assert rows[100]["negatives to base"].mean == pytest.approx(75, abs=1)
    assert rows[100]["seeds reaching base"] == "3/3" and "95%" in t.title
    flat = curve(200, {25: 0.1, 50: 0.2, 100: 0.3, 200: 0.4}, 1.5)       # never reaches the base
    (r,) = [x for x in window_table([flat, base], "positive_logit").rows]
    assert r["negatives to base"] is None and r["seeds reaching base"] == "0/3"


def test_kl_returns_to_the_from_base_arm_a_level_every_model_can_reach():
    """KL to the base never falls to the paper's 0.01 once negatives have moved the model (the base
    itself, fine-tuned on them, sits at 0.10-0.20): the windows table also counts the negatives
    until an aligned start's KL reaches the same seed's from-base curve (linear between grid
    points, on their difference), and that count minus the smallest start's per seed, the paper's
    Table 3 direction (there: deeper alignment needs fewer). Reference values by hand."""
    from eval.analysis import Curve, Point, window_stats, window_table
    negs, seeds = (0, 25, 50, 100, 200), (1, 2, 3)
    fb_kl = {0: 0.0, 25: 0.10, 50: 0.14, 100: 0.17, 200: 0.20}

    def curve(arm, start, values):   # the same curve in every seed, shifted by seed / 1000
        return Curve("m", arm, start, [Point(n, v, 0, 3, {s: v + s / 1000 for s in seeds})
                                       for n, v in zip(negs, values)])
    fb = curve("from-base", 0, [fb_kl[n] for n in negs])
    # start 100: 0.30 0.22 0.16 ...: the difference to from-base is 0.30, 0.12, 0.02, -0.01 ->
    # crosses between 50 and 100 at 50 + 0.02 / 0.03 * 50 = 83.3; start 400: 0.50 0.40 0.30 0.20
    # 0.18: differences 0.5, 0.3, 0.16, 0.03, -0.02 -> 100 + 0.03 / 0.05 * 100 = 160
    shallow = curve("positive", 100, [0.30, 0.22, 0.16, 0.16, 0.19])
    deep = curve("positive", 400, [0.50, 0.40, 0.30, 0.20, 0.18])
    rows = {r["start"]: r for r in window_stats([fb, shallow, deep], "kl_to_base")
            if r["arm"] == "positive"}
    assert rows[100]["return"] == {} and rows[400]["return"] == {}   # never below 0.01
    assert rows[100]["return_fb"] == pytest.approx({s: 50 + 0.02 / 0.03 * 50 for s in seeds})
    assert rows[400]["return_fb"] == pytest.approx({s: 160.0 for s in seeds})
    assert rows[400]["deeper-return"] == pytest.approx({s: 160 - (50 + 0.02 / 0.03 * 50)
                                                        for s in seeds})
    t = window_table([fb, shallow, deep], "kl_to_base")
    (row,) = [r for r in t.rows if r["start"] == 400]
    assert row["negatives to from-base kl_to_base"].mean == pytest.approx(160)
    assert row["negatives minus smallest start's"].mean == pytest.approx(76.7, abs=0.1)


def cross_cells(exp: Path) -> dict:
    """Setting I's θ1↔θ2 in 3 seeds whose levels differ (0.30 / 0.40 / 0.50 loss); forward 0.01
    harder in each."""
    levels = {1: 0.30, 2: 0.40, 3: 0.50}
    for seed, level in levels.items():
        for (i, j), v in {(1, 2): level + 0.01, (2, 1): level}.items():
            fake_cell(exp, "cross", f"m.s{seed}.t{i}-D{j}",
                      {"model": "m", "seed": seed, "from": i, "to": j,
                                                              "direction": "forward" if i < j
                       else "inverse"},
                      {"mean_loss": v})
    return levels


def test_setting1_gap_is_paired_by_seed(tmp_path):
    """Seeds shift both directions together (0.30 / 0.40 / 0.50 loss); forward is 0.01 harder in
    every seed: the unpaired CIs overlap, the paired gap is +0.010 ± 0 and resolved."""
    exp = tmp_path / "s1"
    cross_cells(exp)
    (row,) = collect(exp)["tables"]["resistance"][0].rows
    gap = row["paired gap"]
    assert gap.text() == "+0.0100 ± 0.0000 resolved" and gap.mean > 0 and gap.resolved
    assert row["entropy-corrected gap"] is None


def test_setting1_gap_corrected_for_the_targets_entropy(tmp_path):
    """Forward is 0.01 nats harder in every seed, but its target D2 has 0.03 nats more entropy than
    D1 (its sampler's own -log p): the excess over each target's entropy is 0.02 lower forward, so
    corrected, the inverse is not easier (resolved); the table shows both targets' entropy."""
    exp = tmp_path / "s1"
    for seed, level in cross_cells(exp).items():
        for i, h in ((1, level - 0.1), (2, level - 0.07)):
            fake_cell(exp, "responses", f"m.s{seed}.theta{i}",
                      {"model": "m", "seed": seed, "slice": i},
                      {"metrics": [{"name": "sampler_nats_per_token/train", "value": h,
                                    "stderr": 0.0, "n": 400}]})
    (row,) = collect(exp)["tables"]["resistance"][0].rows
    assert row["paired gap"].text().startswith("+0.0100 ± 0.0000") and row["paired gap"].resolved
    assert (row["target entropy Di"].text(), row["target entropy Dj"].text()) == ("0.3000",
                                                                                  "0.3300")
    corrected = row["entropy-corrected gap"]
    assert corrected.text().startswith("-0.0200 ± 0.0000") and corrected.mean < 0 and corrected.resolved


def test_window_statistics_compare_models_at_the_same_start():
    """Setting III: each model's paired drop minus the first model's at the same start, per seed."""
    from eval.analysis import Curve, Point, window_table
    seeds = {1: -0.02, 2: 0.0, 3: 0.02}
    at = lambda v: {s: v + e for s, e in seeds.items()}
    curve = lambda model, d: Curve(model, "positive", 800,
                                   [Point(0, 2.0, 0, 3, at(2.0)),
                                    Point(100, 2.0 - d, 0, 3, {s: 2.0 - d + 2 * e for s, e in seeds.items()})])
    t = window_table([curve("small", 1.0), curve("large", 1.5)], "positive_logit")
    assert "minus small @100" in t.columns
    small, large = (r["minus small @100"] for r in t.rows)
    assert small is None and large.text().startswith("-0.500 ± 0.000") and large.resolved


def test_start_adjusted_effect_against_another_models_aligned_arm():
    """Control (a): a base pre-trained on the shifted corpus (model 'shifted', arm from-base)
    against the first model's aligned arm. Planted: drop@100 = -0.5 x start level, plus 0.2 for the
    shifted base (it falls less); the OLS recovers c = +0.200 and the slope -0.5, resolved."""
    from eval.analysis import Curve, Point, adjusted_table
    noise = {1: 0.01, 2: -0.01, 3: 0.0}

    def curve(model, arm, start, level, c=0.0):
        seeds0 = {s: level + e for s, e in noise.items()}
        return Curve(model, arm, start, [Point(0, level, 0, 3, seeds0),
                                         Point(100, 0, 0, 3, {s: v - 0.5 * v + c + noise[s] / 3
                                                              for s, v in seeds0.items()})])
    curves = [curve("gpt", "positive", 100, 1.0), curve("gpt", "positive", 200, 2.0),
              curve("gpt", "positive", 400, 3.0), curve("shifted", "from-base", 0, 1.5, 0.2)]
    rows = [r for r in adjusted_table(curves, "positive_logit").rows if r["window"] == 100]
    assert [(r["model"], r["arm"], r["vs aligned arm of"]) for r in rows] == [("shifted",
                                                                               "from-base", "gpt")]
    c, b = rows[0]["arm effect c"], rows[0]["start slope b"]
    assert c.text().startswith("+0.200 ± ") and c.mean == pytest.approx(0.2,
                                                                        abs=1e-3) and c.resolved
    assert b.text() == "-0.500"


def test_hooke_products_paired_by_seed(tmp_path):
    """The jointly trained model (1,000 pre-training and 100 positive examples) perturbed by 50
    negatives: its pre-training rate rises 0.01 bits (± 0.001 by seed) and its positive rate 0.1, so
    |D|·Δ is 10 for both (the theorem's equality: paired difference 0, unresolved; ratio 1.000); the
    aligned arm takes |D_pos| from its start volume (20: products 20 and 10, a difference resolved
    in every seed)."""
    exp = tmp_path / "h"

    def bits(pre, pos):
        return {"metrics": [{"name": f"bits_per_token/{r}", "value": v, "stderr": 0.0, "n": 200}
                            for r, v in (("pretrain", pre), ("positive", pos))]}
    for seed, e, d in ((1, 0.0, 0.001), (2, 0.1, -0.001), (3, 0.2, 0.0)):
        co = {"model": "joint", "seed": seed, "pretrain_n": 1000, "pretrain_positive": 100,
              "positive": 0}
        fake_cell(exp, "eval", f"j.s{seed}.n0", {**co, "arm": "base", "negative": 0},
                  bits(2 + e, 1 + e))
        fake_cell(exp, "eval", f"j.s{seed}.n50", {**co, "arm": "from-base", "negative": 50},
                  bits(2.01 + e + d, 1.1 + e))
        co = {"model": "joint", "seed": seed, "pretrain_n": 1000, "arm": "positive", "positive": 20}
        fake_cell(exp, "eval", f"p.s{seed}.n0", {**co, "negative": 0}, bits(2 + e, 1 + e))
        fake_cell(exp, "eval", f"p.s{seed}.n50", {**co, "negative": 50}, bits(2.02 + e, 1.5 + e))
    (t,) = collect(exp)["tables"]["compression"]
    text = lambda r: {c: tables_text(v) for c, v in r.items()}
    fb = [text(r) for r in t.rows if r["arm"] == "from-base"]
    pos = [text(r) for r in t.rows if r["arm"] == "positive"]
    assert t.columns[4:6] == ["Δ token/positive", "Δ token/pretrain"]
    assert len(fb) == 1 and fb[0]["Δ token/pretrain"].startswith("+0.0100 ± 0.0025")
    assert fb[0]["Δ token/positive"].startswith("+0.1000 ± 0.0000")
    assert fb[0]["|D_pre|·Δpre"].startswith("+10.0000 ±") and fb[0]["|D_pos|·Δpos"].startswith("+10.0000 ±")
    assert fb[0]["ratio"] == "1.000"
    # per seed +1, -1, 0: equal, unresolved
    assert fb[0]["pre − pos"] in ("+0.0000 ± 2.4841", "-0.0000 ± 2.4841")
    assert pos[0]["|D_pre|·Δpre"].startswith("+20.0000") and pos[0]["|D_pos|·Δpos"].startswith("+10.0000")
    assert pos[0]["ratio"] == "2.000"
    assert pos[0]["pre − pos"].startswith("+10.0000 ± 0.0000") and pos[0]["pre − pos"].endswith(" resolved")
    assert "mean ± t 95% over 3 seeds, 2 df" in t.title


def test_paper_numbers_beside_ours_and_tables_named_by_content(tmp_path):
    """The report's paper table puts the paper's printed number beside ours at the same coordinates
    (matched by the model's hub id, every start where the paper gives none), empty where the study
    lacks the cell; each table's CSV is named by what it holds, keeps numbers as numbers, and no CSV
    of an earlier collect stays behind."""
    exp = tmp_path / "imdb"
    for seed, (base, fell) in {1: (0.50, 0.10), 2: (0.56, 0.16)}.items():
        for p, n, v in ((0, 0, base), (5000, 0, 0.95), (5000, 2000, fell)):
            fake_cell(exp, "eval", f"l.s{seed}.p{p}.n{n}",
                      {"model": "llama", "seed": seed, "positive": p,
                                                            "negative": n,
                       "arm": "base" if p == 0 else "positive"},
                      rate(v))
    (exp / "report" / "tables").mkdir(parents=True)
    (exp / "report" / "tables" / "rebound-0.csv").write_text("old\n")
    s = collect(exp, study={"task": "imdb"}, models={"llama": "meta-llama/Llama-2-7b-hf"})
    (paper,) = s["tables"]["paper"]
    rows = {(r["arm"], r["start"]): r for r in paper.rows if r["metric"] == "positive_rate"}
    assert rows[("base", 0)]["paper"] == "about 0.54" and rows[("base", 0)]["ours"].mean == pytest.approx(0.53)
    assert rows[("positive", 5000)]["ours"].mean == pytest.approx(0.13) and rows[("positive", 5000)]["ours"].n == 2
    assert rows[("positive", 1000)]["ours"] is None and rows[("positive",
                                                              1000)]["paper"] == "about 0.37"
    assert not any(r["metric"] == "mean_loss"
                   for r in paper.rows), "Setting I's numbers belong to alpaca studies"
    names = sorted(p.name for p in (exp / "report" / "tables").glob("*.csv"))
    assert names == ["paper.csv", "rebound-positive_rate-llama-positive.csv",
                     "windows-positive_rate.csv"]
    with open(exp / "report" / "tables" / "paper.csv", newline="") as f:
        got = {(r["arm"], r["start"]): r for r in csv.DictReader(f)}
    assert float(got[("base", "0")]["ours"]) == pytest.approx(0.53) and got[("base",
                                                                             "0")]["ours n"] == "2"
    assert "| about 0.54 |" in (exp / "report" / "paper.md").read_text()
    assert collect(exp, study={"task": "imdb"})["tables"].get("paper") is None, "no hub id, no paper rows"


def test_setting1_answers_are_stripped_as_the_seed_strips_them(tmp_path, exp_dir, monkeypatch):
    """eval.strip: the same draws, each answer without its surrounding whitespace (the seed's
    .strip()). The toy tokenizer decodes without outer whitespace, so the real draws are padded here
    as a BPE model's would be."""
    from eval import evaluate
    from eval.evaluate import generate_main
    real = evaluate.generate
    monkeypatch.setattr(evaluate, "generate", lambda *a, **k: [f" {g}\n" for g in real(*a, **k)])
    from launch.core.jobs import GenerateJob, ModelRef
    from launch.core.spec import Data, Eval
    ref = ModelRef(path=str(exp_dir / "models" / "gpt2"))
    out = {}
    for strip in (False, True):
        job = GenerateJob(model=ref, prompts=Data(path="@world/data/prompts.jsonl"),
                          template="plain",
                          eval=Eval(prompts=6, max_new_tokens=6, temperature=1.0, strip=strip),
                          train_count=4, heldout_count=2, seed=3)
        cell = tmp_path / f"responses-{strip}"
        cell.mkdir()
        generate_main(job, Context("responses/x", {}, (), cell, exp_dir))
        out[strip] = [json.loads(l)["response"] for f in ("train.jsonl", "heldout.jsonl")
                      for l in (cell / f).read_text().splitlines()]
    assert any(r != r.strip() for r in out[False]), "the raw draws start with a space"
    assert out[True] == [r.strip() for r in out[False]]


def test_kl_table_counts_negatives_until_kl_to_the_base_falls_below_its_level(tmp_path):
    """The paper's KL table: unsafe examples until KL to the base < 0.01, per seed (linear between
    grid points), beside the paper's count in the `paper` table; KL's own base level (0) is never the
    criterion. Seed 1 crosses 0.01 at 900 negatives, seed 2 at 750; the larger start never does."""
    exp = tmp_path / "kl"
    kl = lambda v: {"metrics": [{"name": "kl_to_base", "value": v, "stderr": 0.001, "n": 400,
                                 "higher_is_better": False}]}
    curves = {(1000, 1): {0: 0.21, 500: 0.03, 1000: 0.005}, (1000, 2): {0: 0.22, 500: 0.02, 1000: 0.0},
              (2000, 1): {0: 0.25, 500: 0.2, 1000: 0.1}, (2000, 2): {0: 0.24, 500: 0.2, 1000: 0.1}}
    for seed in (1, 2):
        fake_cell(exp, "eval", f"l.s{seed}.base", {"model": "llama", "seed": seed, "positive": 0,
                                                   "negative": 0, "arm": "base"}, kl(0.0))
    for (p, seed), pts in curves.items():
        for n, v in pts.items():
            fake_cell(exp, "eval", f"l.s{seed}.p{p}.n{n}", {"model": "llama", "seed": seed,
                                                            "positive": p, "negative": n,
                                                            "arm": "positive"}, kl(v))
    s = collect(exp, study={"task": "safety"}, models={"llama": "meta-llama/Llama-2-7b-hf"})
    (windows,) = [t for t in s["tables"]["rebound"] if t.name == "windows-kl_to_base"]
    rows = {r["start"]: r for r in windows.rows}
    col = "negatives to kl_to_base < 0.01"
    assert col in windows.columns and "negatives to base" not in windows.columns
    assert rows[1000][col].mean == pytest.approx(825) and rows[1000][col].n == 2
    assert rows[1000]["seeds reaching base"] == "2/2" and rows[2000][col] is None
    (paper,) = s["tables"]["paper"]
    got = {r["start"]: r for r in paper.rows if r["metric"] == col}
    assert got[1000]["paper"] == "961" and got[1000]["ours"].mean == pytest.approx(825)
    assert got[2000]["paper"] == "844" and got[2000]["ours"] is None
    assert set(got) == {1000, 2000, 5000, 10000}
    # the same numbers in the paper's Table 3 layout: measures by row, positive volumes by column
    (t3,) = [t for t in s["tables"]["rebound"] if t.name == "kl-paper"]
    assert t3.columns == ["model", "measure", "1000", "2000"]
    after, needed, seeds = t3.rows
    assert after["measure"] == "KL to the base after alignment" and after["1000"].mean == pytest.approx(0.215)
    assert after["2000"].text() == "0.245 ± 0.064" and after["2000"].n == 2
    assert needed["measure"] == col and needed["1000"].mean == pytest.approx(825) and needed["2000"] is None
    assert (seeds["1000"], seeds["2000"]) == ("2/2", "0/2")
    with open(exp / "report" / "tables" / "kl-paper.csv", newline="") as f:
        assert [r["1000"] for r in csv.DictReader(f)][:2] == [repr(0.215), repr(825.0)]
