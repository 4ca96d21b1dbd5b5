"""P5: the collector over 10,000 eval cells (result.json + job.json + DONE each), made from 400
negative-training cells of 25 milestone checkpoints each (config + a whole safetensors file), as a
study's eval cells are: tables, plots and status, every upstream checkpoint verified. Prints where
the time goes beside the figure: each phase's seconds and the profile's top entries, both from a
run in one process (the collector itself reads and draws on every core it has).

    .venv/bin/python bench/collector.py
"""
from __future__ import annotations

import cProfile
import io
import json
import pstats
import random
import re
import struct
import tempfile
import time
from pathlib import Path

from common import report, spread, timed

from eval import collect as C
from eval.collect import collect

MODELS, SEEDS, POS, NEG = 4, 10, 10, 25   # 10,000 eval cells from 400 training runs


def tiny_safetensors(path: Path) -> None:
    """A whole safetensors file: one 4-byte tensor."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)


def make_run(exp: Path) -> int:
    rng = random.Random(0)
    n = 0
    for m in range(MODELS):
        for s in range(SEEDS):
            for p in range(POS):
                train = f"negative/m{m}.s{s}.p{p}-{m * 100 + s * 10 + p:010d}"
                milestones = [f"n{k * 10}" for k in range(NEG)]
                for name in milestones:
                    ckpt = exp / train / "checkpoints" / name
                    ckpt.mkdir(parents=True)
                    (ckpt / "config.json").write_text("{}")
                    tiny_safetensors(ckpt / "model.safetensors")
                nonce = f"t{m}{s}{p}"
                (exp / train / "DONE").write_text(json.dumps({"milestones": milestones,
                                                              "nonce": nonce, "kind": "train"}))
                for k in range(NEG):
                    d = exp / "eval" / f"m{m}.s{s}.p{p}.n{k}-{n:010d}"
                    d.mkdir(parents=True)
                    coords = {"model": f"m{m}", "seed": s, "arm": "positive",
                              "positive": (p + 1) * 100, "negative": k * 10}
                    (d / "job.json").write_text(json.dumps({"stage": "eval", "kind": "eval",
                                                            "coords": coords,
                                                            "upstream": [train]}))
                    v = rng.random()
                    (d / "result.json").write_text(json.dumps({"metrics": [
                        {"name": "positive_rate", "value": v, "stderr": 0.02, "n": 400,
                         "higher_is_better": True},
                        {"name": "bits_per_token/positive", "value": 2 + v, "stderr": 0.01,
                         "n": 200, "higher_is_better": False}]}))
                    (d / "DONE").write_text(json.dumps({"milestones": ["result.json"],
                                                        "nonce": str(n),
                                                        "upstream": {train: nonce}}))
                    n += 1
    return n


def profile_top(fn, k: int = 8) -> str:
    """The k entries of fn's profile with the most time spent inside them."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(k)
    rows = [l.split(None, 5) for l in out.getvalue().splitlines()
            if re.match(r"\s*[\d/]+\s+\d+\.\d+\s", l)]
    return "; ".join(f"{r[5].rsplit('/', 1)[-1]} {float(r[1]):.2f} s" for r in rows if len(r) == 6)


def phases(exp: Path) -> dict:
    """Seconds in each phase of one collect in one process (no forked readers or plots; the
    second of two runs, so that no phase pays for a first use)."""
    spent, saved = {}, {}
    for name in ("read_all", "tables_of", "plot_all", "write_tables", "results_rows",
                 "write_results", "write_index"):
        saved[name] = fn = getattr(C, name)

        def clocked(*a, _fn=fn, _name=name, **k):
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                spent[_name] = spent.get(_name, 0) + time.perf_counter() - t
        setattr(C, name, clocked)
    cores, C.cores = C.cores, lambda: 1
    try:
        collect(exp)
        spent.clear()
        collect(exp)
    finally:
        C.cores = cores
        for name, fn in saved.items():
            setattr(C, name, fn)
    return spent


def main():
    exp = Path(tempfile.mkdtemp(prefix="bench-collect-")) / "study"
    n = make_run(exp)
    times = timed(lambda: collect(exp), repeats=3)
    s = collect(exp)
    assert s["records"] == n and not s["problems"], s["problems"][:3]
    best = min(times)
    spent = phases(exp)
    work = sum(spent.values())
    print("P5 in one process, seconds per phase:",
          ", ".join(f"{k} {v:.2f}" for k, v in spent.items()), f"(sum {work:.2f} s)", flush=True)
    cores, C.cores = C.cores, lambda: 1
    print("P5 profile in one process, time inside each function:",
          profile_top(lambda: collect(exp)), flush=True)
    C.cores = cores
    report(id="P5", measure=f"collector over {n:,} result files (tables in 3 formats, plots, "
                            "status)",
           value=round(sorted(times)[1], 2), baseline="-", ratio=None, target="< 1 s",
           met=sorted(times)[1] < 1.0,
           runs=f"{spread(times)} s on {C.cores()} cores; best {best:.2f} s; the work in one "
                f"process: {work:.2f} s (reading and verifying {spent['read_all']:.2f}, plots "
                f"{spent['plot_all']:.2f}, tidy results {spent['results_rows'] + spent['write_results']:.2f}, "
                f"tables {spent['tables_of'] + spent['write_tables'] + spent['write_index']:.2f}), "
                f"so at least {work / C.cores():.2f} s on {C.cores()} cores")


if __name__ == "__main__":
    main()
