"""P4: plan + submit of a ~10,000-cell grid to the local Slurm cluster: wall time and the number of
sbatch calls (one per stage chunk). Jobs are submitted held and cancelled at once; the median of
three runs is reported, with the time spent inside sbatch (the controller's share). Each run leaves
~10,000 cancelled job records in the controller for MinJobAge: start from a fresh cluster. Needs the
cluster of tests/slurm/up.sh.

    WITH_DBD=1 CPUS=8 NODES=2 bash tests/slurm/up.sh && .venv/bin/python bench/submit_10k.py
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, report

SEEDS = 333   # 30 cells per seed (1 positive, 4 negative, 25 eval) -> 9,990 + 1 collect
REPEATS = 3


def main():
    if not shutil.which("sbatch"):
        report(id="P4", measure="plan + submit of a 10,000-cell grid", value=None, baseline="-",
               ratio=None,
               target="< 5 s, one sbatch per stage chunk", met=None,
               runs="not run: sbatch not found")
        return
    from launch.slurm import max_array_size
    walls, in_sbatch = [], []
    for _ in range(REPEATS):
        wall, calls, arrays, plan, sb = once()
        walls.append(wall)
        in_sbatch.append(sb)
    wall = statistics.median(walls)
    cells = sum(len(a.cells) for a in arrays)
    chunks = {s: sum(1 for a in arrays if a.stage == s) for s in plan.stages}
    report(id="P4", measure=f"plan + submit of a {cells:,}-cell grid (local Slurm, MaxArraySize "
                            f"{max_array_size()})",
           value=round(wall, 2), baseline="-", ratio=None,
           target="< 5 s, one sbatch per stage chunk", met=wall < 5 and calls == len(arrays),
           runs=f"median of {REPEATS} ({', '.join(f'{w:.2f}' for w in walls)} s, of which in "
                "sbatch "
                f"{', '.join(f'{w:.2f}' for w in in_sbatch)} s); {calls} sbatch calls for "
                f"{len(arrays)} arrays "
                f"(chunks per stage {chunks})")


def once():
    """One plan + submit in a fresh folder; the jobs are submitted held and cancelled at once."""
    from launch.plan import make_plan
    from launch.slurm import submit
    from launch.core.profile import load_profile
    from launch.core.spec import load_spec
    tmp = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    cfg = yaml.safe_load((ROOT / "configs/setting2/imdb.yaml").read_text())
    cfg["experiment"] = "bench-10k"
    cfg["recipe"]["seeds"] = list(range(1, SEEDS + 1))
    (tmp / "grid.yaml").write_text(yaml.safe_dump(cfg))
    wrap = tmp / "bin"
    wrap.mkdir()
    real = shutil.which("sbatch")
    # log each call's duration in ns: the controller's share of the wall time
    (wrap / "sbatch").write_text(
        f"#!/bin/bash\nt=$(date +%s%N); {real} --hold \"$@\"; rc=$?\n"
        f"echo $(( $(date +%s%N) - t )) >> {tmp}/sbatch.calls; exit $rc\n")
    (wrap / "sbatch").chmod(0o755)
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{wrap}:{path}"
    profile = load_profile(ROOT / "configs/profiles/local-slurm.yaml")
    try:
        t0 = time.perf_counter()
        plan = make_plan(load_spec(tmp / "grid.yaml"))
        arrays = submit(plan, tmp / "runs", profile, out=open(os.devnull, "w"))
        wall = time.perf_counter() - t0
    finally:
        os.environ["PATH"] = path
    subprocess.run(["scancel", *[a.job_id for a in arrays]], check=False)
    ns = [int(x) for x in (tmp / "sbatch.calls").read_text().split()]
    shutil.rmtree(tmp, ignore_errors=True)
    return wall, len(ns), arrays, plan, sum(ns) / 1e9


if __name__ == "__main__":
    main()
