"""Run the toy-world studies behind docs/toy-world.md and refresh its tables and plots from their
run folders.

    make toy-world      # = OMP_NUM_THREADS=1 .venv/bin/python docs/toy_world_report.py --run --jobs 2 runs
    .venv/bin/python docs/toy_world_report.py runs      # only refresh docs/toy-world/ from runs that exist

The page's tables are the collector's: a block of docs/toy-world.md

    <!-- table: setting2/rebound.md | positive_logit: paired change -->
    ...
    <!-- /table -->

is filled with the table of docs/toy-world/setting2/rebound.md whose heading starts with the text
after "|" (one table exactly, or the script stops and names the block), heading included, each time
the script runs; `--page-only` refills the page from the committed tables without a runs root.

--run runs the studies one after another in STUDIES order (`python -m launch run <config> --runs
<runs> --jobs N`), timing each: a study takes the cells an earlier one under the same runs root has
done (the same content-addressed cells: the shared world, bases and Setting I slices;
launch.plan.Plan.reusable), so the order decides which study pays for them. The times go to
<runs>/toy-world-times.json and docs/toy-world/times.md (seconds, cells run, cells taken). Numbers
come only from the run folders (collector tables as Markdown and CSV, results.csv); the prose of
docs/toy-world.md is written by a person, its tables are filled in from those files.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eval.tables import Table  # noqa: E402  (the repository root on sys.path first)

STUDIES = {   # run folder -> (config, docs/toy-world/<folder>); run in this order
    "toy-setting2-3seeds": ("configs/toy/setting2-3seeds.yaml", "setting2"),
    "toy-setting1-protocol": ("configs/toy/setting1-protocol.yaml", "setting1-protocol"),
    "toy-setting1-temp1": ("configs/toy/setting1-temp1.yaml", "setting1-temp1"),
    "toy-setting2-regime": ("configs/toy/setting2-regime.yaml", "setting2-regime"),
    "toy-setting3-volumes": ("configs/toy/setting3-volumes.yaml", "setting3-volumes"),
    "toy-setting3-sizes": ("configs/toy/setting3-sizes.yaml", "setting3-sizes"),
    "toy-setting2-shifted": ("configs/toy/setting2-shifted.yaml", "setting2-shifted"),
    "toy-setting2-control": ("configs/toy/setting2-control.yaml", "setting2-control"),
    "toy-hooke": ("configs/toy/hooke.yaml", "hooke"),
    "toy-hooke-joint": ("configs/toy/hooke-joint.yaml", "hooke-joint"),
}


def run_all(runs: Path, jobs: int) -> None:
    """Run every study (a done study runs nothing) and record each one's wall time and how many
    cells it ran."""
    times_path = runs / "toy-world-times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    for exp, (config, _) in STUDIES.items():
        before = {p.parent for p in (runs / exp).glob("*/*/DONE")}
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "launch", "run", config, "--runs", str(runs),
                            "--jobs", str(jobs)],
                           cwd=ROOT)
        seconds = time.perf_counter() - t0
        if r.returncode:
            sys.exit(f"{exp}: launch run exited {r.returncode}")
        cells = [p.parent for p in (runs / exp).glob("*/*/DONE") if p.parent not in before]
        taken = sum(any('"adopted_from"' in line
                        for line in (d / "attempts.jsonl").read_text().splitlines())
                    for d in cells if (d / "attempts.jsonl").exists())
        if cells:   # a study that had nothing left to do keeps the time of the run that did it
            times[exp] = {"seconds": round(seconds, 1), "cells_run": len(cells) - taken,
                          "cells_taken": taken,
                          "jobs": jobs, "omp_threads": os.environ.get("OMP_NUM_THREADS", ""),
                          "cpus": os.cpu_count(), "machine": platform.machine(),
                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            times_path.write_text(json.dumps(times, indent=2) + "\n")


def times_table(runs: Path) -> str:
    times = json.loads((runs / "toy-world-times.json").read_text())
    rows = ["### Minutes per study, run one after another into one runs root", "",
            "| study | minutes | cells run | cells taken from an earlier study | jobs | cpus |",
            "|---|---:|---:|---:|---:|---:|"]
    for exp in STUDIES:
        if t := times.get(exp):
            rows.append(f"| {exp} | {t['seconds'] / 60:.1f} | {t['cells_run']} | "
                        f"{t['cells_taken']} | {t['jobs']} "
                        f"| {t['cpus']} |")
    total = sum(times[e]["seconds"] for e in STUDIES if e in times)
    rows.append(f"| all, one after another | {total / 60:.1f} | | | | |")
    return "\n".join(rows) + "\n"


BLOCK = re.compile(r"<!-- table: (?P<file>[\w./-]+) \| (?P<head>[^\n]+?) -->\n.*?<!-- /table -->",
                   re.S)


def tables_of(md: str) -> dict[str, str]:
    """{heading: the heading and its table} of a collector report file."""
    parts = re.split(r"(?m)^(?=### )", md)
    return {p.splitlines()[0][4:]: p.strip() for p in parts if p.startswith("### ")}


def fill_page(page: str, tables_dir: Path) -> str:
    """The page with every table block refilled from tables_dir; a block that names no table, or
    more than one, stops the script with the block's text."""
    def fill(m: re.Match) -> str:
        f = tables_dir / m["file"]
        if not f.is_file():
            sys.exit(f"docs/toy-world.md: {m['file']}: no such table file (block: {m[0][:80]!r})")
        found = [t for h, t in tables_of(f.read_text()).items() if h.startswith(m["head"])]
        if len(found) != 1:
            sys.exit(f"docs/toy-world.md: {m['file']}: {len(found)} tables start with "
                     f"{m['head']!r}; name one")
        return f"<!-- table: {m['file']} | {m['head']} -->\n{found[0]}\n<!-- /table -->"
    return BLOCK.sub(fill, page)


