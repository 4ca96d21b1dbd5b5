"""P12: two studies that share a base, run the way a user would run them before and now, side
by side.

The two studies are the reduced toy Setting II study (the tests' one) and the same study with
another negative grid (0 / 8 / 24 instead of 0 / 16 / 32): the same world, base, aligned and control
checkpoints, different negative runs. Four arms, each into fresh runs folders, one study after the
other:
  before     each study in its own runs root, `launch run` (one cell at a time, torch's default threads: every
             core for one cell): what `make local` did for each study
  jobs       each in its own root, `launch run --jobs 2` (two cells at once, cpus/2 threads each; a
             stage with one cell to run: every core)
  jobs+share both in one root with --jobs 2: the second study takes the cells the first has done
  same-threads each in its own root, one cell at a time, stage by stage with the threads --jobs 2 gives
             each of the stage's cells: not a speed baseline, the exactness one
The second study's eval metrics are compared bit for bit: --jobs and sharing against one cell at a
time with the same threads per cell (a different thread count changes float summation order, as on
another machine).

    .venv/bin/python bench/study_jobs.py
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, report
from rich.console import Console

sys.path.insert(0, str(ROOT / "tests"))
from conftest import reduced_config  # noqa: E402  (the reduced study: one definition, the tests')

from launch.local import run_plan, stage_threads  # noqa: E402
from launch.plan import make_plan  # noqa: E402
from launch.core.profile import load_profile  # noqa: E402
from launch.core.spec import load_spec


def studies(tmp: Path):
    import yaml
    cfg = yaml.safe_load(reduced_config(tmp).read_text())
    plans = []
    for i, negative in enumerate(([0, 16, 32], [0, 8, 24])):
        cfg["experiment"], cfg["volumes"]["negative"] = f"toy-reduced-{i}", negative
        (tmp / f"s{i}.yaml").write_text(yaml.safe_dump(cfg))
        plans.append(make_plan(load_spec(tmp / f"s{i}.yaml")))
    return plans


def arm(plans, jobs: int, share: bool, as_jobs: int = 0) -> tuple[float, dict, int]:
    """Both studies, timed; returns the seconds, the second study's eval metrics (cell id ->
    metrics) and how many of its cells it took from the first (shared runs root only). as_jobs:
    stage by stage, each cell with the threads `--jobs as_jobs` would give it."""
    profile = load_profile(ROOT / "configs/profiles/local-cpu.yaml")
    base = Path(tempfile.mkdtemp(prefix=f"bench-jobs{jobs}{'-share' if share else ''}-"))
    quiet = Console(file=io.StringIO())
    t, taken = time.perf_counter(), 0
    for i, plan in enumerate(plans):
        runs = base if share else base / str(i)
        if share and i:
            taken = len(plan.reusable(runs))   # a pure query, milliseconds
        if not as_jobs:
            assert run_plan(plan, runs, profile, jobs=jobs, console=quiet) == 0
            continue
        for stage, cells in plan.stages.items():
            pending = plan.todo(runs)
            todo = sum(c.key in pending for c in cells)
            os.environ["OMP_NUM_THREADS"] = str(stage_threads(as_jobs, todo))
            assert run_plan(plan, runs, profile, only=stage, jobs=jobs, console=quiet) == 0
    seconds = time.perf_counter() - t
    os.environ.pop("OMP_NUM_THREADS", None)
    last = plans[-1].exp_dir(base if share else base / "1")
    metrics = {p.parent.name: json.loads(p.read_text())["metrics"]
               for p in sorted(last.glob("eval/*/result.json"))}
    shutil.rmtree(base, ignore_errors=True)
    return seconds, metrics, taken


def main():
    # the baseline uses torch's default threads, as `make local` does
    os.environ.pop("OMP_NUM_THREADS", None)
    tmp = Path(tempfile.mkdtemp(prefix="bench-jobs-cfg-"))
    plans = studies(tmp)
    # first: the page cache then favours the baselines, not us
    t_share, m_share, taken = arm(plans, 2, True)
    t_jobs, m_jobs, _ = arm(plans, 2, False)
    t_before, _, _ = arm(plans, 1, False)
    _, m_one, _ = arm(plans, 1, False, as_jobs=2)
    same_jobs, same_share = m_jobs == m_one, m_share == m_one
    runs = (f"one run each on {os.cpu_count()} cpus: before {t_before:.0f} s, --jobs 2 "
            f"{t_jobs:.0f} s, --jobs 2 and "
            f"shared {t_share:.0f} s ({taken} of the second study's {len(plans[1].cells)} cells "
            "taken from the "
            "first); the second study's "
            f"{len(m_one)} eval cells' metrics identical to one cell at a time with the same "
            "threads per cell: "
            f"--jobs 2 {same_jobs}, shared {same_share}")
    report(id="P12", measure="two toy studies that share their world, base and aligned checkpoints "
                             "(reduced "
           "Setting II, two negative grids), end to end, --jobs 2 and shared cells",
           value=round(t_share, 1),
           baseline=f"one cell at a time, each study its own cells: {t_before:.1f} s",
           ratio=round(t_share / t_before, 2),
           target="faster, results identical", met=same_share and t_share < t_before, runs=runs)
    report(id="P12-jobs", measure="the same two studies, --jobs 2 only (each study in its own runs "
                                  "root)",
           value=round(t_jobs, 1), baseline=f"one cell at a time: {t_before:.1f} s",
           ratio=round(t_jobs / t_before, 2),
           target="faster, results identical", met=same_jobs and t_jobs < t_before, runs=runs)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
