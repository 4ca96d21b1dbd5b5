"""Shared helpers of the benchmarks: repeated timing, the machine description, and a tiny local
world + model.

Each benchmark prints one JSON line per measure ({"id", "measure", "value", "baseline", "ratio",
"target", "met", "runs", ...}); bench/run_all.py collects them into docs/benchmarks.md. Run one:
.venv/bin/python bench/<name>.py
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))


def cpu_name() -> str:
    """The CPU model and core count: what names a machine in docs/benchmarks.md."""
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                     if l.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def machine() -> str:
    import torch
    return f"{cpu_name()}, torch {torch.__version__}, Python {platform.python_version()}"


def timed(fn, repeats: int = 3) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def spread(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3g}, min {min(xs):.3g}, max {max(xs):.3g} (n={len(xs)})"


def report(**row) -> dict:
    print(json.dumps(row), flush=True)
    return row


def tiny_world(out: Path, pretrain: int = 3000):
    """A toy world and a small GPT-2 saved like a hub model (tokenizer + safetensors)."""
    from launch.core.spec import World
    from train.toyworld import write_world
    if not (out / "world" / "tokenizer").exists():
        write_world(World(pretrain=pretrain, alignment=2000, prompts=500), out / "world")
    return out / "world"


def word_tokenizer(out: Path, words: int = 32000) -> Path:
    """A word-level tokenizer over 'w0'..'w<words-1>' (+ PAD, EOS, BOS, UNK), saved like a hub
    repo's: synthetic text of any length without a download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {f"w{i}": i for i in range(words)}
    vocab.update({"[PAD]": words, "</s>": words + 1, "<s>": words + 2, "[UNK]": words + 3})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                            pad_token="[PAD]", unk_token="[UNK]").save_pretrained(out)
    return out