def main(runs: Path) -> None:
    """Collect each study again and copy its report (tables as Markdown, rebound/resistance plots)
    into docs/."""
    out = ROOT / "docs" / "toy-world"
    for exp, (_, short) in STUDIES.items():
        d = runs / exp
        if not d.exists():
            print(f"{exp}: not run")
            continue
        r = subprocess.run([sys.executable, "-m", "launch", "collect", str(d), "--json"], cwd=ROOT,
                           capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{exp}: launch collect exited {r.returncode}: {r.stderr.strip()}")
        s = json.loads(r.stdout)
        shutil.rmtree(out / short, ignore_errors=True)   # no table of an earlier run stays behind
        (out / short).mkdir(parents=True)
        for f in [*(d / "report").glob("*.md"), *(d / "report").glob("*.csv"),
                  *(d / "report").glob("tables/*")]:
            # its plots live in the run folder; docs/toy-world.md is the page here
            if f.name != "index.md":
                # tables (Markdown, CSV) and the tidy numbers (results.csv)
                shutil.copy(f, out / short / f.name)
        for png in (d / "report").glob("*.png"):
            shutil.copy(png, out / f"{exp}-{png.name}")
        print(f"{exp}: {s['records']} cells, {len(s['problems'])} not in the tables -> "
              f"{out / short}")
    if (runs / "toy-world-times.json").exists():
        (out / "times.md").write_text(times_table(runs))
    (out / "claims.md").write_text(claims_table(runs))
    write_page()


def claims_table(runs: Path) -> str:
    """Every study's claims (the collector's claims.csv of each), one table: what each config named
    before its run, and the verdict of its Holm-corrected family."""
    columns = ["claim", "primary statistic", "expects", "tests", "as expected", "opposite",
               "unresolved", "verdict"]
    t = Table("claims", "Every study's claims, each named in its config before the run (primary "
              "statistic, window, scale); each family Holm-corrected at 5 %", ["study", *columns])
    for exp in STUDIES:
        f = runs / exp / "report" / "tables" / "claims.csv"
        if f.is_file():
            for r in csv.DictReader(f.open()):
                t.add(exp, *(r[c] for c in columns))
    return t.markdown()


def write_page() -> None:
    page = ROOT / "docs" / "toy-world.md"
    page.write_text(fill_page(page.read_text(), ROOT / "docs" / "toy-world"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="?", default=str(ROOT / "runs"),
                    help="the runs root (default: runs/)")
    ap.add_argument("--run", action="store_true", help="run the studies first, timing each")
    ap.add_argument("--jobs", type=int, default=2, help="cells at once within a study (launch run "
                                                        "--jobs)")
    ap.add_argument("--page-only", action="store_true", help="only refill docs/toy-world.md's "
                                                             "tables from docs/toy-world/")
    a = ap.parse_args()
    if a.page_only:
        write_page()
        sys.exit(0)
    if a.run:
        run_all(Path(a.runs), a.jobs)
    main(Path(a.runs))
