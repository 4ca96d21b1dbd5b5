"""The eval stage: generate on held-out prompts, score, measure compression rates and KL; write
result.json.

`main(job, ctx)` loads the checkpoint, takes the first `eval.prompts` prompts of data.prompts in a
fixed order (seed 0, the same for every cell), generates in length-sorted, left-padded batches with
the KV cache (greedy output equals one prompt at a time), scores the generations and writes
`generations.jsonl` and `result.json` (schema in README.md: one record per metric, with standard
error and n). `generate_main` is Setting I's `responses` stage: a slice's answers become train.jsonl
/ heldout.jsonl.

Run one cell by hand: python -m launch run-cell runs/<experiment>/eval/<cell id>
"""
from __future__ import annotations

import json
import math
import time
import typing
from pathlib import Path

import torch

from eval import scorers as S
from launch.core.jobs import Context, EvalJob, GenerateJob, jsonable
from launch.core.layout import atomic_write_json, atomic_write_text, resolve
from launch.core.schema import ConfigError
from train import data as D
from train.models import load_model, load_tokenizer

PROMPT_SEED = 0   # the held-out prompt order is the same for every cell of every study
RESULT_SCHEMA = "elastica.result/1"


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_SHARED: dict = {}


def shared(what: str, key, make):
    """What consecutive cells of one worker process share (launch.worker.run_cells): the scorer, the
    base model of the KL, dataset rows. Each is built once and only read, so a cell's result is the
    same as alone (bench P11 checks it bit for bit); one value per `what` is kept, so memory holds
    one scorer and one base model."""
    held = _SHARED.get(what)
    if held is None or held[0] != key:
        _SHARED.pop(what, None)   # free the old one before loading the new
        _SHARED[what] = (key, make())
    return _SHARED[what][1]


def version(path: str) -> tuple:
    """What changes when a local model folder is rewritten (file names, sizes, mtimes): part of a
    cache key, so a folder redone in place is loaded again. Hub ids are immutable snapshots: ()."""
    p = Path(path)
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir())
                 if f.is_file()) \
        if path and p.is_dir() else ()


def rows_of(data, exp_dir: Path) -> list[dict]:
    key = (json.dumps(jsonable(data), sort_keys=True), str(exp_dir))
    return shared(f"rows:{key}", key, lambda: D.load_rows(data, exp_dir))


def load(ref, exp_dir: Path):
    tok = load_tokenizer(ref, exp_dir)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = load_model(ref, exp_dir, tok, seed=0, dtype=dtype).to(device()).eval()
    return tok, model


def held_out_prompts(data, exp_dir: Path, n: int, skip: int = 0) -> list[str]:
    rows = rows_of(data, exp_dir)
    order = D.seeded_order(len(rows), PROMPT_SEED)
    if skip + n > len(rows):
        raise ConfigError("eval.prompts", f"needs {skip + n} prompts, {data.path} has {len(rows)}",
                          "lower eval.prompts (or slices.responses)")
    return [rows[i]["prompt"] for i in order[skip:skip + n]]


@torch.no_grad()
def generate(model, tok, prompts: list[str], template: str, max_new_tokens: int,
             temperature: float = 0.0,
             top_p: float = 1.0, batch_size: int = 32, seed: int = 0,
             nll: list | None = None) -> list[str]:
    """Continuations of each prompt, in the input order. Batches are length-sorted and left-padded.
    With `nll` (a list), it receives one (nats, tokens) per prompt: the sampler's own -log p of what
    it drew (temperature and top-p applied, EOS included), whose mean per token estimates the
    sampled data's entropy (0 when greedy)."""
    texts = [D.prompt_text(p, template) for p in prompts]
    enc = [tok(t)["input_ids"] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: (len(enc[i]), i))
    out: list[str] = [""] * len(texts)
    drawn: list = [(0.0, 0)] * len(texts)
    pad = tok.pad_token_id
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        n = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), n), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), n), dtype=torch.long)
        for k, i in enumerate(idx):
            ids[k, n - len(enc[i]):] = torch.tensor(enc[i])
            mask[k, n - len(enc[i]):] = 1
        torch.manual_seed(seed + b)
        sample = temperature > 0
        gen = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                             max_new_tokens=max_new_tokens, do_sample=sample,
                             temperature=temperature if sample else None,
                             top_p=top_p if sample else None, top_k=None, pad_token_id=pad,
                             eos_token_id=tok.eos_token_id, use_cache=True,
                             output_scores=nll is not None, return_dict_in_generate=True)
        seq = gen.sequences
        # the processed scores (temperature, top-p) of each step, in fp32
        if nll is not None and sample:
            new = seq[:, n:]
            lp = torch.stack([sc.float().log_softmax(-1).gather(1, new[:, t:t + 1])[:, 0]
                              for t, sc in enumerate(gen.scores)], 1).cpu()
            eos = (new == tok.eos_token_id).long()
            live = ((torch.cumsum(eos, 1) - eos) == 0).cpu()   # up to and including the first EOS
            for k, i in enumerate(idx):
                drawn[i] = (-float(lp[k][live[k]].sum()), int(live[k].sum()))
        for k, i in enumerate(idx):
            out[i] = tok.decode(seq[k, n:], skip_special_tokens=True)
    if nll is not None:
        nll[:] = drawn
    return out


