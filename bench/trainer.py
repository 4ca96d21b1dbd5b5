"""P1 and P2: the trainer's tokens/s against a bare PyTorch loop (same model, batches, optimizer, loss; CPU fp32),
and the padding share of its length-sorted micro-batches against naive padding on an IMDb-like length mix.

    .venv/bin/python bench/trainer.py
"""
from __future__ import annotations

import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, report, spread, tiny_world  # noqa: F401  (sys.path set by common)

import torch

from launch.jobs import ModelRef, TrainJob
from launch.spec import Data, Init, Recipe
from train import data as D

STEPS = 12
GLOBAL, MICRO, MAXLEN = 32, 8, 256


def imdb_like_lengths(n: int, seed: int = 0, cap: int = 512) -> list[int]:
    """Review lengths in tokens: log-normal around 230 with IMDb's long tail, truncated at `cap`."""
    rng = random.Random(seed)
    return [max(8, min(cap, int(rng.lognormvariate(math.log(230), 0.65)))) for _ in range(n)]


def make_data(world: Path, out: Path, n: int) -> Path:
    words = [w for w in json.loads((world / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
             if not w.startswith(("[", "<"))]
    rng = random.Random(1)
    with open(out, "w") as f:
        for length in imdb_like_lengths(n, cap=MAXLEN - 2):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(length))}) + "\n")
    return out


def bare_loop(job: TrainJob, exp: Path) -> float:
    """The same maths as the trainer, with nothing around it: tokens/s over the steps."""
    from train.trainer import load_model, load_tokenizer
    tok = load_tokenizer(job.model, exp)
    rows = D.load_rows(job.data, exp)
    order = D.seeded_order(len(rows), job.seed)[:max(job.milestones)]
    ex = D.tokenize([rows[i] for i in order], tok, job.template, job.recipe.max_length, "lm")
    model = load_model(job.model, exp, tok, job.seed)
    r = job.recipe
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, betas=r.betas, eps=1e-8, weight_decay=r.weight_decay)
    tokens, t0 = 0, time.perf_counter()
    for s, e in D.global_batches(len(ex), r.global_batch):
        denom = sum(ex[i].loss_tokens for i in range(s, e))
        for mb in D.micro_batches(list(range(s, e)), ex, 0, 1, r.micro_batch):
            ids, mask, labels, w = D.collate(ex, mb, tok.pad_token_id)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            tgt = labels[:, 1:]
            keep = tgt != -100
            lp = torch.log_softmax(logits, -1).gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
            (-(lp.sum(-1) * w).sum() / denom).backward()
            tokens += int(mask.sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return tokens / (time.perf_counter() - t0)


def trainer_run(job: TrainJob, exp: Path) -> float:
    from train.trainer import Trainer
    with tempfile.TemporaryDirectory() as out:
        t = Trainer(job, Path(out), exp)
        t0 = time.perf_counter()
        t.run()
        wall = time.perf_counter() - t0
        rows = [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return sum(r["tokens"] for r in rows) / wall


def main():
    exp = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    world = tiny_world(exp)
    make_data(world, exp / "reviews.jsonl", GLOBAL * STEPS)
    job = TrainJob(model=ModelRef(path="", init=Init(arch="gpt2", layers=4, width=256, heads=4, context=MAXLEN),
                                  tokenizer=str(world / "tokenizer")),
                   data=Data(path=str(exp / "reviews.jsonl")),
                   recipe=Recipe(algorithm="lm", lr=1e-4, global_batch=GLOBAL, micro_batch=MICRO, max_length=MAXLEN,
                                 zero_stage=0, precision="fp32", save_every_steps=10 ** 6),
                   seed=0, template="plain", milestones=(GLOBAL * STEPS,))
    trainer_run(job, exp)   # warm-up: DeepSpeed's JIT op, caches
    ours, bare = [], []
    for _ in range(3):      # alternate, so that a noisy machine hits both sides alike
        ours.append(trainer_run(job, exp))
        bare.append(bare_loop(job, exp))
    ratio = statistics.median(ours) / statistics.median(bare)
    report(id="P1", measure="trainer tokens/s (CPU fp32, GPT-2 4x256, IMDb-like lengths, ZeRO 0)",
           value=round(statistics.median(ours)), baseline=f"bare PyTorch loop {round(statistics.median(bare))} tok/s",
           ratio=round(ratio, 3), target=">= 0.90", met=ratio >= 0.90,
           runs=f"ours {spread(ours)}; bare {spread(bare)}")

    lengths = imdb_like_lengths(4096, seed=3)
    ex = [D.Example(list(range(n)), list(range(n))) for n in lengths]
    ours_pad = naive_pad = real = 0
    for s, e in D.global_batches(len(ex), 64):
        pos = list(range(s, e))
        for mb in D.micro_batches(pos, ex, 0, 1, 8):
            ours_pad += len(mb) * max(lengths[i] for i in mb) - sum(lengths[i] for i in mb)
        for k in range(s, e, 8):
            mb = pos[k - s:k - s + 8]
            naive_pad += len(mb) * max(lengths[i] for i in mb) - sum(lengths[i] for i in mb)
        real += sum(lengths[s:e])
    share, naive = ours_pad / (real + ours_pad), naive_pad / (real + naive_pad)
    report(id="P2", measure="padding share of processed tokens (IMDb-like lengths, global batch 64, micro 8)",
           value=round(share, 4), baseline=f"naive padding to the longest in each micro-batch: {naive:.4f}",
           ratio=round(share / naive, 3), target="<= 0.05", met=share <= 0.05, runs="deterministic")


if __name__ == "__main__":
    main()
