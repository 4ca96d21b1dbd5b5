"""`make gpu-check`: prove the GPU path on one GPU in a few minutes, with no network and random
local weights.

Checks (one PASS/FAIL line each, then a JSON summary, also written to --out):
  train    a random-init tiny Llama saved like a hub repo, bf16, ZeRO-3, NCCL, gradient checkpointing: a nested
           run with milestones 24 and 56 inside a global batch and 32 and 64 on its edge; at EVERY milestone the
           whole training state (weights, fp32 masters, Adam's moments, the engine's buffers) equals a separate
           run on that many examples, bit for bit (tests/fork_chain.py); record.json says cuda, bf16 load, tf32
           on, and which optimizer ran (FusedAdam, or torch's AdamW with the reason)
  resume   SIGUSR2 between two milestones (the Slurm time-limit signal): it saves and exits 75; rerun, and every
           milestone's weights equal the uninterrupted run's
  eval     an eval cell: batched generation scored by a RoBERTa sequence classifier (POSITIVE/NEGATIVE labels)
           and one scored by a score model (backbone + score_head), both from local random weights; and Setting
           I's answer cell, its sampler's -log p of each drawn token read in fp32 from bf16 scores
  mfu      bench/gpu_mfu.py (P8): a ~0.5 B random-init Llama, bf16, ZeRO-3: model FLOPs utilisation; FAILS below
           the target (--mfu-target, default 0.40). In --smoke mode it is a measurement of the code path, no check

It runs on whatever torch / transformers the machine has; DeepSpeed, submitit and wandb must be
importable (on a bare GPU machine, install them from wheels: docs/gpu-check.md). Every cell runs as
`python -m launch run-cell`, the command every executor runs.

    python tests/gpu_check.py [--out runs/gpu-check.json]      # needs a CUDA GPU
    python tests/gpu_check.py --smoke                          # the same code path on CPU (gloo, fp32): CI runs it
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def word_tokenizer(out: Path, words: int = 200):
    """A word-level tokenizer in the hub layout (tokenizer.json + tokenizer_config.json) with
    BOS/EOS/PAD."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>",
                                         "</s>"] + [f"w{i}" for i in range(words)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    core.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                        special_tokens=[("<s>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.save_pretrained(out)
    return tok


def make_fixtures(root: Path, words: int = 200) -> dict:
    """Random local weights: a causal Llama, a RoBERTa classifier, a score model; a text and a
    prompt set."""
    import random
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel, RobertaConfig, RobertaForSequenceClassification
    torch.manual_seed(0)
    tok = word_tokenizer(root / "tok", words)
    n = len(tok)
    llama = dict(vocab_size=n, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=128, bos_token_id=2, eos_token_id=3)
    LlamaForCausalLM(LlamaConfig(**llama)).save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")
    clf = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=n, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                         intermediate_size=64,
        max_position_embeddings=140, pad_token_id=0, bos_token_id=2, eos_token_id=3, num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1}))
    clf.save_pretrained(root / "classifier")
    tok.save_pretrained(root / "classifier")
    LlamaModel(LlamaConfig(**llama)).save_pretrained(root / "score")
    tok.save_pretrained(root / "score")
    tensors = load_file(str(root / "score" / "model.safetensors"))
    tensors.update({"score_head.weight": torch.randn(1, 64) * 0.1,
                    "score_head.bias": torch.zeros(1)})
    save_file(tensors, str(root / "score" / "model.safetensors"), metadata={"format": "pt"})
    rng = random.Random(0)
    with open(root / "text.jsonl", "w") as f:
        for _ in range(400):
            k = rng.randint(8, 40)
            f.write(json.dumps({"prompt": " ".join(f"w{rng.randrange(words)}" for _ in range(4)),
                                "response": " ".join(f"w{rng.randrange(words)}"
                                                     for _ in range(k))}) + "\n")
    return {"llama": root / "llama", "classifier": root / "classifier", "score": root / "score",
            "data": root / "text.jsonl"}


def cell(exp: Path, stage: str, name: str, kind: str, job, outputs=(), runtime=None) -> Path:
    """A cell folder with the job.json the executors write (launch.plan.Cell.meta)."""
    from launch.plan import Cell
    from launch.worker import write_job
    d = exp / stage / name
    d.mkdir(parents=True, exist_ok=True)
    c = Cell(stage, kind, name, job, outputs=tuple(outputs))
    write_job(d, c.meta(runtime or {}))
    return d


