"""The GPU benchmark script (bench/gpu_mfu.py, P8) cannot run here; its --smoke mode runs the same code path on CPU
(tiny random-init Llama, ZeRO-3 via the trainer, synthetic tokens, the FLOP count) so that a GPU session does not
find a broken script. No time is asserted.

    .venv/bin/python -m pytest -q tests/test_bench.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_mfu_script_smoke_on_cpu(tmp_path):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TMPDIR": str(tmp_path)}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_mfu.py"), "--smoke"], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    row = next(json.loads(l) for l in r.stdout.splitlines() if l.startswith('{"id"'))
    assert row["id"] == "P8-smoke" and row["value"] > 0
    # embeddings and an untied head over the 32,004-word vocabulary (4.1 M) plus two 64-wide layers; under ZeRO-3
    # the parameters are partitioned (numel 0), so this also checks that the script counts them from ds_numel
    assert 4_000_000 < row["params"] < 4_400_000
    assert row["flops_per_token"] == 6 * row["params"] + 12 * 2 * 64 * 64
