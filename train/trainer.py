"""The trainer: one training cell (SFT, DPO or plain LM loss) on the DeepSpeed engine, with
milestones and resume.

`main(job, out_dir, exp_dir)` trains `job.model` on the first max(job.milestones) examples of the
seeded order and writes `checkpoints/n<volume>/` (HF safetensors + tokenizer) at each milestone,
`metrics.jsonl`, `summary.json` and `ds_config.json`. Ranks come from
RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (submitit's TorchDistributedEnvironment exports
them); a single process needs none of them.

Exactness rules (README.md, "How the numbers stay exact"):
- A step's loss is the token mean over the whole global batch (sum over micro-batches and ranks), so
  the split into micro-batches and ranks does not change the maths.
- Nested milestones: a milestone inside a global batch forks the run (snapshot this rank's state in
  host memory, take the partial step on the examples up to the milestone, save weights, restore the
  snapshot, take the full step). The milestone weights equal a separate run on that many examples;
  the main run is not changed by having milestones, and only the milestone's weights reach the disk.
- GPU: the model loads in the training dtype, under ZeRO-3 partitioned as it is built; gradient
  checkpointing is non-reentrant and active (the engine is in train mode); tf32 matmuls are on;
  every tensor that enters a collective lives on the engine's device (NCCL refuses host tensors);
  DPO takes one forward per micro-batch.
- Resume: a rolling DeepSpeed checkpoint (engine, scheduler, RNG, position, loss sums) every
  `save_every_steps` steps and on SIGUSR1/SIGUSR2/SIGTERM at the next step boundary, then
  `Preempted` is raised (the CLI exits 75 for the launcher to requeue). Deleted when the cell is
  done.

Run one cell by hand: python -m launch run-cell runs/<experiment>/<stage>/<cell id>
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import time
import typing
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

# DeepSpeed picks its accelerator when it is imported: a rank without CUDA names the CPU first
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
import deepspeed  # noqa: E402

from launch.core.jobs import Context, Preempted, TrainJob, jsonable
from launch.core.layout import atomic_write_json, atomic_write_text, mark_preempted, milestone_name, publish_dir
from launch.core.schema import ConfigError
from launch.core.spec import PREFERENCE, Runtime
from launch.core.tracking import wandb_run
from train import data as D
from train.models import load_model, load_tokenizer
from train.state import restore, snapshot, snapshot_bytes

_STOP = {"signal": 0}


def _on_signal(signum, frame):
    _STOP["signal"] = signum


def setup_distributed():
    """Rank setup from the standard variables, then deepspeed.init_distributed (nccl or gloo)."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR",
                          str(Path.home() / ".cache" / "elastica" / "torch_extensions"))
    clear_stale_build_locks(Path(os.environ["TORCH_EXTENSIONS_DIR"]))
    if "WORLD_SIZE" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(device_index(torch.cuda.device_count()))
        # the paper's recipe: bf16 with tf32 matmuls (for the fp32 ones left, e.g. the log-softmax)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dist.get_rank(), dist.get_world_size()


def device_index(visible: int) -> int:
    """This rank's GPU among the `visible` ones: LOCAL_RANK, modulo them, since a site that binds
    one GPU per task shows each rank one device (CUDA_VISIBLE_DEVICES): LOCAL_RANK 5 is device 0."""
    return int(os.environ.get("LOCAL_RANK", 0)) % max(visible, 1)


def clear_stale_build_locks(ext_dir: Path) -> None:
    """DeepSpeed JIT-builds its ops under a `lock` file (torch's FileBaton); a build killed midway
    leaves it, and every later cell then waits on it forever without a word. A lock is waited on
    while a build could still be running (ELASTICA_BUILD_LOCK_STALE_S, default 600 s, since it was
    made) and then removed as stale."""
    stale_s = float(os.environ.get("ELASTICA_BUILD_LOCK_STALE_S", "600"))
    for lock in [*ext_dir.glob("*/lock"), *ext_dir.glob("*/*/lock")] if ext_dir.is_dir() else []:
        while lock.exists():
            try:
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:
                break
            if age > stale_s:
                print(f"elastica: removing the stale op-build lock {lock} ({age:.0f} s old: a "
                      "killed build left it)",
                      flush=True)
                lock.unlink(missing_ok=True)
                break
            time.sleep(min(5.0, stale_s - age + 0.1))


