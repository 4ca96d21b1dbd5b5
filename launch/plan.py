"""The planner: expand a study spec into stages of cells with stable ids and output folders.

Cell ids are `<readable label>-<fingerprint>`, the fingerprint a hash of the cell's job (what
defines its result, upstream cell ids included) and never of the profile. Training stages are nested
where exact: one run per (start model, seed) saves a checkpoint at each volume milestone
(`checkpoints/n<volume>`), so its identity leaves the milestone list out; a plan that needs a
milestone the done marker lacks runs the cell again.

    from launch.plan import make_plan
    plan = make_plan(load_spec("configs/setting2/imdb.yaml"))
    plan.summary(runs_root="runs")
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from launch import costs
from launch.core import layout
from launch.core.jobs import (KINDS, WORLD_GENERATOR, CollectJob, EvalJob, GenerateJob, ModelRef,
                              TrainJob, WorldJob, jsonable)
from launch.core.profile import Profile
from launch.core.spec import STAGES, Data, Model, Spec, source_kind, world_set
from launch.worker import write_job

SCHEMA = "elastica/1"


def fingerprint(obj) -> str:
    blob = json.dumps(obj, sort_keys=True, default=list, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


# Fields added to a job after cells were addressed (by their path in the job): at their default they
# stay out of the identity, so every id made before them stays valid (tests/golden/cell-ids.json);
# any other value is in it.
ADDED_AT_DEFAULT = {("recipe", "tail"): "partial", ("recipe", "simpo_beta"): 2.0,
                    ("recipe", "simpo_gamma"): 1.0, ("eval", "aggregate"): "mean",
                    ("eval", "scorer", "append_eos"): True, ("eval", "scorer", "dtype"): "auto",
                    ("eval", "strip"): False, ("claims",): [],
                    ("world", "neutral"): 0, ("recipe", "kto_beta"): 0.1,
                    ("data", "pair_with"): {}, ("prompts", "pair_with"): {},
                    ("compression", "*", "pair_with"): {}}


def _without(node: dict, path: tuple, default) -> dict:
    """`node` without the key at `path` where its value is `default` (copied, never changed)."""
    head, *rest = path
    if head == "*":   # every entry of a mapping
        return {k: _without(v, tuple(rest), default) if isinstance(v, dict) else v
                for k, v in node.items()}
    if head not in node:
        return node
    if rest:
        return {**node, head: _without(node[head], tuple(rest),
                                       default)} if isinstance(node[head], dict) else node
    return {k: v for k, v in node.items() if k != head} if node[head] == default else node


@dataclass(frozen=True)
class Cell:
    stage: str
    kind: str                                   # a key of launch.core.jobs.KINDS
    label: str                                  # readable part of the id
    job: object                                 # a launch.core.jobs dataclass
    upstream: tuple[str, ...] = ()              # "stage/cell_id" of the cells it reads
    # table coordinates: model, seed, positive, ...
    coords: dict = field(default_factory=dict, compare=False)
    # what the done marker lists and the folder holds (jobs.output_problem)
    outputs: tuple[str, ...] = ()
    examples: int = 0                           # training examples this cell processes
    # identity beyond the job (independent volume)
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if not self.outputs:
            object.__setattr__(self, "outputs", KINDS[self.kind].outputs)

    @cached_property
    def job_json(self) -> dict:
        return jsonable(self.job)

    @cached_property
    def identity(self) -> dict:
        job = dict(self.job_json)
        if self.kind == "train":
            job.pop("milestones")  # nested: the run's trajectory does not depend on where it saves
        # a field added later, at its default: no change
        for path, default in ADDED_AT_DEFAULT.items():
            job = _without(job, path, default)
        return {"schema": SCHEMA, "stage": self.stage, "kind": self.kind, "job": job,
                "extra": self.extra, "upstream": sorted(self.upstream)}

    @cached_property
    def id(self) -> str:
        return f"{self.label}-{fingerprint(self.identity)}"

    @property
    def key(self) -> str:
        return f"{self.stage}/{self.id}"

    def meta(self, runtime: dict) -> dict:
        """job.json: the job (identity), its place in the study and its runtime (never identity)."""
        return {"stage": self.stage, "kind": self.kind, "id": self.id, "job": self.job_json,
                "coords": self.coords,
                "upstream": list(self.upstream), "outputs": list(self.outputs),
                "identity": self.identity, "runtime": runtime}

    def ref(self, rest: str = "") -> str:
        return f"@{self.stage}/{self.id}" + (f"/{rest}" if rest else "")

    def checkpoint(self, examples: int) -> str:
        """The reference to this training cell's milestone after `examples` examples."""
        return self.ref(f"checkpoints/{layout.milestone_name(examples)}")


