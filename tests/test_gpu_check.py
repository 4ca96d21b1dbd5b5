"""`make gpu-check` cannot run here (no GPU); its --smoke mode runs the very same checks on CPU
(gloo, fp32): a ZeRO-3 chain compared with separate runs at every milestone, a signal and resume, an
eval cell with a classifier and a score model from random local weights, the MFU script. It runs on
the offline wheel bundle installed into a venv that has only torch, as on a GPU machine without
network: so a GPU machine finds a working script.

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


def torch_only_venv(path: Path) -> Path:
    """A new venv that sees torch (and what torch requires) and nothing else: a GPU machine's bare
    Python."""
    import importlib.metadata as md
    from packaging.requirements import Requirement
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    site = next(path.glob("lib/python*/site-packages"))
    todo, seen = ["torch"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        dist = md.distribution(name)
        base = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if (base / top).exists() and not (site / top).exists():
                (site / top).symlink_to(base / top)
        todo += [Requirement(r).name for r in dist.requires or [] if "extra ==" not in r]
    return path / "bin" / "python"


def test_gpu_bundle_is_complete_and_the_smoke_check_passes_on_it(tmp_path):
    """The offline bundle (containers/gpu_bundle.py, for this machine's Python) installed with no
    index into a venv that has only torch: every import the check needs comes from it; then every
    check of gpu_check.py --smoke (the same code as on a GPU: ZeRO-3 chain compared at every
    milestone, resume, eval, MFU) passes there."""
    bundle = tmp_path / "bundle"
    r = subprocess.run([sys.executable, str(ROOT / "containers" / "gpu_bundle.py"), "--out",
                        str(bundle)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    py = torch_only_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # DeepSpeed's comm op JIT-built for this venv in a folder of its own: its build flags name the
    # venv, and in the suite's shared folder each venv's build would make the other rebuild (~1 min)
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "torch_extensions")
    bare = subprocess.run([py, "-c", "import torch; import deepspeed"], capture_output=True,
                          text=True, env=env)
    assert "No module named 'deepspeed'" in bare.stderr, "the venv has torch and nothing else"
    r = subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(bundle),
                        "-r",
                        str(bundle / "requirements.txt")], capture_output=True, text=True,
                       timeout=900,
                       # the bundle alone: no index, no site config
                       env={**env, "PIP_CONFIG_FILE": os.devnull})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    out = tmp_path / "gpu-check.json"
    r = subprocess.run([py, str(ROOT / "tests" / "gpu_check.py"), "--smoke", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=1200,
                       env={**env, "TMPDIR": str(tmp_path)})
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    lines = [l for l in r.stdout.splitlines() if l.startswith(("PASS", "FAIL"))]
    assert [l.split()[:2] for l in lines] == [["PASS", c] for c in ("train", "resume", "eval",
                                                                    "mfu")]
    summary = json.loads(out.read_text())
    assert summary["passed"] == 4 and summary["failed"] == 0 and summary["mode"].startswith("smoke")
    assert summary["optimizer"] == {"optimizer": "torch AdamW",
                                    "why": "no CUDA device (FusedAdam is a CUDA kernel)"}
    assert "every one" in lines[0] and summary["date"]
    # the MFU script's smoke (bench P8): embeddings and an untied head over the word tokenizer's
    # 32,004 words (4.1 M) plus two 64-wide layers; under ZeRO-3 the parameters are partitioned
    # (numel 0): counted from ds_numel
    row = next(c["detail"] for c in summary["checks"] if c["check"] == "mfu")
    assert row["id"] == "P8-smoke" and row["value"] > 0 and 4_000_000 < row["params"] < 4_400_000
    assert row["flops_per_token"] == 6 * row["params"] + 12 * 2 * 64 * 64 and "not a check" in row["note"]
    assert "4 passed, 0 failed" in r.stdout


def test_gpu_check_without_a_gpu_is_one_line():
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "gpu_check.py")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