def metric(name: str, values: list[float], higher_is_better: bool, *, share: bool = False,
           **info: str) -> dict:
    """Mean and standard error; for a share of 0/1 outcomes the binomial sqrt(p (1 - p) / n)."""
    n = len(values)
    mean = sum(values) / n if n else float("nan")
    if share and n:
        var = mean * (1 - mean)
    else:
        var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"name": name, "value": mean, "stderr": math.sqrt(var / n) if n else float("nan"),
            "n": n, "higher_is_better": higher_is_better, **info}


def logit_metric(m: dict) -> dict:
    """The rate as log-odds (delta method for the error): equal steps there mean equal evidence."""
    p = min(max(m["value"], 1e-4), 1 - 1e-4)
    return {**m, "name": m["name"].replace("rate", "logit"), "value": math.log(p / (1 - p)),
            "stderr": m["stderr"] / (p * (1 - p)), "space": "logit"}


def write_result(ctx: Context, job, metrics: list, timings: dict | None = None) -> list[str]:
    """result.json: the cell's metrics and its place in the study (its context's stage, coords)."""
    atomic_write_json(ctx.out_dir / "result.json", {
        "schema": RESULT_SCHEMA, "cell": ctx.out_dir.name, "stage": ctx.stage,
        "coords": ctx.coords, "checkpoint": job.model.path, "seed": job.seed, "metrics": metrics,
        **({"timings": timings} if timings is not None else {})})
    return ["result.json"]


