"""`make bench`: run every benchmark under bench/ (each prints JSON lines), print each row with
the machine (CPU model, cores) and date it ran on, keep the last run per machine in
bench/results/<machine>.json, and write docs/benchmarks.md from those files: one table per machine,
never rows of two machines in one table (with --only, this machine's rows of benchmarks not rerun
keep theirs, each with its own date).

    .venv/bin/python bench/run_all.py [--only trainer,generation,...]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time

from common import ROOT, cpu_name, machine

BENCHES = ["trainer", "padding", "load_memory", "fork", "nested", "submit_10k", "collector",
           "generation", "demo_time", "study_jobs", "gpu_mfu"]
RESULTS = ROOT / "bench" / "results"
HEAD = "| id | measure | value | baseline | ratio | target | met | runs | date |"


def order(row_id: str) -> tuple:
    """P2 < P2-r8 < P2-r16 < P3a < P10: by the number, then the rest read naturally."""
    return tuple(int(t) if t.isdigit() else t for t in re.findall(r"\d+|\D+", row_id))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    names = [b for b in BENCHES if not args.only or b in args.only.split(",")]
    rows = []
    where = machine()
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
            g.update(bench=name, seconds=round(time.time() - t), date=time.strftime("%Y-%m-%d"),
                     machine=where)
            print(json.dumps(g), flush=True)
        rows += got
    RESULTS.mkdir(parents=True, exist_ok=True)
    mine = RESULTS / f"{slug(cpu_name())}.json"
    kept = []
    if args.only and mine.exists():   # this machine's rows of benchmarks not rerun
        ran = {g["bench"] for g in rows}
        kept = [g for g in json.loads(mine.read_text())["rows"] if g.get("bench") not in ran]
    mine.write_text(json.dumps({"machine": where, "rows": sorted(kept + rows, key=lambda g: order(g["id"]))},
                               indent=1) + "\n")
    out = ROOT / "docs" / "benchmarks.md"
    out.write_text(render())
    print(f"wrote {mine.relative_to(ROOT)} and {out.relative_to(ROOT)}")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def render() -> str:
    """docs/benchmarks.md: a table per machine (its last run), newest first, then bench/notes.md."""
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    runs.sort(key=lambda r: max(g.get("date", "") for g in r["rows"]), reverse=True)
    lines = ["# Benchmarks", "",
             "Written by `make bench` (bench/run_all.py) from bench/results/: one table per machine, "
             "its last run of each benchmark. Every ratio is measured side by side in one run; seconds "
             "compare only within a table.", ""]
    for run in runs:
        lines += [f"## {run['machine']}", "", HEAD, "|---|---|---|---|---|---|---|---|---|"]
        for g in run["rows"]:
            met = {True: "yes", False: "**no**", None: "not run"}[g.get("met")]
            ratio = "-" if g.get("ratio") is None else g["ratio"]
            lines.append(f"| {g['id']} | {g.get('measure', '')} | {g.get('value')} | "
                         f"{g.get('baseline', '')} | {ratio} | {g.get('target', '')} | {met} | "
                         f"{g.get('runs', '')} | {g.get('date', '')} |")
        lines.append("")
    lines += ["Commands: `make bench` (all), or `.venv/bin/python bench/run_all.py --only NAME,...` "
              f"({', '.join(BENCHES)}). P4 needs the local Slurm cluster (`tests/slurm/up.sh`); P8 "
              "needs a GPU.", ""]
    notes = ROOT / "bench" / "notes.md"   # hand-written: what was profiled and changed
    if notes.exists():
        lines += [notes.read_text()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
