"""P1 and P1b: the trainer's tokens/s against a bare PyTorch loop (same model, batches, optimizer,
loss; CPU fp32) and against the HF Trainer with the same DeepSpeed config. All three trainers run
alternately in one process, three times each. (P2, the micro-batch cut, is bench/padding.py.)

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

from launch.core.jobs import ModelRef, TrainJob
from launch.core.spec import Data, Init, Recipe, Runtime
from launch.worker import close_distributed
from train import data as D

STEPS = 12
GLOBAL, MICRO, MAXLEN = 32, 8, 256
RUNTIME = Runtime(micro_batch=MICRO, save_every_steps=10 ** 6)


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


def setup(job: TrainJob, exp: Path):
    """What every side starts from: the tokenizer, the job's examples in its seeded order, the
    seeded model."""
    from train.models import load_model, load_tokenizer
    tok = load_tokenizer(job.model, exp)
    rows = D.load_rows(job.data, exp)
    order = D.seeded_order(len(rows), job.seed)[:max(job.milestones)]
    ex = D.tokenize([rows[i] for i in order], tok, job.template, job.recipe.max_length, "lm")
    return tok, ex, load_model(job.model, exp, tok, job.seed)


def bare_loop(job: TrainJob, exp: Path) -> float:
    """The same maths as the trainer, with nothing around it: tokens/s over the steps."""
    tok, ex, model = setup(job, exp)
    r = job.recipe
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, betas=r.betas, eps=1e-8,
                            weight_decay=r.weight_decay)
    tokens, t0 = 0, time.perf_counter()
    for s, e in D.global_batches(len(ex), r.global_batch):
        denom = sum(ex[i].loss_tokens for i in range(s, e))
        for mb in D.micro_batches(list(range(s, e)), ex, 0, 1, RUNTIME.micro_batch):
            ids, mask, labels, w = D.collate(ex, mb, tok.pad_token_id)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            tgt = labels[:, 1:]
            keep = tgt != -100
            lp = torch.log_softmax(logits,
                                   -1).gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
            (-(lp.sum(-1) * w).sum() / denom).backward()
            tokens += int(mask.sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return tokens / (time.perf_counter() - t0)


def trainer_run(job: TrainJob, exp: Path) -> float:
    from train.trainer import Trainer
    with tempfile.TemporaryDirectory() as out:
        t = Trainer(job, Path(out), exp, RUNTIME)
        t0 = time.perf_counter()
        t.run()
        wall = time.perf_counter() - t0
        rows = [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return sum(r["tokens"] for r in rows) / wall


def hf_trainer_run(job: TrainJob, exp: Path, sampling: str) -> float:
    """The HF Trainer on the same examples, model init, optimizer and DeepSpeed config (without the
    one key that lets our trainer own the step boundary: the HF Trainer relies on DeepSpeed's own
    accumulation). sampling "sequential" feeds the examples in our seeded order, so both train on
    the same global batches (the HF Trainer pads each micro-batch to its longest); "group_by_length"
    is its own padding remedy, which changes the batches (it sorts megabatches of 50 micro-batches
    by length). Timed from train begin (after the engine is built, as for ours) to train end;
    tokens/s counts real (non-pad) tokens."""
    import transformers
    from train.trainer import ds_config
    tok, ex, model = setup(job, exp)
    r = job.recipe
    cfg = ds_config(job, 1, False, RUNTIME)
    cfg.pop("managed_gradient_accumulation")
    pad = tok.pad_token_id

    def collate(batch):
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.tensor([b["input_ids"] + [pad] * (n - len(b["input_ids"])) for b in batch])
        labels = torch.tensor([b["labels"] + [-100] * (n - len(b["labels"])) for b in batch])
        mask = torch.tensor([[1] * len(b["input_ids"]) + [0] * (n - len(b["input_ids"]))
                             for b in batch])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    class Timer(transformers.TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.wall = time.perf_counter() - self.t0

    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out, per_device_train_batch_size=RUNTIME.micro_batch,
            gradient_accumulation_steps=r.global_batch // RUNTIME.micro_batch, num_train_epochs=1,
                                              learning_rate=r.lr,
            lr_scheduler_type="constant", max_grad_norm=r.grad_clip, weight_decay=r.weight_decay,
            adam_beta1=r.betas[0], adam_beta2=r.betas[1], adam_epsilon=1e-8,
                                              train_sampling_strategy=sampling,
            deepspeed=cfg, report_to=[], save_strategy="no", logging_strategy="no",
                                              disable_tqdm=True,
            dataloader_num_workers=0, seed=job.seed, use_cpu=True)
        data = [{"input_ids": e.input_ids, "labels": e.labels} for e in ex]
        t = transformers.Trainer(model=model, args=args, train_dataset=data, data_collator=collate,
                                 callbacks=[timer])
        t.train()
    return sum(len(e.input_ids) for e in ex) / timer.wall


def main():
    exp = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    world = tiny_world(exp)
    make_data(world, exp / "reviews.jsonl", GLOBAL * STEPS)
    job = TrainJob(model=ModelRef(path="", init=Init(arch="gpt2", layers=4, width=256, heads=4,
                                                     context=MAXLEN),
                                  tokenizer=str(world / "tokenizer")),
                   data=Data(path=str(exp / "reviews.jsonl")),
                   recipe=Recipe(algorithm="lm", lr=1e-4, global_batch=GLOBAL, max_length=MAXLEN,
                                 zero_stage=0, precision="fp32"),
                   seed=0, template="plain", milestones=(GLOBAL * STEPS,))
    trainer_run(job, exp)   # warm-up: DeepSpeed's JIT op, caches
    try:
        import accelerate  # noqa: F401
        hf, hf_group = [], []
    except ImportError:
        hf = hf_group = None
    ours, bare = [], []
    for _ in range(3):      # alternate, so that a noisy machine hits every side alike
        ours.append(trainer_run(job, exp))
        bare.append(bare_loop(job, exp))
        if hf is not None:
            hf.append(hf_trainer_run(job, exp, "sequential"))
            hf_group.append(hf_trainer_run(job, exp, "group_by_length"))
    close_distributed()
    ratio = statistics.median(ours) / statistics.median(bare)
    report(id="P1", measure="trainer tokens/s (CPU fp32, GPT-2 4x256, IMDb-like lengths, ZeRO 0)",
           value=round(statistics.median(ours)), baseline="bare PyTorch loop "
                                                          f"{round(statistics.median(bare))} tok/s",
           ratio=round(ratio, 3), target=">= 0.90", met=ratio >= 0.90,
           runs=f"ours {spread(ours)}; bare {spread(bare)}")
    if hf is None:
        report(id="P1b", measure="trainer tokens/s vs the HF Trainer with the same DeepSpeed config", value=None,
               baseline="HF Trainer", ratio=None, target=">= 1.0", met=None,
               runs="not run: accelerate not installed (make setup)")
    else:
        ratio = statistics.median(ours) / statistics.median(hf)
        group = statistics.median(ours) / statistics.median(hf_group)
        report(id="P1b", measure="trainer tokens/s vs the HF Trainer (same model, global batches, "
                                 "optimizer, "
               "DeepSpeed ZeRO 0 config)", value=round(statistics.median(ours)),
               baseline=f"HF Trainer {round(statistics.median(hf))} tok/s", ratio=round(ratio, 3),
               target=">= 1.0",
               met=ratio >= 1.0, runs=f"ours {spread(ours)}; HF {spread(hf)}; HF with "
                                      "group_by_length (other "
               f"batches) {spread(hf_group)}, ratio {group:.3f}")


if __name__ == "__main__":
    main()