@dataclass
class Plan:
    spec: Spec
    stages: dict[str, list[Cell]]               # in run order
    naive_examples: int    # every final cell trained from its base model
    # the seed's code: each positive (slice) checkpoint trained once and reused
    reuse_examples: int = 0

    @property
    def cells(self) -> list[Cell]:
        return [c for cells in self.stages.values() for c in cells]

    def exp_dir(self, runs_root: str | Path) -> Path:
        return Path(runs_root) / self.spec.experiment

    def cell_dir(self, runs_root: str | Path, cell: Cell) -> Path:
        return self.exp_dir(runs_root) / cell.stage / cell.id

    def states(self, runs_root: str | Path) -> dict[str, str]:
        """Cell key -> layout.cell_state, "stale" for a done cell when a cell upstream will run."""
        out: dict[str, str] = {}
        nonces: dict = {}
        for c in self.cells:   # stage order: upstream cells come first
            st = layout.cell_state(self.cell_dir(runs_root, c), c.kind, c.outputs, c.upstream, nonces)
            out[c.key] = "stale" if st == "done" and any(out[u] != "done"
                                                         for u in c.upstream) else st
        return out

    def todo(self, runs_root: str | Path) -> set[str]:
        """Keys of the cells to run: every cell that is not done."""
        return {k for k, st in self.states(runs_root).items() if st != "done"}

    def reusable(self, runs_root: str | Path) -> dict[str, Path]:
        """Cells this study still has to run that another study under the same runs root has done:
        key -> that folder. A cell id is a content address (its job, upstream ids included), so the
        same stage/id is the same job; it is taken only if it was made from the very runs this
        study's upstream cells are (the same done nonces: cells it has, or will have by taking them
        from the same place). Pure: nothing is written."""
        root, here = Path(runs_root), self.exp_dir(runs_root)
        others = sorted(p for p in root.iterdir()
                        if p.is_dir() and p != here) if root.is_dir() else []
        if not others:
            return {}
        states = self.states(runs_root)
        nonce: dict[str, str | None] = {}   # key -> nonce of the run this study has, or takes
        found: dict[str, Path] = {}
        for c in self.cells:                # stage order: upstream cells first
            if states[c.key] == "done":
                nonce[c.key] = layout.upstream_nonce(here, c.key)
                continue
            if states[c.key] == "running" or not KINDS[c.kind].shared:
                continue
            for other in others:
                src = other / c.stage / c.id
                done = layout.read_done(src)
                # every upstream done on both sides, from the very same run: the nonce this study
                # has (or takes), the one the marker was made from, and the one the other study's
                # upstream cell holds now
                same = done is not None and all(
                    nonce.get(u) is not None and done.get("upstream", {}).get(u) == nonce[u]
                    == layout.upstream_nonce(other, u) for u in c.upstream)
                if done is not None and same and layout.cell_state(src, c.kind, c.outputs,
                                                                   c.upstream) == "done":
                    found[c.key], nonce[c.key] = src, done["nonce"]
                    break
        return found

    def adopt(self, runs_root: str | Path, profile: Profile | None = None,
              found: dict[str, Path] | None = None) -> list[str]:
        """Take the reusable cells (copies with hard-linked checkpoints, layout.copy_cell), each
        with this study's job.json (its coordinates here) and a line in attempts.jsonl saying where
        it came from. Returns their keys."""
        found = self.reusable(runs_root) if found is None else found
        cells = {c.key: c for c in self.cells}
        for key, src in found.items():
            d = self.cell_dir(runs_root, cells[key])
            layout.copy_cell(src, d)
            write_job(d, self.meta(cells[key], profile))
            with open(d / "attempts.jsonl", "a") as f:
                f.write(json.dumps({"adopted_from": str(src),
                                    "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        return list(found)

    def meta(self, cell: Cell, profile: Profile | None = None) -> dict:
        """What the cell's job.json holds: its job (identity) and, for training cells, its runtime
        (not identity: the study's, with the profile's overrides)."""
        site = profile.runtime if profile is not None else None
        return cell.meta(jsonable(self.spec.runtime_for(cell.stage, site)) if cell.kind == "train"
                         else {})

    def summary(self, runs_root: str | Path, profile=None) -> dict:
        """Stages with their cells, done / to run / reused (done in another study: Plan.reusable),
        examples; with a profile that has cost rates, the estimated GPU-hours of the cells still to
        run (launch.costs), and the host memory per node that training forks hold."""
        stages = []
        todo, reused = self.todo(runs_root), self.reusable(runs_root)
        for name, cells in self.stages.items():
            done = sum(c.key not in todo for c in cells)
            left = [c for c in cells if c.key in todo and c.key not in reused]
            gpu_h = self._gpu_hours(name, left,
                                    profile) if profile is not None and STAGES[name] != "light" \
                else None
            res = costs.stage_resources(name, left or cells,
                                        profile) if profile is not None else None
            steps = sorted({(v, c.job.recipe.steps(v)) for c in cells if isinstance(c.job, TrainJob)
                            for o in c.outputs if (v := layout.milestone_volume(o)) is not None})
            stages.append({"name": name, "cells": len(cells), "done": done, "to_run": len(left),
                           # optimizer steps at each checkpoint
                           "steps": sorted({n for _, n in steps}),
                           "few_steps": [f"{v} examples: {n}" for v, n in steps if n <= 1],
                           "reused": sum(c.key in reused for c in cells),
                           "checkpoints": sum(len(c.outputs) for c in cells if c.kind == "train"),
                           "examples": sum(c.examples for c in cells), "gpu_hours_to_run": gpu_h,
                           "asks": None if res is None else {"nodes": res.nodes,
                                                             "gpus_per_node": res.gpus_per_node,
                                                             "time_min": res.time_min,
                                                             "mem_gb": res.mem_gb},
                           "dir": str(self.exp_dir(runs_root) / name)})
        return {"experiment": self.spec.experiment, "setting": self.spec.setting,
                "task": self.spec.task, "runs_dir": str(self.exp_dir(runs_root)), "stages": stages,
                "total_examples": sum(s["examples"] for s in stages),
                "naive_examples": self.naive_examples, "reuse_examples": self.reuse_examples,
                "trust_remote_code": sorted(m.name for m in self.spec.models
                                            if m.trust_remote_code),
                "fork_memory": costs.fork_memory(self, profile) if profile is not None else []}

    @staticmethod
    def _gpu_hours(stage: str, left: list[Cell], profile: Profile) -> float | None:
        if not left:
            return 0.0
        if left[0].kind == "train":
            hours = [h for c in left if (h := costs.train_cell_gpu_hours(c, profile)) is not None]
            return None if len(hours) < len(left) else sum(hours)
        if profile.eval_minutes_per_cell:
            return len(left) * profile.eval_minutes_per_cell / 60 * max(1, profile.resources(stage).gpus_per_node)
        return None


class _Builder:
    """Builds the cells of one study, stage by stage."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.stages: dict[str, list[Cell]] = {}
        self.ids: dict[str, set[str]] = {}     # stage -> cell ids already added
        self.naive = 0
        self.reuse = 0
        self.world: Cell | None = None

    def add(self, cell: Cell) -> Cell:
        ids = self.ids.setdefault(cell.stage, set())
        if cell.id not in ids:
            ids.add(cell.id)
            self.stages.setdefault(cell.stage, []).append(cell)
        return cell

    def data(self, role: str) -> Data:
        d = self.spec.data[role]
        kind = source_kind(d.path)
        if kind == "world" and self.world is not None:
            return dataclasses.replace(d, path=self.world.ref(f"data/{world_set(d.path)}.jsonl"))
        if kind == "local":
            return dataclasses.replace(d, path=str(Path(d.path).expanduser().resolve()))
        return d

    def bases(self, m: Model):
        """The base models of `m`: (reference, upstream cells, label, coords), one per pre-training
        seed (the label and coords name the seed only when the study has several)."""
        if m.init is None:
            path = m.path if source_kind(m.path) == "hub" else str(Path(m.path).expanduser().resolve())
            yield ModelRef(path=path, revision=m.revision,
                           trust_remote_code=m.trust_remote_code), (), m.name, {}
            return
        many, w = len(self.spec.pretrain_seeds) > 1, self.spec.world
        # what it was pre-trained on, for the Hooke products: |D_pre|, and the positive examples
        # among them (world:joint holds the pre-training corpus and the positive set; a prefix holds
        # them in proportion)
        joint = m.pretrain_data == "joint" and w is not None
        share = w.alignment / (w.pretrain + w.alignment) if joint and w is not None else 0.0
        sizes = {"pretrain_n": round(m.pretrain_examples * (1 - share)),
                 **({"pretrain_positive": round(m.pretrain_examples * share)} if joint else {})}
        for ps in self.spec.pretrain_seeds:
            cell = self.pretrain_cells[(m.name, ps)]
            yield (ModelRef(path=cell.checkpoint(m.pretrain_examples)), (cell.key,),
                   f"{m.name}.p{ps}" if many else m.name,
                   {**sizes, **({"pretrain_seed": ps} if many else {})})

    def train(self, stage: str, label: str, start: ModelRef, upstream, role: str, volumes,
              seed: int, coords: dict, recipe=None) -> list[tuple[Cell, int]]:
        """Cells training `start` on `role` data to each volume; (cell, volume) per milestone."""
        recipe = recipe or self.spec.recipe_for(stage)
        recipe = dataclasses.replace(recipe, seeds=(seed,))
        vols = [v for v in volumes if v > 0]
        groups = ([vols] if vols else []) if recipe.nested else [[v] for v in vols]
        out = []
        for group in groups:
            extra = {} if recipe.nested else {"volume": group[0]}
            lab = label if recipe.nested else f"{label}.v{group[0]}"
            job = TrainJob(model=start, data=self.data(role), recipe=recipe, seed=seed,
                           template=self.spec.template, milestones=tuple(group), stage=stage)
            cell = self.add(Cell(stage, "train", lab, job, tuple(upstream), dict(coords),
                                 tuple(layout.milestone_name(v) for v in group),
                                 max(group) * recipe.epochs, extra))
            out += [(cell, v) for v in group]
        return out

    def evaluate(self, label: str, model: ModelRef, base: ModelRef, upstream, seed: int,
                 coords: dict) -> Cell:
        ev = self.spec.eval
        job = EvalJob(model=model, base=base, prompts=self.data("prompts"), eval=ev,
                      template=self.spec.template,
                      compression={r: self.data(r) for r in ev.compression}, seed=seed,
                      max_length=self.spec.recipe.max_length,
                      attribute_tokens=self.spec.world is not None)
        return self.add(Cell("eval", "eval", label, job, tuple(upstream), dict(coords)))

    # ---------------------------------------------------------------------------------- stages
    def build(self):
        spec = self.spec
        if spec.world is not None:
            job = WorldJob(world=spec.world, template=spec.template, generator=WORLD_GENERATOR)
            self.world = self.add(Cell("world", "world", "world", job))
        self.pretrain_cells = {}
        if any(m.init for m in spec.models):
            self._pretrain()
        if spec.setting == "resistance":
            self._resistance()
        else:
            self._rebound()
        upstream = tuple(c.key for name, cells in self.stages.items() if name in ("eval", "cross",
                                                                                  "responses")
                         for c in cells)
        # its coords: each model's source (the paper table's key)
        self.add(Cell("collect", "collect", "collect",
                      CollectJob(experiment=spec.experiment, setting=spec.setting, task=spec.task,
                                 claims=spec.claims),
                      upstream,
                      coords={"models": {m.name: m.path for m in spec.models if not m.init}}))

    def _pretrain(self):
        """Toy models: a pre-training run per architecture and seed, saving each model's volume."""
        spec = self.spec
        recipe = spec.recipe_for("pretrain")
        by_arch: dict = {}
        for m in spec.models:
            if m.init:
                by_arch.setdefault((m.init, m.pretrain_data), []).append(m)
        for (init, role), models in by_arch.items():
            start = ModelRef(path="", init=init,
                             tokenizer=self.world.ref("tokenizer") if self.world else "")
            vols = sorted({m.pretrain_examples for m in models})
            label = f"{init.arch}-L{init.layers}-W{init.width}" + ("" if role == "pretrain"
                                                                   else f"-{role}")
            ups = (self.world.key,) if self.world else ()
            # the label names the seed always: a cell's id never depends on
            for seed in spec.pretrain_seeds:
                # the study it is in, so studies share it (Plan.reusable)
                lab = f"{label}.p{seed}"
                for cell, v in self.train("pretrain", lab, start, ups, role, vols, seed,
                                          {"arch": label}, recipe):
                    for m in models:
                        if m.pretrain_examples == v:
                            self.pretrain_cells[(m.name, seed)] = cell
        pre = sum(m.pretrain_examples * recipe.epochs
                  for m in spec.models if m.init) * len(spec.pretrain_seeds)
        self.naive += pre
        self.reuse += pre

    def _rebound(self):
        spec, vol = self.spec, self.spec.volumes
        arms = [("positive", "positive", "pos")] + \
            ([("control", "control", "ctl")] if spec.controls.matched_start else [])
        for m in spec.models:
            for base, base_up, name, pco in self.bases(m):
                for seed in spec.recipe.seeds:
                    co = {"model": m.name, "size": m.size_label, **pco, "seed": seed}
                    self.evaluate(f"{name}.s{seed}.base", base, base, base_up, seed,
                                  {**co, "arm": "base", "positive": 0, "negative": 0})
                    # the negative stage from the base itself (its 0 is the base)
                    if spec.controls.from_base:
                        for ncell, n in self.train("negative", f"{name}.s{seed}.base", base,
                                                   base_up, "negative",
                                                   vol.negative, seed,
                                                   {**co, "arm": "from-base", "positive": 0}):
                            self.evaluate(f"{name}.s{seed}.base.neg{n}",
                                          ModelRef(path=ncell.checkpoint(n)), base, (ncell.key,),
                                          seed,
                                          {**co, "arm": "from-base", "positive": 0, "negative": n})
                    for stage, role, tag in arms:
                        for cell, p in self.train(stage, f"{name}.s{seed}", base, base_up, role,
                                                  vol.positive, seed, {**co, "arm": stage}):
                            start = ModelRef(path=cell.checkpoint(p))
                            pc = {**co, "arm": stage, "positive": p}
                            self.evaluate(f"{name}.s{seed}.{tag}{p}.neg0", start, base, (cell.key,),
                                          seed, {**pc, "negative": 0})
                            neg = self.train("negative", f"{name}.s{seed}.{tag}{p}", start,
                                             (cell.key,), "negative", vol.negative, seed, pc)
                            for ncell, n in neg:
                                self.evaluate(f"{name}.s{seed}.{tag}{p}.neg{n}",
                                              ModelRef(path=ncell.checkpoint(n)), base,
                                              (ncell.key,), seed, {**pc, "negative": n})
                            ep, ep_start = spec.recipe_for("negative").epochs, spec.recipe_for(stage).epochs
                            self.naive += sum((p * ep_start + n * ep) for n in vol.negative
                                              if n > 0)
                            self.reuse += p * ep_start + sum(n * ep for n in vol.negative if n > 0)

    def _resistance(self):
        spec, sl = self.spec, self.spec.slices
        counts = [max(1, round(f * sl.examples)) for f in sl.fractions]
        for m, (base, base_up, name, pco) in [(mm, b) for mm in spec.models
                                              for b in self.bases(mm)]:
            for seed in spec.recipe.seeds:
                co = {"model": m.name, "size": m.size_label, **pco, "seed": seed}
                slices = self.train("slices", f"{name}.s{seed}", base, base_up, "sft", counts, seed,
                                    co)
                answers = []
                for i, (cell, n) in enumerate(slices, start=1):
                    ref = ModelRef(path=cell.checkpoint(n))
                    job = GenerateJob(model=ref, prompts=self.data("prompts"), eval=spec.eval,
                                      template=spec.template,
                                      train_count=sl.responses, heldout_count=spec.eval.prompts,
                                      seed=seed)
                    gen = self.add(Cell("responses", "generate", f"{name}.s{seed}.theta{i}", job,
                                        (cell.key,), {**co, "slice": i}))
                    answers.append((i, ref, gen, cell, n * cell.job.recipe.epochs))
                    self.reuse += n * cell.job.recipe.epochs
                for i, ref_i, _gen_i, cell_i, cost_i in answers:
                    for j, _ref_j, gen_j, _cell_j, _cost_j in answers:
                        if i == j or (sl.pairs == "adjacent" and abs(i - j) > 1):
                            continue
                        direction = "forward" if i < j else "inverse"
                        data = Data(path=gen_j.ref("train.jsonl"), fields={})
                        recipe = dataclasses.replace(spec.recipe_for("cross"), seeds=(seed,))
                        job = TrainJob(model=ref_i, data=data, recipe=recipe, seed=seed,
                                       template=spec.template,
                                       milestones=(sl.responses,), stage="cross")
                        pair = {**co, "from": i, "to": j, "direction": direction}
                        cross = self.add(Cell("cross", "train", f"{name}.s{seed}.theta{i}-on-D{j}",
                                              job,
                                              (cell_i.key, gen_j.key), pair,
                                              (layout.milestone_name(sl.responses),),
                                              sl.responses * recipe.epochs))
                        heldout = Data(path=gen_j.ref("heldout.jsonl"), fields={})
                        ev = EvalJob(model=ModelRef(path=cross.checkpoint(sl.responses)),
                                     base=ref_i, prompts=self.data("prompts"),
                                     eval=dataclasses.replace(spec.eval, scorer=dataclasses.replace(
                                         spec.eval.scorer, kind="none")),
                                     template=spec.template, compression={"target": heldout},
                                     seed=seed,
                                     max_length=recipe.max_length,
                                     attribute_tokens=spec.world is not None)
                        self.add(Cell("eval", "eval", f"{name}.s{seed}.theta{i}-on-D{j}", ev,
                                      (cross.key,), pair))
                        self.naive += cost_i + sl.responses * recipe.epochs
                        self.reuse += sl.responses * recipe.epochs


STAGE_ORDER = tuple(STAGES)


def make_plan(spec: Spec) -> Plan:
    b = _Builder(spec)
    b.build()
    stages = {name: b.stages[name] for name in STAGE_ORDER if name in b.stages}
    return Plan(spec=spec, stages=stages, naive_examples=b.naive, reuse_examples=b.reuse)
