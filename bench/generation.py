"""P6: batched generation (length-sorted, left-padded, KV cache) against one prompt at a time: same
greedy outputs, throughput ratio. A small GPT-2 on the toy world's held-out prompts, CPU.

    .venv/bin/python bench/generation.py
"""
from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from common import report, spread, tiny_world, timed

import torch

from eval.evaluate import generate

PROMPTS, NEW = 128, 24


def main():
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
    exp = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    world = tiny_world(exp)
    tok = AutoTokenizer.from_pretrained(world / "tokenizer")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=256, n_layer=4,
                                       n_head=4,
                                       bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id)).eval()
    rows = [json.loads(l)
            for l in (world / "data" / "prompts.jsonl").read_text().splitlines()[:PROMPTS]]
    # mixed lengths
    prompts = [" ".join(r["prompt"].split()[: 3 + i % 7]) for i, r in enumerate(rows)]
    out = {}
    batched = timed(lambda: out.__setitem__("b", generate(model, tok, prompts, "plain", NEW,
                                                          batch_size=64)))
    single = timed(lambda: out.__setitem__("s",
                                           [generate(model, tok, [p], "plain", NEW, batch_size=1)[0]
                                                  for p in prompts]), repeats=2)
    same = out["b"] == out["s"]
    tput_b = PROMPTS / statistics.median(batched)
    tput_s = PROMPTS / statistics.median(single)
    report(id="P6", measure=f"generation prompts/s ({PROMPTS} prompts, {NEW} new tokens, GPT-2 "
                            "4x256, greedy)",
           value=round(tput_b, 1), baseline=f"one prompt at a time {tput_s:.1f} prompts/s",
           ratio=round(tput_b / tput_s, 2),
           target=">= 5x, same outputs", met=same and tput_b / tput_s >= 5,
           runs=f"batched {spread(batched)} s; single {spread(single)} s; identical outputs: {same}")


if __name__ == "__main__":
    main()
