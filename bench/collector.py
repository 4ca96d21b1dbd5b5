"""P5: the collector over 10,000 eval cells (result.json + job.json + DONE each): tables, plots and
status.

    .venv/bin/python bench/collector.py
"""
from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from common import report, spread, timed

from eval.collect import collect

MODELS, SEEDS, POS, NEG = 4, 10, 10, 25   # 10,000 cells


def make_run(exp: Path) -> int:
    rng = random.Random(0)
    n = 0
    for m in range(MODELS):
        for s in range(SEEDS):
            for p in range(POS):
                for k in range(NEG):
                    d = exp / "eval" / f"m{m}.s{s}.p{p}.n{k}-{n:010d}"
                    d.mkdir(parents=True)
                    coords = {"model": f"m{m}", "seed": s, "arm": "positive",
                              "positive": (p + 1) * 100, "negative": k * 10}
                    (d / "job.json").write_text(json.dumps({"stage": "eval", "coords": coords,
                                                            "upstream": []}))
                    v = rng.random()
                    (d / "result.json").write_text(json.dumps({"metrics": [
                        {"name": "positive_rate", "value": v, "stderr": 0.02, "n": 400,
                         "higher_is_better": True},
                        {"name": "bits_per_token/positive", "value": 2 + v, "stderr": 0.01,
                         "n": 200, "higher_is_better": False}]}))
                    (d / "DONE").write_text(json.dumps({"milestones": ["result.json"],
                                                        "nonce": str(n)}))
                    n += 1
    return n


def main():
    exp = Path(tempfile.mkdtemp(prefix="bench-collect-")) / "study"
    n = make_run(exp)
    times = timed(lambda: collect(exp), repeats=3)
    s = collect(exp)
    assert s["records"] == n and not s["problems"]
    best = min(times)
    report(id="P5", measure=f"collector over {n:,} result files (tables in 3 formats, plots, "
                            "status)",
           value=round(sorted(times)[1], 2), baseline="-", ratio=None, target="< 2 s",
           met=sorted(times)[1] < 2.0, runs=f"{spread(times)} s; best {best:.2f} s")


if __name__ == "__main__":
    main()