def run_cell(d: Path, env: dict, signal_after_steps: int = 0) -> tuple[int, str]:
    p = subprocess.Popen([sys.executable, "-m", "launch", "run-cell", str(d)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if signal_after_steps:
        metrics = d / "metrics.jsonl"
        while p.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= signal_after_steps:
                p.send_signal(signal.SIGUSR2)
                break
            time.sleep(0.01)
    out, _ = p.communicate(timeout=900)
    return p.returncode, out


def weights(d: Path, m: int) -> dict:
    from safetensors.torch import load_file
    return load_file(str(d / "checkpoints" / f"n{m}" / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="CPU, gloo, fp32: the same code path, no "
                                                         "GPU claim")
    ap.add_argument("--out", default=str(ROOT / "runs" / "gpu-check.json"))
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--mfu-target", type=float, default=0.40,
                    help="the mfu check fails below it (bench P8)")
    args = ap.parse_args()
    import torch
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("error: --smoke: no CUDA device here (run with --smoke for the CPU path, or on a GPU "
              "machine)",
              file=sys.stderr)
        return 2
    from launch.core.jobs import EvalJob, GenerateJob, ModelRef, TrainJob
    from launch.core.spec import Data, Eval, Recipe, Scorer
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    exp = work / "exp"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               WANDB_MODE="disabled", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    if not cuda:
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    fx = make_fixtures(work / "fixtures")
    precision = "bf16" if cuda else "fp32"
    results: list[dict] = []

    def check(name: str, fn) -> None:
        t = time.time()
        try:
            detail = fn()
            ok = True
        except Exception as e:  # noqa: BLE001 - every failure becomes a FAIL line with its reason
            detail, ok = f"{type(e).__name__}: {e}"[-1500:], False
            if os.environ.get("GPU_CHECK_TRACEBACK"):
                traceback.print_exc()
        results.append({"check": name, "ok": ok, "seconds": round(time.time() - t, 1),
                        "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'} {name} ({time.time() - t:.0f} s): {detail}", flush=True)

    def train_job(milestones, **kw):
        r = dict(algorithm="sft", lr=1e-3, global_batch=16, max_length=64, zero_stage=3,
                 precision=precision)
        r.update(kw)
        return TrainJob(model=ModelRef(path=str(fx["llama"])), data=Data(path=str(fx["data"])),
                        recipe=Recipe(**r), seed=1, template="chat", milestones=tuple(milestones))

    def must_run(d: Path, **kw) -> str:
        rc, out = run_cell(d, env, **kw)
        if rc != 0:
            raise RuntimeError(f"{d.name} exit {rc}: {out.strip().splitlines()[-1:] or ''} ... "
                               f"{out[-1200:]}")
        return out

    def train():
        from fork_chain import compare
        # on CPU (the smoke CI runs) one milestone inside a batch and one at its end: the same
        # cases, half the separate runs
        ms, combo = (24, 32, 56, 64) if cuda else (24, 32), f"3:{precision}"
        r = subprocess.run([sys.executable, str(ROOT / "tests" / "fork_chain.py"),
                            str(work / "chain"),
                            str(fx["llama"]), str(fx["data"]), ",".join(map(str, ms)), combo,
                            "--gradient-checkpointing"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"tests/fork_chain.py exit {r.returncode}: "
                               f"{(r.stdout + r.stderr)[-1200:]}")
        bad = compare(work / "chain", ms, 3, precision, 1)
        if bad:
            raise AssertionError(f"{len(bad)} differences from separate runs, first: {bad[:3]}")
        nested = work / "chain" / f"z3-{precision}" / "nested"
        rt = json.loads((nested / "record.json").read_text())["runtime"]
        rec, ds = rt["precision"], json.loads((nested / "ds_config.json").read_text())
        summary["optimizer"] = rt["optimizer"]
        if ds["zero_optimization"]["stage"] != 3 or cuda and (rec["load_dtype"] != "bfloat16"
                                                              or not rec["tf32"]):
            raise AssertionError(f"not the recipe's numerics: {rec}, zero "
                                 f"{ds['zero_optimization']['stage']}")
        return (f"milestones {ms} (24 and 56 inside a batch of 16): the whole state equals separate runs "
                "at every one; "
                f"{rec['device']}, load {rec['load_dtype']}, tf32 {rec['tf32']}; optimizer "
                f"{rt['optimizer']['optimizer']} ({rt['optimizer']['why']})")

    def resume():
        ms = (40, 100, 160)
        job, rt = train_job(ms), {"micro_batch": 2, "save_every_steps": 3}
        full = cell(exp, "positive", "full", "train", job, [f"n{m}" for m in ms], rt)
        cut = cell(exp, "positive", "cut", "train", job, [f"n{m}" for m in ms], rt)
        must_run(full)
        rc, out = run_cell(cut, env, signal_after_steps=4)
        if rc != 75:
            raise AssertionError(f"after SIGUSR2 the cell should save and exit 75, got {rc}: "
                                 f"{out[-800:]}")
        steps = len((cut / "metrics.jsonl").read_text().splitlines())
        must_run(cut)
        diffs = {m: max_diff(weights(full, m), weights(cut, m)) for m in ms}
        if any(diffs.values()):
            raise AssertionError(f"resumed milestones differ from the uninterrupted run: {diffs}")
        return f"signalled at step {steps} of 10 (after n40, before n100), resumed; n40, n100, n160 equal"

    def evaluate():
        out = []
        for name, scorer in (("clf", Scorer(kind="classifier", model=str(fx["classifier"]))),
                             ("score",
                              Scorer(kind="score_model", model=str(fx["score"]), sign=-1.0))):
            ev = Eval(prompts=48, max_new_tokens=16, temperature=0.05, top_p=0.95, batch_size=16,
                      scorer=scorer)
            ref = ModelRef(path=str(fx["llama"]))
            job = EvalJob(model=ref, base=ref, prompts=Data(path=str(fx["data"])), eval=ev,
                          template="chat",
                          compression={"positive": Data(path=str(fx["data"]))}, seed=1,
                          max_length=64)
            d = cell(exp, "eval", name, "eval", job, ["result.json"])
            must_run(d)
            res = json.loads((d / "result.json").read_text())
            head = next(m for m in res["metrics"] if m["name"] in ("positive_rate", "score"))
            if head["n"] != 48 or not all(isinstance(m["value"], float) for m in res["metrics"]):
                raise AssertionError(f"{name}: unexpected metrics {res['metrics']}")
            gens = [json.loads(l)["response"]
                    for l in (d / "generations.jsonl").read_text().splitlines()]
            out.append(f"{head['name']} {head['value']:.3f} (n {head['n']}, "
                       f"{sum(map(bool, gens))}/48 non-empty, "
                       f"{res['timings']['total_s']:.1f} s)")
        # Setting I's answers: sampled in bf16, each drawn token's -log p read from the processed
        # scores in fp32
        ev = Eval(prompts=48, max_new_tokens=16, temperature=0.05, top_p=0.95, batch_size=16)
        job = GenerateJob(model=ModelRef(path=str(fx["llama"])), prompts=Data(path=str(fx["data"])),
                          eval=ev, template="chat", train_count=32, heldout_count=16, seed=1)
        d = cell(exp, "responses", "gen", "generate", job,
                 ["result.json", "train.jsonl", "heldout.jsonl"])
        must_run(d)
        ent = {m["name"]: m for m in json.loads((d / "result.json").read_text())["metrics"]}
        h = ent["sampler_nats_per_token/train"]
        if not (0 <= h["value"] < 20 and h["n"] == 32
                and ent["sampler_nats_per_token/heldout"]["n"] == 16):
            raise AssertionError(f"sampler entropy: {ent}")
        out.append(f"Setting I answers: sampler {h['value']:.3f} nats/token")
        return "; ".join(out)

    def mfu():
        r = subprocess.run([sys.executable,
                            str(ROOT / "bench" / "gpu_mfu.py")] + (["--smoke"] if not cuda else []),
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        row = next((json.loads(l) for l in r.stdout.splitlines() if l.startswith('{"id"')), None)
        if r.returncode != 0 or row is None:
            raise RuntimeError(f"exit {r.returncode}: {r.stderr[-1200:]}")
        if not cuda:
            return {**row, "note": "a measurement of the code path on CPU, not a check"}
        if row["ratio"] < args.mfu_target:
            raise AssertionError(f"MFU {row['ratio']:.3f} is below the target {args.mfu_target}: "
                                 f"{row}")
        return row

    summary = {"mode": "smoke (CPU, gloo, fp32)" if not cuda else "gpu",
               "device": torch.cuda.get_device_name()
               if cuda else "cpu", "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                      time.gmtime())}
    check("train", train)
    check("resume", resume)
    check("eval", evaluate)
    check("mfu", mfu)
    summary.update(passed=sum(r["ok"] for r in results), failed=sum(not r["ok"] for r in results),
                   checks=results)
    try:
        import deepspeed
        import transformers
        summary.update(deepspeed=deepspeed.__version__, transformers=transformers.__version__)
    except ImportError:
        pass
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    print(f"{summary['passed']} passed, {summary['failed']} failed")
    if not args.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