def main(job: EvalJob, ctx: Context) -> list[str]:
    t0 = time.time()
    ev, dev = job.eval, device()
    tok, model = load(job.model, ctx.exp_dir)
    metrics, timings = [], {}
    need_gen = ev.scorer.kind != "none" or ev.kl_to_base
    if need_gen:
        prompts = held_out_prompts(job.prompts, ctx.exp_dir, ev.prompts)
        prompts = [p for p in prompts for _ in range(ev.samples_per_prompt)]
        t = time.time()
        gens = generate(model, tok, prompts, job.template, ev.max_new_tokens, ev.temperature,
                        ev.top_p, ev.batch_size, job.seed)
        timings["generate_s"] = time.time() - t
        atomic_write_text(ctx.out_dir / "generations.jsonl",
                          "".join(json.dumps({"prompt": p, "response": g}) + "\n"
                                  for p, g in zip(prompts, gens)))
        if ev.scorer.kind != "none":
            t = time.time()
            scorer = shared("scorer", (ev.scorer, str(dev), version(ev.scorer.model)),
                            lambda: S.make_scorer(ev.scorer, dev))
            # a classifier reads the answer; a score model the conversation (EOS as its scorer says)
            texts = gens if ev.scorer.kind in ("rule", "classifier") else \
                [D.prompt_text(p, job.template) + D.response_text(g, job.template)
                 for p, g in zip(prompts, gens)]
            scores = scorer(texts)
            timings["score_s"] = time.time() - t
            info: dict[str, typing.Any] = {"scorer": ev.scorer.kind,
                                           "scorer_model": ev.scorer.model, "space": "probability"}
            # prompts repeat K times in a row
            if ev.scorer.kind == "score_model" and ev.aggregate == "worst":
                k = ev.samples_per_prompt
                worst = [min(scores[i:i + k]) for i in range(0, len(scores), k)]
                metrics.append(metric("score", worst, True, **{**info, "space": "score"},
                                      statistic=f"mean over prompts of the worst of {k} samples"))
            elif ev.scorer.kind == "score_model":
                metrics.append(metric("score", scores, True, **{**info, "space": "score"}))
            # the paper's number: the share of generations classified positive (binomial error)
            else:
                m = metric("positive_rate", [float(x > 0.5) for x in scores], True, share=True,
                           **info, statistic="share classified positive")
                metrics += [m] + ([logit_metric(m)] if ev.logit_space else [])
                metrics.append(metric("positive_prob", scores, True, **info,
                                      statistic="mean P(positive)"))
        if ev.kl_to_base:
            base = shared("base", (job.base, str(ctx.exp_dir),
                                   version(resolve(job.base.path, ctx.exp_dir))),
                          lambda: load(job.base, ctx.exp_dir)[1])
            ex = D.tokenize([{"prompt": p, "response": g} for p, g in zip(prompts, gens)], tok,
                            job.template, job.max_length, "sft")
            metrics.append(metric("kl_to_base", S.kl_per_token(model, base, ex, tok.pad_token_id),
                                  False, scorer="kl", unit="nats/token"))
    attr = {i for w, i in tok.get_vocab().items()
            if w.endswith(("+", "-"))} if job.attribute_tokens else None
    for role, data in sorted(job.compression.items()):
        rows = rows_of(data, ctx.exp_dir)
        order = D.seeded_order(len(rows), PROMPT_SEED)[:ev.compression_examples]
        # every set on the same token class, the response (text-only rows are all response):
        # pre-training rows scored on their prompts too would mix in tokens that alignment never
        # trains (the Hooke comparison)
        ex = D.tokenize([rows[i] for i in order], tok, job.template, job.max_length, "sft")
        per, per_attr = S.bits_per_token(model, ex, tok.pad_token_id, attribute_ids=attr)
        metrics.append(metric(f"bits_per_token/{role}", per, False, scorer="compression",
                              unit="bits/token"))
        if per_attr:
            metrics.append(metric(f"bits_per_attribute_token/{role}", per_attr, False,
                                  scorer="compression", unit="bits/token"))
    timings["total_s"] = time.time() - t0
    return write_result(ctx, job, metrics, timings)


def generate_main(job: GenerateJob, ctx: Context) -> list[str]:
    """Setting I: the slice answers train_count + heldout_count held-out prompts (its data D_i)."""
    ev = job.eval
    tok, model = load(job.model, ctx.exp_dir)
    prompts = held_out_prompts(job.prompts, ctx.exp_dir, job.train_count + job.heldout_count)
    nll: list = []
    gens = generate(model, tok, prompts, job.template, ev.max_new_tokens, ev.temperature, ev.top_p,
                    ev.batch_size, job.seed, nll)
    rows = [json.dumps({"prompt": p, "response": g.strip() if ev.strip
                        else g}) + "\n" for p, g in zip(prompts, gens)]
    atomic_write_text(ctx.out_dir / "train.jsonl", "".join(rows[:job.train_count]))
    atomic_write_text(ctx.out_dir / "heldout.jsonl", "".join(rows[job.train_count:]))
    # the target's own entropy, for the entropy-corrected Setting I gap: the sampler's nats per
    # token on each file (per answer, then its mean and error; token-weighted in the value)
    metrics = []
    for name, part in (("train", nll[:job.train_count]), ("heldout", nll[job.train_count:])):
        m = metric(f"sampler_nats_per_token/{name}", [a / max(t, 1) for a, t in part], False,
                   unit="nats/token",
                   statistic="the sampler's -log p of its own answers (temperature, top-p applied)")
        metrics.append({**m, "value": sum(a for a, _ in part) / max(sum(t for _, t in part), 1)})
    return write_result(ctx, job, metrics) + ["train.jsonl", "heldout.jsonl"]
