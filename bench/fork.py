"""P10: what a milestone fork costs (a milestone inside a global batch: the trainer takes a side
step to the milestone, saves its weights, and undoes the step). Bytes written and seconds per fork
for the trainer's way (snapshot this rank's state into host memory, restore it in place) against the
previous way (a DeepSpeed checkpoint of the whole engine state saved to disk and loaded back), side
by side in one process, alternately, on a ~66 M-parameter Llama under ZeRO-3 (1 CPU rank, fp32,
after one optimizer step so the Adam moments exist). Exactness is checked after a LATER step, on the
whole training state (train.state.state_tensors: weights, fp32 masters, moments, buffers): a run
that forks at example 12 and then takes its step to 16 against a run that never forked, for each way
(the benchmark prints how many state tensors differ, and by how much). The milestone's own weights
are written either way and are not counted.

    .venv/bin/python bench/fork.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import report, spread, word_tokenizer

from launch.core.jobs import ModelRef, TrainJob
from launch.core.spec import Data, Init, Recipe, Runtime
from launch.worker import close_distributed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch
    from train.state import restore, snapshot, state_tensors
    from train.trainer import Trainer
    tmp = Path(tempfile.mkdtemp(prefix="bench-fork-"))
    word_tokenizer(tmp / "tok")
    with open(tmp / "data.jsonl", "w") as f:
        for i in range(16):
            f.write(json.dumps({"text": " ".join(f"w{(i * 7 + k) % 32000}"
                                                 for k in range(30))}) + "\n")
    job = TrainJob(model=ModelRef(path="",
                                  init=Init(arch="llama", layers=8, width=512, heads=8, context=64),
                                  tokenizer=str(tmp / "tok")),
                   data=Data(path=str(tmp / "data.jsonl")), seed=0, template="plain",
                   milestones=(16,),
                   recipe=Recipe(algorithm="lm", lr=1e-4, global_batch=8, max_length=64,
                                 zero_stage=3, precision="fp32"))
    rt = Runtime(micro_batch=4, save_every_steps=10 ** 6)
    t = Trainer(job, tmp / "cell", tmp, rt)
    params = sum(getattr(p, "ds_numel", p.numel()) for p in t.engine.module.parameters())
    t.step(0, 8)   # Adam moments exist from here on, as at any real milestone

    def weights():
        return torch.cat([p.ds_tensor.detach().flatten().clone()
                          for p in t.engine.module.parameters()])

    ours, disk, written, disk_off = [], [], [], []
    for _ in range(args.repeats):
        before = weights()
        t0 = time.perf_counter()
        snap = snapshot(t.engine)
        t1 = time.perf_counter()
        t.step(8, 12)   # the side step to the milestone: the same either way, not timed
        t2 = time.perf_counter()
        restore(t.engine, snap)
        ours.append(time.perf_counter() - t2 + t1 - t0)
        del snap
        assert torch.equal(weights(), before)

        where = tmp / "fork"
        t0 = time.perf_counter()
        t.engine.save_checkpoint(str(where), tag="fork", save_latest=False)
        t1 = time.perf_counter()
        written.append(sum(f.stat().st_size for f in where.rglob("*") if f.is_file()))
        t.step(8, 12)
        t2 = time.perf_counter()
        t.engine.load_checkpoint(str(where), tag="fork")
        disk.append(time.perf_counter() - t2 + t1 - t0)
        shutil.rmtree(where)
        disk_off.append((weights() - before).abs().max().item())

    def later_state(way: str) -> dict:
        """The whole state after the step to 16, with a fork at 12 taken `way` (or none) before it.
        """
        tr = Trainer(job, tmp / f"cell-{way}", tmp, rt)
        tr.step(0, 8)
        if way == "memory":
            snap = snapshot(tr.engine)
            tr.step(8, 12)
            restore(tr.engine, snap)
        elif way == "disk":
            tr.engine.save_checkpoint(str(tmp / "fork2"), tag="fork", save_latest=False)
            tr.step(8, 12)
            tr.engine.load_checkpoint(str(tmp / "fork2"), tag="fork")
        tr.step(8, 16)
        # not the 1 GB bucket
        return {k: v for k, v in state_tensors(tr.engine).items() if v.numel() < 1 << 26}
    ref = later_state("none")
    off = {}
    for way in ("memory", "disk"):
        got = later_state(way)
        diffs = [(got[k].double() - ref[k].double()).abs().max().item() for k in ref
                 if not torch.equal(got[k], ref[k])]
        off[way] = (len(diffs), max(diffs, default=0.0), len(ref))
    close_distributed()
    o, d = statistics.median(ours), statistics.median(disk)
    report(id="P10", measure=f"milestone fork, Llama {params / 1e6:.0f}M, ZeRO-3, 1 CPU rank: "
                             "seconds per fork "
           "(bytes written: 0)", value=round(o, 3),
           baseline=f"DeepSpeed checkpoint to disk and back: {d:.3f} s, "
                    f"{statistics.median(written) / 2**20:.0f} MiB "
                    "written and read per fork", ratio=round(d / max(o, 1e-9), 1),
           target="no bytes written, faster, the whole state exact after the next step",
           met=o < d and off["memory"][0] == 0,
           runs=f"in memory {spread(ours)} s, after the next step {off['memory'][0]} of "
                f"{off['memory'][2]} state "
                f"tensors differ from a run that never forked; disk {spread(disk)} s, weights "
                "after load_checkpoint "
                f"off by up to {max(disk_off):.2g}, after the next step {off['disk'][0]} of "
                f"{off['disk'][2]} state "
                f"tensors differ (by up to {off['disk'][1]:.2g})")


if __name__ == "__main__":
    main()
