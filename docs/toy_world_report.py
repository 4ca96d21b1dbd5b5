"""Refresh the tables and plots behind docs/toy-world.md from the toy studies' run folders (collector output).

    for c in setting2-3seeds setting2-regime setting2-shifted hooke setting1-protocol setting1-temp1 \
             setting3-sizes setting3-volumes; do
        OMP_NUM_THREADS=1 .venv/bin/python -m launch run configs/toy/$c.yaml --runs runs; done
    .venv/bin/python docs/toy_world_report.py runs     # -> docs/toy-world/<study>/*.md and docs/toy-world/*.png

Numbers come only from the run folders (collector tables as Markdown and CSV, results.csv); the prose of
docs/toy-world.md is written by a person.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STUDIES = {"toy-setting2-3seeds": "setting2", "toy-setting1-protocol": "setting1-protocol",
           "toy-setting2-regime": "setting2-regime", "toy-setting3-sizes": "setting3-sizes",
           "toy-setting3-volumes": "setting3-volumes", "toy-setting2-shifted": "setting2-shifted",
           "toy-hooke": "hooke", "toy-setting1-temp1": "setting1-temp1"}   # run folder -> docs/toy-world/<folder>


def main(runs: Path) -> None:
    """Collect each study again and copy its report (tables as Markdown, rebound/resistance plots) into docs/."""
    from eval.collect import collect
    out = ROOT / "docs" / "toy-world"
    for exp, short in STUDIES.items():
        d = runs / exp
        if not d.exists():
            print(f"{exp}: not run")
            continue
        s = collect(d)
        shutil.rmtree(out / short, ignore_errors=True)   # no table of an earlier run stays behind
        (out / short).mkdir(parents=True)
        for f in [*(d / "report").glob("*.md"), *(d / "report").glob("*.csv"), *(d / "report").glob("tables/*")]:
            if f.name != "index.md":   # its plots live in the run folder; docs/toy-world.md is the page here
                shutil.copy(f, out / short / f.name)   # tables (Markdown, CSV) and the tidy numbers (results.csv)
        for png in (d / "report").glob("*.png"):
            shutil.copy(png, out / f"{exp}-{png.name}")
        print(f"{exp}: {s['records']} cells, {len(s['problems'])} not in the tables -> {out / short}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs")
