"""Nested milestones against separate runs, with the whole training state at each milestone written
to disk.

For each (ZeRO stage, precision) given, this rank trains one nested run with the milestones (some
inside a global batch of 16, some on its edge) and one separate run per milestone, on the real
trainer and DeepSpeed. At every milestone it writes `state_tensors(engine)` (every tensor reachable
from the engine: 16-bit weights, fp32 masters, Adam's moments and steps, buffers) to
`<out>/z<stage>-<precision>/<run>/<milestone>.rank<r>.pt`; `compare` reads them back, with each
milestone's summary. Several ranks: start one process per rank with RANK, WORLD_SIZE, MASTER_ADDR
and MASTER_PORT set. tests/test_trainer.py runs it on CPU; tests/gpu_check.py on a GPU.

    python tests/fork_chain.py OUT MODEL_DIR DATA_JSONL 24,48,72 3:bf16 0:fp32:drop ... [--gradient-checkpointing]
(a third field sets Recipe.tail: drop, the seed's rule; its runs are under
z<stage>-<precision>-drop)
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GLOBAL_BATCH = 16


def digest(t):
    """A tensor's exact bytes as a hash (reduction buckets are a GB), with the tensor itself when it
    is small."""
    import hashlib
    import torch
    raw = t.contiguous().view(-1).view(torch.uint8).numpy()
    return {"sha": hashlib.sha256(memoryview(raw)).hexdigest(), "dtype": str(t.dtype),
            "shape": tuple(t.shape), "values": t if t.numel() <= 1 << 20 else None}


def where_of(out: Path, zero: int, precision: str, tail: str = "partial") -> Path:
    return out / (f"z{zero}-{precision}" + ("-drop" if tail == "drop" else ""))


def chain(out: Path, model: Path, data: Path, milestones: tuple[int, ...], zero: int,
          precision: str, gradient_checkpointing: bool = False, tail: str = "partial") -> None:
    import torch
    from launch.core.jobs import ModelRef, TrainJob
    from launch.core.spec import Data, Recipe, Runtime
    from train.state import state_tensors
    from train.trainer import Trainer

    class Recording(Trainer):
        # called at each milestone, the state as it is saved
        def save_weights(self, name: str) -> None:
            state = {path: digest(t) for path, t in state_tensors(self.engine).items()}
            torch.save(state, self.out / f"{name}.rank{self.rank}.pt")
            super().save_weights(name)

    def job(ms):
        recipe = Recipe(algorithm="sft", lr=1e-3, global_batch=GLOBAL_BATCH, max_length=64,
                        zero_stage=zero, precision=precision, tail=tail)
        return TrainJob(model=ModelRef(path=str(model)), data=Data(path=str(data)), recipe=recipe,
                        seed=7, template="plain", milestones=ms)
    rt = Runtime(micro_batch=4, save_every_steps=1000,
                 gradient_checkpointing=gradient_checkpointing)
    where = where_of(out, zero, precision, tail)
    Recording(job(milestones), where / "nested", out, rt).run()
    for m in milestones:
        Recording(job((m,)), where / f"alone{m}", out, rt).run()


def compare(out: Path, milestones, zero: int, precision: str, ranks: int,
            tail: str = "partial") -> list[str]:
    """Every difference between the nested run and the separate runs, one line each; [] when exact.
    """
    import json
    import torch
    where, bad = where_of(out, zero, precision, tail), []
    for m in milestones:
        a, b = (json.loads((where / run / "summary.json").read_text())["milestones"][f"n{m}"]
                for run in ("nested", f"alone{m}"))
        if a != b:
            bad.append(f"n{m}: the summaries differ: {a} vs {b}")
        for r in range(ranks):
            a = torch.load(where / "nested" / f"n{m}.rank{r}.pt")
            b = torch.load(where / f"alone{m}" / f"n{m}.rank{r}.pt")
            if set(a) != set(b):
                bad.append(f"n{m} rank {r}: the state's tensors differ: "
                           f"{sorted(set(a) ^ set(b))[:4]}")
                continue
            for k in a:
                if a[k]["sha"] != b[k]["sha"] or a[k]["shape"] != b[k]["shape"]:
                    x, y = a[k]["values"], b[k]["values"]
                    by = f" by {(x.float() - y.float()).abs().max().item():.3g}" if x is not None and \
                        x.shape == y.shape else ""
                    bad.append(f"n{m} rank {r}: {k} differs{by}")
    return bad


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--gradient-checkpointing"]
    out, model, data, ms = Path(args[0]), Path(args[1]), Path(args[2]), tuple(int(x) for x in args[3].split(","))
    for combo in args[4:]:
        zero, precision, *tail = combo.split(":")
        chain(out, model, data, ms, int(zero), precision, "--gradient-checkpointing" in sys.argv,
              *tail)