def precision_info(dtype) -> dict:
    """What record.json says about the numerics this cell ran with (runtime, never identity)."""
    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if cuda else "cpu",
            "load_dtype": str(dtype).replace("torch.", ""),
            "tf32": bool(cuda and torch.backends.cuda.matmul.allow_tf32),
            "torch": torch.__version__,
            "cuda": torch.version.cuda or "", "deepspeed": deepspeed.__version__}


def pick_optimizer(cuda: bool) -> dict:
    """DeepSpeed's FusedAdam where its op loads (prebuilt in the image, or JIT-built with nvcc),
    torch's AdamW otherwise: the same update up to float rounding (runtime, not identity). A failed
    op build falls back to torch's AdamW with its reason, recorded in record.json: it never fails a
    cell that could run."""
    if not cuda:
        return {"optimizer": "torch AdamW", "why": "no CUDA device (FusedAdam is a CUDA kernel)"}
    try:
        from deepspeed.ops.op_builder import FusedAdamBuilder
        FusedAdamBuilder().load()
        return {"optimizer": "FusedAdam", "why": "its op loaded (prebuilt in the image, or "
                                                 "JIT-built)"}
    except Exception as e:   # a JIT build that fails: no nvcc, a compiler error, a read-only cache
        line = next((l for l in str(e).splitlines() if l.strip()), type(e).__name__)
        return {"optimizer": "torch AdamW", "why": "FusedAdam's op did not build "
                                                   f"({type(e).__name__}: {line[:200]})"}


