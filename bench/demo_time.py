"""P7: `make demo` end to end (toy Setting II: world, pre-training, alignment, control, negative, 49 evals,
collect) on this machine, into a fresh runs folder, the environment already set up.

    .venv/bin/python bench/demo_time.py
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time

from common import ROOT, report


def main():
    runs = tempfile.mkdtemp(prefix="bench-demo-")
    t = time.perf_counter()
    r = subprocess.run(["make", "-s", "demo", f"RUNS={runs}"], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    report(id="P7", measure="make demo end to end (toy Setting II, 1 seed, matched-start control)",
           value=round(wall / 60, 2), baseline="-", ratio=None, target="< 10 min", met=r.returncode == 0 and wall < 600,
           runs=f"one run, exit {r.returncode}, {wall:.0f} s")
    shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
