"""The GPU path, checked on CPU by emulating each constraint a GPU imposes (the real checks: `make
gpu-check`).

- NCCL serves CUDA tensors only: a torch-function mode marks every tensor that code of this repo
  makes without a `device=`, and the collectives refuse a marked tensor (on a GPU it would sit on
  the host).
- Gradient checkpointing must really recompute: each decoder layer runs twice per micro-batch when
  it is on.
- Host memory at load: under ZeRO-3 the model is partitioned as it is built, in the training dtype,
  with the checkpoint's values.
- DPO: one forward on the concatenated pair equals two forwards.
- Micro-batches: every rank the same count, never more than fixed micro-batching, each example once.
- The in-memory milestone fork: tests/test_trainer.py compares every milestone's whole state at each
  ZeRO stage.

    .venv/bin/python -m pytest -q tests/test_gpu_path.py
"""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import ROOT
from test_trainer import job
from train import data as D

EMULATE_NCCL = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    from torch.overrides import TorchFunctionMode
    ROOT = sys.argv[1]
    FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.tensor, torch.arange, torch.as_tensor}
    COLLECTIVES = ("all_reduce", "broadcast", "all_gather_into_tensor", "reduce_scatter_tensor", "reduce",
                   "all_gather")
    seen = {"checked": 0}

    def ours(depth=2):
        f = sys._getframe(depth)
        return f.f_code.co_filename.startswith(ROOT) and "/tests/" not in f.f_code.co_filename

    class HostTensors(TorchFunctionMode):
        """Marks tensors made by this repo's code without an explicit device: on a GPU they live on
        the host."""
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func in FACTORIES and "device" not in kwargs and ours():
                out._host_only = True
            return out

    def checked(name):
        real = getattr(dist, name)
        def wrapper(tensor, *a, **k):
            if ours() and getattr(tensor, "_host_only", False):
                raise RuntimeError(f"No backend type associated with device type cpu ({name} of a tensor made "
                                   f"without device= at {sys._getframe(1).f_code.co_filename}:"
                                   f"{sys._getframe(1).f_lineno})")
            seen["checked"] += ours()
            return real(tensor, *a, **k)
        return wrapper

    for name in COLLECTIVES:
        setattr(dist, name, checked(name))
