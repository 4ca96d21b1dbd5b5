"""P4: plan + submit of a ~10,000-cell grid to the local Slurm cluster: wall time and the number of sbatch calls
(one per stage chunk). Jobs are submitted held and cancelled at once. Needs the cluster of tests/slurm/up.sh.

    WITH_DBD=1 CPUS=8 NODES=2 bash tests/slurm/up.sh && .venv/bin/python bench/submit_10k.py
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, report

SEEDS = 333   # 30 cells per seed (1 positive, 4 negative, 25 eval) -> 9,990 + 1 collect


def main():
    if not shutil.which("sbatch"):
        report(id="P4", measure="plan + submit of a 10,000-cell grid", value=None, baseline="-", ratio=None,
               target="< 5 s, one sbatch per stage chunk", met=None, runs="not run: sbatch not found")
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    cfg = yaml.safe_load((ROOT / "configs/setting2/imdb.yaml").read_text())
    cfg["experiment"] = "bench-10k"
    cfg["recipe"]["seeds"] = list(range(1, SEEDS + 1))
    (tmp / "grid.yaml").write_text(yaml.safe_dump(cfg))
    wrap = tmp / "bin"
    wrap.mkdir()
    real = shutil.which("sbatch")
    (wrap / "sbatch").write_text(f"#!/bin/sh\necho call >> {tmp}/sbatch.calls\nexec {real} --hold \"$@\"\n")
    (wrap / "sbatch").chmod(0o755)
    os.environ["PATH"] = f"{wrap}:{os.environ['PATH']}"
    from launch.plan import make_plan
    from launch.slurm import max_array_size, submit
    from launch.spec import load_profile, load_spec
    profile = load_profile(ROOT / "configs/profiles/local-slurm.yaml")
    t0 = time.perf_counter()
    plan = make_plan(load_spec(tmp / "grid.yaml"))
    arrays = submit(plan, tmp / "runs", profile, out=open(os.devnull, "w"))
    wall = time.perf_counter() - t0
    ids = [a.job_id for a in arrays]
    subprocess.run(["scancel", *ids], check=False)
    calls = len((tmp / "sbatch.calls").read_text().splitlines())
    cells = sum(len(a.cells) for a in arrays)
    chunks = {s: sum(1 for a in arrays if a.stage == s) for s in plan.stages}
    report(id="P4", measure=f"plan + submit of a {cells:,}-cell grid (local Slurm, MaxArraySize {max_array_size()})",
           value=round(wall, 2), baseline="-", ratio=None, target="< 5 s, one sbatch per stage chunk",
           met=wall < 5 and calls == len(arrays),
           runs=f"{calls} sbatch calls for {len(arrays)} arrays (chunks per stage {chunks})")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
