"""`make gpu-check` cannot run here (no GPU); its --smoke mode runs the very same checks on CPU (gloo, fp32): a
ZeRO-3 cell with a milestone inside a global batch, a signal and resume, an eval cell with a classifier and a
score model from random local weights, the MFU script. So a GPU session finds a working script.

    .venv/bin/python -m pytest -q tests/test_gpu_check.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
import pytest

pytestmark = pytest.mark.slow   # real training, images or subprocess studies: not in make test-fast

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_smoke_passes_every_check(tmp_path):
    out = tmp_path / "gpu-check.json"
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "gpu_check.py"), "--smoke", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "TMPDIR": str(tmp_path)})
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    lines = [l for l in r.stdout.splitlines() if l.startswith(("PASS", "FAIL"))]
    assert [l.split()[:2] for l in lines] == [["PASS", c] for c in ("train", "resume", "eval", "mfu")]
    summary = json.loads(out.read_text())
    assert summary["passed"] == 4 and summary["failed"] == 0 and summary["mode"].startswith("smoke")
    # the MFU script's smoke (bench P8): embeddings and an untied head over the word tokenizer's 32,004 words (4.1 M)
    # plus two 64-wide layers; under ZeRO-3 the parameters are partitioned (numel 0): counted from ds_numel
    row = next(c["detail"] for c in summary["checks"] if c["check"] == "mfu")
    assert row["id"] == "P8-smoke" and row["value"] > 0 and 4_000_000 < row["params"] < 4_400_000
    assert row["flops_per_token"] == 6 * row["params"] + 12 * 2 * 64 * 64
    assert "4 passed, 0 failed" in r.stdout


def test_gpu_check_without_a_gpu_is_one_line():
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "gpu_check.py")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
