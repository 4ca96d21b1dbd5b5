"""P9: host memory per rank when a training cell loads its model under ZeRO-3: peak RSS of each of 2
CPU ranks (gloo) from start to a ready DeepSpeed engine, for a ~220 M-parameter Llama saved like a
hub repo (bf16 safetensors, tokenizer), bf16 training.

Side by side, alternately, each in fresh processes: the trainer's loading (training dtype,
partitioned as it is built: transformers' DeepSpeed integration runs from_pretrained under
zero.Init) against the previous loading (every rank builds the whole model in fp32, then DeepSpeed
casts and partitions it). The measure is the peak up to the built model: what follows (the engine's
partitions, master weights and gradient buffers) lives in device memory on a GPU, in host memory
only on CPU.

    .venv/bin/python bench/load_memory.py [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, report

RANK_CODE = r'''
import json, resource, sys, torch
from pathlib import Path
from launch.core.jobs import ModelRef, TrainJob
from launch.core.spec import Data, Recipe
from train.models import load_model, load_tokenizer
from train.trainer import ds_config, setup_distributed
import deepspeed
mode, path = sys.argv[1], Path(sys.argv[2])
rank, world = setup_distributed()
ref = ModelRef(path=str(path))
job = TrainJob(model=ref, data=Data(path="x"), seed=0, template="plain", milestones=(1,),
               recipe=Recipe(zero_stage=3, precision="bf16"))
cfg = ds_config(job, world, False)
tok = load_tokenizer(ref, path)
if mode == "trainer":
    model = load_model(ref, path, tok, 0, dtype=torch.bfloat16, zero3_config=cfg)
else:
    model = load_model(ref, path, tok, 0)   # whole, fp32, on every rank
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
built = peak()
engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters()], config=cfg)
print(json.dumps({"rank": rank, "built": built, "engine": peak()}))
'''


def make_model(out: Path) -> int:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    vocab = {f"w{i}": i for i in range(31996)}
    vocab.update({"<unk>": 31996, "<s>": 31997, "</s>": 31998, "<pad>": 31999})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(out)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                      num_hidden_layers=12,
                      num_attention_heads=16, max_position_embeddings=512, dtype="bfloat16")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)   # stored in 16 bits, as Llama-2's hub repo
    model.save_pretrained(out, max_shard_size="100MB")   # sharded with an index, as hub repos are
    return sum(p.numel() for p in model.parameters())


def run(mode: str, path: Path) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(2):
        env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
                   PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_CODE, mode, str(path)], cwd=ROOT,
                                      env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    peaks = []
    for p in procs:
        out, err = p.communicate(timeout=1200)
        if p.returncode != 0:
            raise SystemExit(f"{mode} rank failed: {err[-2000:]}")
        peaks += [json.loads(l) for l in out.splitlines() if l.startswith('{"rank"')]
    return peaks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    params = make_model(tmp / "model")
    ours, before = [], []
    for _ in range(args.repeats):
        ours += run("trainer", tmp / "model")
        before += run("fp32-whole", tmp / "model")
    o, b = max(r["built"] for r in ours), max(r["built"] for r in before)
    oe, be = max(r["engine"] for r in ours), max(r["engine"] for r in before)
    report(id="P9", measure="peak host RSS per rank until the model is built, Llama "
                            f"{params / 1e6:.0f}M (bf16 "
           "safetensors in 5 shards), ZeRO-3, bf16, 2 CPU ranks (MiB)", value=round(o),
           baseline=f"whole fp32 model on every rank {round(b)} MiB", ratio=round(o / b, 3),
           target="< 1 (no rank holds the whole model in fp32)", met=o < b,
           runs=f"max over ranks and {args.repeats} runs; the fp32 model alone is "
                f"{params * 4 / 2**20:.0f} MiB; "
                f"peak with the engine built {round(oe)} vs {round(be)} MiB (on CPU the engine's "
                "partitions, master "
                "weights and gradient buffers are host memory; on a GPU they are device memory)")


if __name__ == "__main__":
    main()
