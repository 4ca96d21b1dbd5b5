"""P3: what nested volumes save. Examples for the paper's Setting II grid (nested vs every cell from
the base), and the wall time of the toy Setting II training stages, nested against the independent
schedule (same cells, same results per milestone), from a shared pre-trained base.

    .venv/bin/python bench/nested.py
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, report

from launch.local import run_plan
from launch.plan import make_plan
from launch.core.profile import load_profile
from launch.core.spec import load_spec


def main():
    s = make_plan(load_spec(ROOT / "configs/setting2/imdb.yaml")).summary("/nonexistent")
    report(id="P3a", measure="examples processed, paper Setting II grid (4 positive x 5 negative "
                             "volumes)",
           value=s["total_examples"], baseline="the seed's code, each positive checkpoint trained "
                                               "once and reused: "
           f"{s['reuse_examples']}; every cell from the base: {s['naive_examples']}",
           ratio=round(s["reuse_examples"] / s["total_examples"], 2),
           target="18,000 vs 33,200 (and 105,200)",
           met=(s["total_examples"], s["reuse_examples"], s["naive_examples"]) == (18000, 33200,
                                                                                   105200),
           runs=f"exact (planner); ratio against every cell from the base: "
                f"{s['naive_examples'] / s['total_examples']:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-nested-"))
    profile = load_profile(ROOT / "configs/profiles/local-cpu.yaml")
    base = yaml.safe_load((ROOT / "configs/toy/setting2.yaml").read_text())
    base["controls"]["matched_start"] = False
    times, examples = {}, {}
    for schedule in ("nested", "independent"):
        cfg = dict(base, experiment=f"bench-{schedule}")
        cfg["recipe"] = dict(base["recipe"], volume_schedule=schedule)
        cfg["recipe_overrides"] = {k: dict(v, volume_schedule="auto")
                                   for k, v in base["recipe_overrides"].items()}
        (tmp / f"{schedule}.yaml").write_text(yaml.safe_dump(cfg))
        plan = make_plan(load_spec(tmp / f"{schedule}.yaml"))
        runs = tmp / "runs"
        # the same world and pre-trained base (same cell ids): copy, do not redo
        if schedule == "independent":
            for stage in ("world", "pretrain"):
                shutil.copytree(runs / "bench-nested" / stage, runs / "bench-independent" / stage)
        else:
            for stage in ("world", "pretrain"):
                assert run_plan(plan, runs, profile, only=stage) == 0
        t = time.perf_counter()
        for stage in ("positive", "negative"):
            assert run_plan(plan, runs, profile, only=stage) == 0
        times[schedule] = time.perf_counter() - t
        examples[schedule] = sum(st["examples"] for st in plan.summary(runs)["stages"]
                                 if st["name"] in ("positive", "negative"))
    ratio = times["independent"] / times["nested"]
    report(id="P3b", measure="wall time of the toy Setting II training stages (positive + "
                             "negative, 24 checkpoints)",
           value=round(times["nested"], 1), baseline="independent schedule "
                                                     f"{times['independent']:.1f} s",
           ratio=round(ratio, 2), target=">= 3x faster", met=ratio >= 3,
           runs=f"one run each; examples {examples['nested']} nested vs {examples['independent']} "
                "independent")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
