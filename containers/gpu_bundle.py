"""The wheels `make gpu-check` needs on a GPU machine with no network, built on a machine with PyPI.

The GPU machine brings its own torch (built for its CUDA); everything else the check imports comes
from this folder: DeepSpeed (built here as a pure-Python wheel: its ops are JIT-built there, or
torch's AdamW runs), the Hugging Face stack, and every dependency of those, compiled ones
(pydantic-core, pyarrow, tokenizers, ...) for the GPU machine's Python and platform. The list is the
dependency closure of what the check imports, read from this environment's installed metadata (its
pinned versions), with markers evaluated for the target Python; torch and what only torch needs are
left out. Submitit and wandb are not needed (the check runs cells with W&B disabled).

    python containers/gpu_bundle.py --python 3.12 --out gpu-bundle         # make gpu-bundle PYTHON_VERSION=3.12
    # on the GPU machine:
    pip install --no-index --find-links gpu-bundle -r gpu-bundle/requirements.txt && make gpu-check PY=python3

--exclude NAME leaves out a package the GPU machine already has (to carry less).
tests/test_gpu_check.py installs a bundle for this machine's Python into a fresh venv that has only
torch and runs `gpu_check.py --smoke` there.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOTS = ["deepspeed", "transformers", "datasets", "accelerate", "safetensors", "tokenizers",
         "pyyaml", "rich"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str], python: str, exclude: set[str]) -> dict[str, str]:
    """{name: installed version} of the roots and everything they require here (extras included, as
    `fsspec[http]`), for Python `python`; torch is the GPU machine's, and what only torch needs is
    not reached."""
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0"}
    found, done, todo = {}, set(), [(norm(r), "") for r in roots]
    while todo:
        name, extra = todo.pop()
        if name in exclude or name == "torch" or (name, extra) in done:
            continue
        done.add((name, extra))
        found[name] = md.version(name)
        for line in md.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({**env, "extra": extra}):
                todo += [(norm(req.name), "")] + [(norm(req.name), e) for e in req.extras]
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                    help="the GPU machine's Python, e.g. 3.12 (default: this one's)")
    ap.add_argument("--out", default="gpu-bundle", help="the folder to fill")
    ap.add_argument("--exclude", nargs="*", default=[], help="packages the GPU machine already has")
    args = ap.parse_args()
    if not re.fullmatch(r"3\.\d{1,2}", args.python):
        print(f"error: --python: {args.python!r} is not a Python version; use e.g. 3.12",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pins = closure(ROOTS, args.python, {norm(x) for x in args.exclude})
    tag = args.python.replace(".", "")
    # DeepSpeed has no wheel on PyPI: build a pure-Python one against this torch (no ops compiled)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out),
                    f"deepspeed=={pins.pop('deepspeed')}"], check=True,
                   env={**os.environ, "DS_BUILD_OPS": "0"})
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:",
                    "--python-version", tag, "--implementation", "cp", *platforms, "-d", str(out),
                    *(f"{n}=={v}" for n, v in sorted(pins.items()))], check=True)
    (out / "requirements.txt").write_text("".join(f"{r}\n" for r in ROOTS
                                                  if norm(r) not in args.exclude))
    print(f"{len(list(out.glob('*.whl')))} wheels for Python {args.python} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