''')


def run_script(code: str, *args, timeout=600) -> str:
    p = subprocess.run([sys.executable, "-c", code, str(ROOT), *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return p.stdout


def test_collectives_take_device_tensors(exp_dir, tmp_path):
    """Fails on a trainer that all-reduces a host tensor (its step metrics, its stop flag): on NCCL
    that is 'No backend type associated with device type cpu' after the first step."""
    from launch.core.jobs import jsonable
    jobs = [job(exp_dir, "llama", (40, 64)), job(exp_dir, "llama", (24,), "pairs", algorithm="dpo")]
    (tmp_path / "jobs.json").write_text(json.dumps([jsonable(j) for j in jobs]))
    code = EMULATE_NCCL + textwrap.dedent('''
        import json
        from pathlib import Path
        from launch.core.jobs import TrainJob
        from launch.core.schema import build
        from launch.core.spec import Runtime
        from train.trainer import Trainer
        tmp = Path(sys.argv[2])
        with HostTensors():
            for i, j in enumerate(json.loads((tmp / "jobs.json").read_text())):
                out = Trainer(build(TrainJob, j), tmp / f"cell{i}", Path(sys.argv[3]), Runtime(micro_batch=4)).run()
                print("ran", out)
        print("checked", seen["checked"])
    ''')
    out = run_script(code, tmp_path, exp_dir)
    assert "ran ['n40', 'n64']" in out and "ran ['n24']" in out
    assert int(out.split("checked")[-1]) >= 6, "the trainer's own collectives went through the check"


def test_the_emulation_refuses_a_host_tensor(tmp_path):
    """The check above can fail: a collective of a tensor made without device= is refused."""
    code = EMULATE_NCCL + textwrap.dedent('''
        import os
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
        dist.init_process_group("gloo")
        with HostTensors():
            exec(compile("ok = torch.zeros(2, device='cpu'); dist.all_reduce(ok)", ROOT + "/train/x.py", "exec"))
            try:
                exec(compile("bad = torch.zeros(2); dist.all_reduce(bad)", ROOT + "/train/x.py", "exec"))
            except RuntimeError as e:
                print("refused:", e)
        dist.destroy_process_group()
    ''')
    from conftest import free_port
    assert "refused: No backend type associated with device type cpu" in run_script(code,
                                                                                    free_port())


def test_gradient_checkpointing_recomputes_each_layer(exp_dir, tmp_path):
    """from_pretrained returns a model in eval mode, where HF skips checkpointing: the trainer must
    train()."""
    from launch.core.jobs import jsonable
    j = job(exp_dir, "llama", (16,))
    (tmp_path / "jobs.json").write_text(json.dumps([jsonable(j)] * 2))
    code = textwrap.dedent('''
        import json, sys
        from pathlib import Path
        from launch.core.jobs import TrainJob
        from launch.core.schema import build
        from launch.core.spec import Runtime
        from train.trainer import Trainer
        tmp = Path(sys.argv[2])
        for i, j in enumerate(json.loads((tmp / "jobs.json").read_text())):
            rt = Runtime(micro_batch=4, gradient_checkpointing=bool(i))
            t = Trainer(build(TrainJob, j), tmp / f"cell{i}", Path(sys.argv[3]), rt)
            calls = []
            for layer in t.engine.module.model.layers:   # inside the checkpointed forward: recomputed if it is on
                layer.mlp.register_forward_pre_hook(lambda m, a: calls.append(1))
            t.step(0, 16)
            print("training", t.engine.module.training, "forwards", len(calls))
    ''')
    out = run_script(code, tmp_path, exp_dir).splitlines()
    off, on = [l for l in out if l.startswith("training")]
    assert off.startswith("training True") and on.startswith("training True")
    n_off, n_on = int(off.split()[-1]), int(on.split()[-1])
    assert n_off > 0 and n_on == 2 * n_off, (n_off, n_on)


def test_zero3_loads_partitioned_in_the_training_dtype(exp_dir, tmp_path):
    """Under ZeRO-3 no rank builds the whole model: every parameter is a partition from construction
    on, in bf16, and gathered it holds the checkpoint's values (not a fresh init)."""
    code = textwrap.dedent('''
        import sys, torch, deepspeed
        from pathlib import Path
        from launch.core.jobs import ModelRef, TrainJob
        from launch.core.spec import Data, Recipe
        from train.models import load_model, load_tokenizer
        from train.trainer import ds_config, setup_distributed
        from safetensors.torch import load_file
        setup_distributed()
        path = Path(sys.argv[2])
        job = TrainJob(model=ModelRef(path=str(path)), data=Data(path="x"), seed=0, template="plain",
                       milestones=(1,), recipe=Recipe(zero_stage=3, precision="bf16"))
        ref = ModelRef(path=str(path))
        model = load_model(ref, path, load_tokenizer(ref, path), 0, dtype=torch.bfloat16,
                           zero3_config=ds_config(job, 1, False))
        params = list(model.named_parameters())
        print("partitioned", all(hasattr(p, "ds_id") and p.numel() == 0 for _, p in params))
        print("dtype", {str(p.ds_tensor.dtype) for _, p in params})
        saved = load_file(str(path / "model.safetensors"))
        worst = 0.0
        for name, p in params:
            with deepspeed.zero.GatheredParameters([p]):
                worst = max(worst, (p.data.float() - saved[name].to(torch.bfloat16).float()).abs().max().item())
        print("worst", worst)
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
        print("zero3 left on", is_deepspeed_zero3_enabled())
    ''')
    out = run_script(code, exp_dir / "models" / "llama")
    assert "partitioned True" in out and "dtype {'torch.bfloat16'}" in out
    assert "worst 0.0" in out and "zero3 left on False" in out


def test_dpo_one_forward_equals_two(exp_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from train.trainer import token_logps
    tok = AutoTokenizer.from_pretrained(exp_dir / "models" / "llama")
    model = AutoModelForCausalLM.from_pretrained(exp_dir / "models" / "llama").eval()
    rows = [json.loads(l)
            for l in (exp_dir / "world" / "data" / "pairs.jsonl").read_text().splitlines()[:6]]
    ex = D.tokenize(rows, tok, "chat", 64, "dpo")
    mb = [0, 3, 5, -2]   # a zero-weight repeat too
    with torch.no_grad():
        ids, mask, labels, w = D.collate_pair(ex, mb, tok.pad_token_id)
        both = token_logps(model, ids, mask, labels, "cpu")[0].sum(-1)
        c = token_logps(model, *D.collate(ex, mb, tok.pad_token_id)[:3], "cpu")[0].sum(-1)
        r = token_logps(model, *D.collate(ex, mb, tok.pad_token_id, True)[:3], "cpu")[0].sum(-1)
    assert ids.shape[0] == 2 * len(mb) and w.tolist() == [1, 1, 1, 0]
    assert torch.allclose(both[:len(mb)], c, atol=1e-4) and torch.allclose(both[len(mb):], r,
                                                                           atol=1e-4)
    assert not torch.allclose(c, r)


def safety_like(n: int, seed: int) -> list[D.Example]:
    """Chat answers: median about 200 tokens, a long tail cut at 2048."""
    rng = random.Random(seed)
    lens = [max(8, min(2048, int(rng.lognormvariate(math.log(200), 0.8)))) for _ in range(n)]
    return [D.Example(list(range(k)), list(range(k))) for k in lens]


@pytest.mark.parametrize("world,batch,micro",
                         [(1, 256, 4), (8, 256, 4), (16, 256, 4), (16, 64, 1), (4, 3, 2),
                                                (3, 10, 1)])
def test_micro_batches_are_balanced_and_never_more_than_fixed(world, batch, micro):
    ex = safety_like(4 * batch, seed=world * 1000 + batch)
    for s, e in D.global_batches(len(ex), batch):
        pos = list(range(s, e))
        cuts = [D.micro_batches(pos, ex, r, world, micro) for r in range(world)]
        steps = {len(c) for c in cuts}
        assert len(steps) == 1, "every rank takes the same number of micro-steps"
        assert steps.pop() <= math.ceil(len(pos) / (world * micro)), "never more than fixed micro-batching"
        real = sorted(i for c in cuts for mb in c for i in mb if i >= 0)
        assert real == pos, "each example exactly once"
        longest = max(ex[i].length for i in pos)
        for c in cuts:
            for mb in c:
                assert len(mb) * max(ex[abs(i) - 1 if i < 0 else i].length
                                     for i in mb) <= micro * longest
                assert all(i < 0 for i in mb) or all(i >= 0 for i in mb)
        dummies = sum(i < 0 for c in cuts for mb in c for i in mb)
        assert dummies == (max(0, world - len(pos)) if len(pos) < world else 0)


def test_a_failed_fused_adam_build_falls_back_to_torch_adamw(exp_dir, tmp_path):
    """On a GPU the trainer asks for DeepSpeed's FusedAdam; where its JIT build fails (here for
    real: once the process group is up, the compiler is /bin/false and the op cache empty) the cell
    trains with torch's AdamW and record.json says why."""
    from launch.core.jobs import jsonable
    (tmp_path / "job.json").write_text(json.dumps(jsonable(job(exp_dir, "llama", (16,)))))
    code = textwrap.dedent('''
        import json, os, sys
        from pathlib import Path
        import train.trainer as T
        from launch.core.jobs import TrainJob
        from launch.core.schema import build
        from launch.core.spec import Runtime
        tmp = Path(sys.argv[2])
        real = T.pick_optimizer

        def as_on_a_gpu(cuda):   # try FusedAdam's op, with a compiler that fails
            os.environ.update(CXX="/bin/false", TORCH_EXTENSIONS_DIR=str(tmp / "ext"))
            return real(True)
        T.pick_optimizer = as_on_a_gpu
        T.Trainer(build(TrainJob, json.loads((tmp / "job.json").read_text())), tmp / "cell", Path(sys.argv[3]),
                  Runtime(micro_batch=4)).run()
        print(json.dumps(json.loads((tmp / "cell" / "record.json").read_text())["runtime"]["optimizer"]))
    ''')
    p = subprocess.run([sys.executable, "-c", code, str(ROOT), str(tmp_path), str(exp_dir)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    chosen = json.loads(p.stdout.strip().splitlines()[-1])
    assert chosen["optimizer"] == "torch AdamW" and chosen["why"].startswith("FusedAdam's op did not build")
    assert (tmp_path / "cell" / "checkpoints" / "n16" / "model.safetensors").exists()


@pytest.mark.parametrize("local_rank,visible,device",
                         [("5", 8, 5), ("5", 1, 0), ("13", 8, 5), ("0", 1, 0)])
def test_each_rank_takes_a_device_it_can_see(monkeypatch, local_rank, visible, device):
    """torch.cuda.set_device(LOCAL_RANK) fails where a site binds one GPU per task (each rank sees
    device 0)."""
    from train.trainer import device_index
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert device_index(visible) == device
