"""`make bench`: run every benchmark under bench/ (each prints JSON lines), and write
docs/benchmarks.md with the measured values, the ratio to the baseline, the target, whether it is
met, and on every row its date and machine (with --only, the rows of benchmarks not rerun keep
theirs).

    .venv/bin/python bench/run_all.py [--only trainer,generation,...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import ROOT, machine

BENCHES = ["trainer", "padding", "load_memory", "fork", "nested", "submit_10k", "collector",
           "generation", "demo_time", "study_jobs", "gpu_mfu"]


def order(row_id: str) -> tuple:
    """P2 < P2-r8 < P2-r16 < P3a < P10: by the number, then the rest read naturally."""
    import re
    return tuple(int(t) if t.isdigit() else t for t in re.findall(r"\d+|\D+", row_id))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    names = [b for b in BENCHES if not args.only or b in args.only.split(",")]
    rows = []
    for name in names:
        t = time.time()
        r = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py")], cwd=ROOT,
                           capture_output=True, text=True)
        # (HF prints dicts too)
        got = [json.loads(l) for l in r.stdout.splitlines() if l.startswith('{"id"')]
        if r.returncode != 0 or not got:
            got = [{"id": name, "measure": name, "value": None, "met": False,
                    "runs": f"failed (exit {r.returncode}): "
                            f"{(r.stderr.strip().splitlines() or [''])[-1][:200]}"}]
        for g in got:
            g["bench"], g["seconds"] = name, round(time.time() - t)
            print(json.dumps(g), flush=True)
        rows += got
    lines = ["# Benchmarks", "",
             "Written by `make bench` (bench/run_all.py); every ratio is measured side by side in "
             "one run, and each "
             "row names the date and machine of its run.", "",
             "| id | measure | value | baseline | ratio | target | met | runs | measured |",
             "|---|---|---|---|---|---|---|---|---|"]
    when = f"{time.strftime('%Y-%m-%d')}, {machine()}"
    for g in sorted(rows, key=lambda g: order(g["id"])):
        met = {True: "yes", False: "**no**", None: "not run"}[g.get("met")]
        lines.append(f"| {g['id']} | {g.get('measure', '')} | {g.get('value')} | "
                     f"{g.get('baseline', '')} | "
                     f"{'-' if g.get('ratio') is None else g['ratio']} | {g.get('target', '')} | "
                     f"{met} | "
                     f"{g.get('runs', '')} | {when} |")
    lines += ["", "Commands: `make bench` (all), or `.venv/bin/python bench/<name>.py` for one "
              f"({', '.join(BENCHES)}). P4 needs the local Slurm cluster (`tests/slurm/up.sh`); P8 "
              "needs a GPU.", ""]
    # hand-written: what was profiled and changed, what was not measured
    notes = ROOT / "bench" / "notes.md"
    if notes.exists():
        lines += [notes.read_text()]
    (ROOT / "docs").mkdir(exist_ok=True)
    out = ROOT / "docs" / "benchmarks.md"
    if args.only and out.exists():   # keep the rows of benchmarks not rerun
        old = [l for l in out.read_text().splitlines() if l.startswith("| P")]
        ran = {g["id"] for g in rows}
        keep = [l for l in old if l.split("|")[1].strip() not in ran]
        head = lines.index("|---|---|---|---|---|---|---|---|---|") + 1
        lines[head:head] = keep
        body = lines[head:head + len(keep) + len(rows)]
        lines[head:head + len(body)] = sorted(body, key=lambda l: order(l.split("|")[1].strip()))
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
