"""P8: model FLOPs utilisation of the trainer's SFT step on one GPU: a random-init ~0.5B Llama
(Qwen1.5-0.5B-like shape), bf16, sequence length 512, ZeRO-3, synthetic tokens, no network. MFU = 6
* params * tokens/s / peak, with the attention term 12 * layers * hidden * seq added per token; peak
bf16 dense FLOP/s from --peak-tflops (H100 SXM: 989). Prints one JSON line like the other
benchmarks; under 5 minutes on one H100.

    .venv/bin/python bench/gpu_mfu.py [--steps 30] [--micro 8] [--peak-tflops 989]
    .venv/bin/python bench/gpu_mfu.py --smoke     # the same code path on CPU with a tiny Llama, fp32 (tests use it)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("WANDB_MODE", "disabled")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--zero", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="CPU, 2-layer 64-wide Llama, fp32, seq "
                                                         "64: no MFU claim")
    args = ap.parse_args()
    import torch
    if args.smoke:
        args.steps, args.micro, args.seq = 4, 2, 64
    elif not torch.cuda.is_available():
        print(json.dumps({"id": "P8", "measure": "GPU MFU", "value": None, "met": None,
                          "runs": "not run: no CUDA device"}))
        return
    from common import word_tokenizer
    from launch.core.jobs import ModelRef, TrainJob
    from launch.core.spec import Data, Init, Recipe, Runtime
    from launch.worker import close_distributed
    from train.trainer import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="mfu-"))
    word_tokenizer(tmp / "tok")
    g = torch.Generator().manual_seed(0)
    n = args.micro * (args.steps + 3)
    # every example exactly seq tokens: no padding in the measure
    with open(tmp / "data.jsonl", "w") as f:
        for _ in range(n):
            ids = torch.randint(0, 32000, (args.seq - 2,), generator=g).tolist()
            f.write(json.dumps({"text": " ".join(f"w{i}" for i in ids)}) + "\n")
    init = Init(arch="llama", layers=2, width=64, heads=4, context=args.seq) if args.smoke else \
        Init(arch="llama", layers=24, width=1024, heads=16, context=args.seq)
    job = TrainJob(model=ModelRef(path="", init=init, tokenizer=str(tmp / "tok")),
                   data=Data(path=str(tmp / "data.jsonl")),
                   recipe=Recipe(algorithm="lm", lr=1e-4, global_batch=args.micro,
                                 max_length=args.seq,
                                 zero_stage=args.zero, precision="fp32" if args.smoke else "bf16"),
                   seed=0, template="plain", milestones=(n,))
    t = Trainer(job, tmp / "cell", tmp, Runtime(micro_batch=args.micro, save_every_steps=10 ** 6))
    params = sum(p.numel() for p in t.engine.module.parameters()) or sum(
        getattr(p, "ds_numel", 0) for p in t.engine.module.parameters())
    t.run()
    close_distributed()
    # warm-up out
    rows = [json.loads(l) for l in (tmp / "cell" / "metrics.jsonl").read_text().splitlines()][3:]
    tok_s = sum(r["tokens"] for r in rows) / sum(r["seconds"] for r in rows)
    flops_per_token = 6 * params + 12 * init.layers * init.width * args.seq
    mfu = flops_per_token * tok_s / (args.peak_tflops * 1e12)
    if args.smoke:
        print(json.dumps({"id": "P8-smoke", "measure": f"CPU smoke: Llama {params / 1e6:.2f}M, "
                                                       f"ZeRO-{args.zero}",
                          "value": round(tok_s), "params": params,
                          "flops_per_token": flops_per_token,
                          "met": None, "runs": f"{len(rows)} timed steps"}))
        return
    print(json.dumps({"id": "P8", "measure": f"SFT MFU, random-init Llama {params / 1e9:.2f}B, "
                                             f"bf16, seq {args.seq}, "
                      f"micro {args.micro}, ZeRO-{args.zero}, {torch.cuda.get_device_name()}",
                      "value": round(mfu, 3), "baseline": f"peak {args.peak_tflops} TFLOP/s bf16",
                      "ratio": round(mfu, 3), "target": ">= 0.40", "met": mfu >= 0.40,
                      "runs": f"{len(rows)} steps, {tok_s:,.0f} tokens/s, "
                              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB peak"}))


if __name__ == "__main__":
    main()