def ds_config(job: TrainJob, world: int, torch_adam: bool = True, rt: Runtime = Runtime()) -> dict:
    r = job.recipe
    nominal_gas = max(1, math.ceil(r.global_batch / (rt.micro_batch * world)))
    cfg: dict[str, typing.Any] = {
        "train_micro_batch_size_per_gpu": rt.micro_batch,
        "gradient_accumulation_steps": nominal_gas,   # nominal: the trainer owns the step boundary
        "managed_gradient_accumulation": False,
        "gradient_clipping": r.grad_clip,
        "optimizer": {"type": "AdamW", "params": {"lr": r.lr, "betas": list(r.betas), "eps": 1e-8,
                                                  "weight_decay": r.weight_decay,
                                                  "torch_adam": torch_adam}},
        "zero_optimization": {"stage": r.zero_stage},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if r.zero_stage == 3:
        cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    if r.precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    return cfg


class Trainer:
    def __init__(self, job: TrainJob, out_dir: Path, exp_dir: Path, runtime: Runtime = Runtime(),
                 ctx: Context | None = None):
        t0 = time.time()
        self.job, self.out, self.exp, self.rt = job, Path(out_dir), Path(exp_dir), runtime
        # where the cell sits (W&B's group and tags); None for a Trainer built by a test or bench
        self.ctx = ctx
        self.rank, self.world = setup_distributed()
        self.cuda = torch.cuda.is_available()
        # what each phase of the cell took (record.json; plan's GPU-hour estimate of fixed costs)
        self.phases = {"setup_s": 0.0, "load_s": 0.0, "init_s": 0.0, "reference_s": 0.0,
                       "steps_s": 0.0,
                       "fork_s": 0.0, "save_s": 0.0, "resume_save_s": 0.0, "checkpoints": 0,
                       "forks": 0, "step_tokens": 0, "fork_host_bytes": 0, "ranks": self.world}
        r = job.recipe
        self.tok = load_tokenizer(job.model, exp_dir)
        rows = D.load_rows(job.data, exp_dir)
        volume = max(job.milestones)
        if volume > len(rows):
            raise ConfigError("volumes", f"volume {volume} is larger than the dataset ({len(rows)} "
                                         f"rows of {job.data.path} after the filter)",
                              "lower the volume or use a larger dataset")
        order = D.seeded_order(len(rows), job.seed)[:volume]
        self.examples = D.tokenize([rows[i] for i in order], self.tok, job.template, r.max_length,
                                   r.algorithm)
        # example index at each position of the run
        self.seq = D.epoch_sequence(volume, r.epochs, job.seed)
        self.batches = D.global_batches(len(self.seq), r.global_batch, r.tail)
        # where weights are saved: each milestone volume (one epoch), or the end (several epochs)
        if r.epochs > 1 and len(job.milestones) > 1:
            raise ConfigError("recipe.epochs",
                              "several epochs with several milestones is not exact",
                              "use volume_schedule: independent (one volume per run)")
        self.milestones = sorted(job.milestones) if r.epochs == 1 else [len(self.seq)]
        self.milestone_name = {p: milestone_name(m) for p, m in zip(self.milestones,
                                                                    sorted(job.milestones))}

        self.optimizer = self._agree_on_optimizer(pick_optimizer(self.cuda))
        self.ds_cfg = ds_config(job, self.world, self.optimizer["optimizer"] != "FusedAdam",
                                runtime)
        dtype = torch.bfloat16 if r.precision == "bf16" else torch.float32
        t1 = time.time()
        self.phases["setup_s"] = t1 - t0
        model = load_model(job.model, exp_dir, self.tok, job.seed, dtype=dtype,
                           zero3_config=self.ds_cfg if r.zero_stage == 3 else None)
        # non-reentrant: works under ZeRO-3 and with inputs that need no grad
        if runtime.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.rank == 0:
            atomic_write_json(self.out / "ds_config.json", self.ds_cfg)
            update_record(self.out, precision=precision_info(dtype), optimizer=self.optimizer)
        t2 = time.time()
        self.phases["load_s"] = t2 - t1
        params = [p for p in model.parameters() if p.requires_grad]
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=params, config=self.ds_cfg,
            lr_scheduler=lambda opt: _schedule(opt, r, len(self.batches), r.warmup_steps))
        # from_pretrained returns eval mode, in which gradient checkpointing does nothing
        self.engine.train()
        self.device = self.engine.device
        t3 = time.time()
        self.phases["init_s"] = t3 - t2
        self.ref_logps = self._reference_logps() if r.algorithm in ("dpo", "kto") else {}
        self.phases["reference_s"] = time.time() - t3

    def _agree_on_optimizer(self, mine: dict) -> dict:
        """Every rank runs the same optimizer: FusedAdam only where it loaded on every rank."""
        ok = torch.tensor([mine["optimizer"] == "FusedAdam"], dtype=torch.long,
                          device="cuda" if self.cuda else "cpu")
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if mine["optimizer"] == "FusedAdam" and not ok.item():
            return {"optimizer": "torch AdamW", "why": "FusedAdam's op did not build on another "
                                                       "rank"}
        return mine

    # -------------------------------------------------------------------------------- one step
    def _logps(self, ids, mask, labels):
        return token_logps(self.engine, ids, mask, labels, self.device)

    def _pair_logps(self, mb: list[int], mean: bool = False):
        """Sequence log-probs of the chosen and the rejected answers of a micro-batch, in one
        forward: summed over each answer's tokens (DPO), or their mean (mean=True, SimPO)."""
        ids, mask, labels, w = D.collate_pair(self.examples, mb, self.tok.pad_token_id)
        lp, keep = self._logps(ids, mask, labels)
        seq = lp.sum(-1) / (keep.sum(-1).clamp(min=1) if mean else 1)
        return seq[:len(mb)], seq[len(mb):], mask, w

    def _reference_logps(self) -> dict[int, tuple[float, float]]:
        """DPO's frozen reference: the start weights' sequence log-probs, computed once up front."""
        ref = {}
        with torch.no_grad():
            for s, e in self.batches:
                for mb in D.micro_batches(self.seq[s:e], self.examples, self.rank, self.world,
                                          self.rt.micro_batch):
                    c, rj, _, _ = self._pair_logps(mb)
                    for k, i in enumerate(mb):
                        ref[i] = (c[k].item(), rj[k].item())
        return ref

    def _log_ratios(self, mb: list[int], c_lp, r_lp):
        """The chosen and rejected answers' log-ratios to the frozen reference."""
        ref = torch.tensor([self.ref_logps[abs(i) - 1 if i < 0 else i] for i in mb],
                           device=self.device)
        return c_lp - ref[:, 0], r_lp - ref[:, 1]

    def _kto_reference_points(self, s: int, e: int) -> tuple[float, float]:
        """KTO's reference points z = (chosen, rejected): the policy's mean log-ratio over the
        step's chosen answers and over its rejected ones, each clamped at 0 and held fixed; over the
        whole global batch and every rank, before the step, so that no micro-batch cut or rank count
        changes them (one extra forward pass per micro-batch, no backward)."""
        acc = torch.zeros(3, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for mb in D.micro_batches(self.seq[s:e], self.examples, self.rank, self.world,
                                      self.rt.micro_batch):
                c_lp, r_lp, _, w = self._pair_logps(mb)
                w = w.to(self.device)
                cr, rr = self._log_ratios(mb, c_lp, r_lp)
                acc += torch.stack([(cr * w).sum(), (rr * w).sum(), w.sum()]).double()
        dist.all_reduce(acc)
        n = max(acc[2].item(), 1.0)
        return max(acc[0].item() / n, 0.0), max(acc[1].item() / n, 0.0)

    def step(self, s: int, e: int) -> dict:
        """One optimizer step on examples [s, e) of the order; returns its metrics."""
        r = self.job.recipe
        t0 = time.time()
        # what the step draws (dropout) from its seed and place alone: never from the process's
        # history (a fresh process seeds torch at random; cells may share one), the same on resume
        torch.manual_seed(self.job.seed * 1_000_003 + s)
        pairs = r.algorithm in PREFERENCE
        per_example = pairs or r.loss_weighting == "example"
        denom = (e - s) if per_example else sum(self.examples[i].loss_tokens for i in self.seq[s:e])
        denom = max(denom, 1)
        # loss sum, loss tokens, real tokens, padded tokens, chosen margin: on the engine's device,
        # since the all_reduce below runs on the training group (NCCL serves CUDA tensors only)
        acc = torch.zeros(5, dtype=torch.float64, device=self.device)
        z = self._kto_reference_points(s, e) if r.algorithm == "kto" else (0.0, 0.0)
        for mb in D.micro_batches(self.seq[s:e], self.examples, self.rank, self.world,
                                  self.rt.micro_batch):
            if pairs:
                c_lp, r_lp, mask, w = self._pair_logps(mb, mean=r.algorithm == "simpo")
                w = w.to(self.device)
                if r.algorithm == "simpo":   # no reference; a target margin gamma
                    margin = c_lp - r_lp
                    per = -F.logsigmoid(r.simpo_beta * margin - r.simpo_gamma) * w
                else:
                    cr, rr = self._log_ratios(mb, c_lp, r_lp)
                    margin = cr - rr
                    per = (-F.logsigmoid(r.dpo_beta * margin) if r.algorithm == "dpo" else
                           2 - torch.sigmoid(r.kto_beta * (cr - z[1]))
                           - torch.sigmoid(r.kto_beta * (z[0] - rr))) * w
                loss_sum = per.sum()
                acc[4] += (margin * w).sum().detach()
                acc[1] += w.sum()
            else:
                ids, mask, labels, w = D.collate(self.examples, mb, self.tok.pad_token_id)
                w = w.to(self.device)
                lp, keep = self._logps(ids, mask, labels)
                # each example's token mean, summed; the step divides by the batch's examples
                if per_example:
                    loss_sum = -(lp.sum(-1) / keep.sum(-1).clamp(min=1) * w).sum()
                    acc[1] += w.sum()
                else:
                    loss_sum = -(lp.sum(-1) * w).sum()
                    acc[1] += (keep.sum(-1) * w).sum()
            acc[2] += int(mask.sum())
            acc[3] += int(mask.numel() - mask.sum())
            self.engine.backward(loss_sum * self.world / denom, scale_wrt_gas=False)
            acc[0] += loss_sum.detach()
        self.engine.step()
        dist.all_reduce(acc)
        tot: list[float] = acc.tolist()
        gn = self.engine.get_global_grad_norm()
        loss = tot[0] / max(tot[1], 1)
        return {"loss": loss, "loss_sum": tot[0], "loss_tokens": tot[1], "tokens": tot[2],
                "padding_share": tot[3] / max(tot[2] + tot[3], 1),
                "grad_norm": float(gn) if gn is not None else None, "lr": self.engine.get_lr()[0],
                "examples": e, "seconds": time.time() - t0,
                **({f"{r.algorithm}_margin": tot[4] / max(tot[1], 1)} if pairs else {})}

    # --------------------------------------------------------------------------------- outputs
    def save_weights(self, name: str) -> None:
        """checkpoints/<name>: HF safetensors + tokenizer, written to a temp folder and renamed."""
        r = self.job.recipe
        t0 = time.time()
        sd = self.engine._zero3_consolidated_16bit_state_dict() if r.zero_stage == 3 else None
        if self.rank == 0:
            if sd is None:
                sd = {k: v.detach().cpu() for k, v in self.engine.module.state_dict().items()}
            final = self.out / "checkpoints" / name
            tmp = final.with_name(f".{name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                self.engine.module.save_pretrained(tmp, state_dict=sd, safe_serialization=True)
                self.tok.save_pretrained(tmp)
                publish_dir(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)   # never leave half a checkpoint behind
        dist.barrier()
        self.phases["save_s"] += time.time() - t0
        self.phases["checkpoints"] += 1

    def save_resume(self, state: dict, tag: str, where: Path) -> None:
        t0 = time.time()
        state = {**state, "torch_rng": torch.get_rng_state()}
        self.engine.save_checkpoint(str(where), tag=tag, client_state={"elastica": state})
        dist.barrier()
        if self.rank == 0:
            for old in where.iterdir():
                if old.is_dir() and old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        self.phases["resume_save_s"] += time.time() - t0

    def load_resume(self, where: Path, tag: str | None = None) -> dict | None:
        if tag is None and not (where / "latest").exists():
            return None
        path, client = self.engine.load_checkpoint(str(where), tag=tag)
        if path is None:
            return None
        state = client["elastica"]
        torch.set_rng_state(state.pop("torch_rng"))
        return state

    # ---------------------------------------------------------------------------------- the run
    def run(self) -> list[str]:
        resume_dir = self.out / "resume"
        metrics_path = self.out / "metrics.jsonl"
        state = self.load_resume(resume_dir)
        if state is None:
            state = {"batch": 0, "loss_sum": 0.0, "loss_tokens": 0.0, "tokens": 0.0,
                     "step_losses": [], "wall": 0.0, "milestones": {}, "resumed_at_steps": []}
        else:
            state["resumed_at_steps"] = state.get("resumed_at_steps", []) + [state["batch"]]
        if self.rank == 0:  # keep exactly the metric lines of the steps the resumed state has taken
            lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
            atomic_write_text(metrics_path, "".join(l + "\n" for l in lines[:state["batch"]]))
        wandb_run = self._wandb() if self.rank == 0 else None
        old = {s: signal.signal(s, _on_signal) for s in (signal.SIGUSR1, signal.SIGUSR2,
                                                         signal.SIGTERM)}
        try:
            t_start = time.time() - state["wall"]
            # tail: drop: milestones short of one global batch take no step
            self._save_dropped(0, state)
            for k in range(state["batch"], len(self.batches)):
                s, e = self.batches[k]
                for ms in self.milestones:
                    if s < ms < e and self.milestone_name[ms] not in state["milestones"]:
                        self._fork(s, ms, state)
                m = self.step(s, e)
                self.phases["steps_s"] += m["seconds"]
                # padded too
                self.phases["step_tokens"] += m["tokens"] / max(1 - m["padding_share"], 1e-9)
                state["batch"] = k + 1
                state["loss_sum"] += m["loss_sum"]
                state["loss_tokens"] += m["loss_tokens"]
                state["tokens"] += m["tokens"]
                state["step_losses"].append(m["loss"])
                state["wall"] = time.time() - t_start
                m.update(step=k + 1, tokens_per_s=m["tokens"] / max(m["seconds"], 1e-9))
                if self.rank == 0:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(m) + "\n")
                    if wandb_run:
                        wandb_run.log({k2: v for k2, v in m.items() if v is not None}, step=k + 1)
                if e in self.milestones:
                    state["milestones"][self.milestone_name[e]] = _milestone_summary(state, e)
                    self.save_weights(self.milestone_name[e])
                self._save_dropped(e, state)
                stop = self._stop_requested()
                if stop or (k + 1) % self.rt.save_every_steps == 0:
                    if k + 1 < len(self.batches):
                        self.save_resume(state, f"step{k + 1}", resume_dir)
                # every rank has saved (save_resume ends in a barrier): say so, then all exit 75
                if stop:
                    if self.rank == 0:
                        mark_preempted(f"signal {stop}: every rank saved at step {k + 1}")
                    dist.barrier()
                    raise Preempted(f"signal {stop}: saved at step {k + 1} of {len(self.batches)}")
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if wandb_run:
                wandb_run.finish()
        if self.rank == 0:
            summary = {**_milestone_summary(state, self.milestones[-1]), "wall_s": state["wall"],
                       "loss_weighting": "example" if self.job.recipe.algorithm in PREFERENCE else
                       self.job.recipe.loss_weighting,
                       "milestones": state["milestones"], "world_size": self.world,
                       "resumed_at_steps": state["resumed_at_steps"],
                       "padding_share": _mean_padding(metrics_path)}
            atomic_write_json(self.out / "summary.json", summary)
            update_record(self.out, phases={k: round(v, 3) if isinstance(v, float) else v
                                            for k, v in self.phases.items()})
            # optimizer shards are not kept once done
            shutil.rmtree(resume_dir, ignore_errors=True)
        dist.barrier()
        return [self.milestone_name[m] for m in self.milestones]

    def _save_dropped(self, e: int, state: dict) -> None:
        """tail: drop: after the step ending at e (0: before the first), the milestones whose
        leftover examples take no step, as a separate run on that many examples would end: here."""
        if self.job.recipe.tail != "drop":
            return
        gb = self.job.recipe.global_batch
        for ms in self.milestones:
            if e <= ms < e + gb and ms != e and self.milestone_name[ms] not in state["milestones"]:
                state["milestones"][self.milestone_name[ms]] = _milestone_summary(state, ms)
                self.save_weights(self.milestone_name[ms])

    def _fork(self, s: int, m: int, state: dict) -> None:
        """Milestone m inside the batch starting at s: a side step on [s, m), its weights saved,
        then undone from an in-memory snapshot of this rank's state (only its weights hit disk)."""
        t0 = time.time()
        snap = snapshot(self.engine)
        self.phases["fork_host_bytes"] = max(self.phases["fork_host_bytes"], snapshot_bytes(snap))
        part = self.step(s, m)
        side = dict(state, loss_sum=state["loss_sum"] + part["loss_sum"],
                    loss_tokens=state["loss_tokens"] + part["loss_tokens"],
                    tokens=state["tokens"] + part["tokens"],
                    step_losses=state["step_losses"] + [part["loss"]])
        state["milestones"][self.milestone_name[m]] = _milestone_summary(side, m)
        t_save = self.phases["save_s"]
        self.save_weights(self.milestone_name[m])
        restore(self.engine, snap)
        self.phases["fork_s"] += time.time() - t0 - (self.phases["save_s"] - t_save)
        self.phases["forks"] += 1

    def _stop_requested(self) -> int:
        flag = torch.tensor([_STOP["signal"]], dtype=torch.long, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def _wandb(self):
        return wandb_run(self.out, self.exp,
                         {"recipe": jsonable(self.job.recipe), "runtime": jsonable(self.rt),
                                              "seed": self.job.seed,
                                              "milestones": list(self.job.milestones),
                          "world_size": self.world},
                         self.ctx.stage if self.ctx else self.job.stage,
                         self.ctx.coords if self.ctx else {})


def token_logps(model, ids, mask, labels, device):
    """Per-token log-probs of the labels (0 where not counted) and the mask of counted tokens."""
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    logits = out.logits[:, :-1].float()
    tgt = labels[:, 1:].to(device)
    keep = tgt != -100
    logp = torch.log_softmax(logits, dim=-1).gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * keep, keep


def update_record(cell_dir: Path, **info) -> None:
    """Merge runtime facts into the cell's record.json (the worker writes it as the cell starts)."""
    path = Path(cell_dir) / "record.json"
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        rec = {}
    rec.setdefault("runtime", {}).update(info)
    atomic_write_json(path, rec)


def _schedule(opt, recipe, total_steps: int, warmup: int):

    def factor(step: int) -> float:
        w = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if recipe.schedule == "cosine":
            progress = min(1.0, step / max(1, total_steps))
            return w * 0.5 * (1 + math.cos(math.pi * progress))
        return w
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _milestone_summary(state: dict, examples: int) -> dict:
    losses = state["step_losses"]
    return {"examples": examples, "steps": len(losses), "tokens": state["tokens"],
            "final_loss": losses[-1] if losses else None,
            "mean_loss": sum(losses) / len(losses) if losses else None,
            # the loss pooled over every example so far, weighted as a step is (tokens or examples)
            "pooled_loss": state["loss_sum"] / max(state["loss_tokens"], 1)}


def _mean_padding(path: Path) -> float:
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    real = sum(r["tokens"] for r in rows)
    pad = sum(r["padding_share"] * r["tokens"] / max(1 - r["padding_share"], 1e-9) for r in rows)
    return pad / max(real + pad, 1)


def main(job: TrainJob, ctx: Context) -> list[str]:
    """Train one cell; returns the milestone names written (the done marker lists them)."""
    return Trainer(job, ctx.out_dir, ctx.exp_dir, ctx.runtime, ctx).run()
