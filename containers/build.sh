#!/usr/bin/env bash
# Install elastica's stack into the Python on PATH: the steps of the images' %post (containers/*.def call it), and
# what CI runs in a fresh venv for the CPU stack (tests/test_containers.py), so that the build logic itself is
# tested. --check is the images' %test: it fails unless the imports work and the DeepSpeed ops the recipes need
# are installed (ds_report alone exits 0 with every op missing).
#
#   STACK=cuda TORCH_CUDA_ARCH_LIST="8.0;9.0" bash containers/build.sh /opt/elastica   # in the CUDA image
#   STACK=cpu bash containers/build.sh .                                                # the CPU stack
#   STACK=cuda bash containers/build.sh --check
#
# Torch: the CUDA stack keeps the base image's torch (NGC builds it for its CUDA, NCCL and cuDNN; a second torch
# from PyPI would replace or conflict with it, and NGC pins it through PIP_CONSTRAINT), records its version in
# $PREFIX/STACK, and installs everything else against it. The CPU stack installs pyproject.toml's pin.
# DeepSpeed: built against the installed torch (--no-build-isolation: pip's isolated build has no torch and fails
# with "Unable to pre-compile cpu_adam"), for the accelerator named here (DS_ACCELERATOR), not the one the build
# machine happens to have: a GPU-less build node would otherwise build CPU ops only.
set -euo pipefail
STACK=${STACK:-cpu}
py=${PYTHON:-python}
here=$(cd "$(dirname "$0")" && pwd)

check() {
    "$py" - "$STACK" <<'PY'
import sys
import torch, deepspeed, transformers, datasets, submitit, wandb, yaml, rich, accelerate  # noqa: F401
from deepspeed.git_version_info import installed_ops
stack = sys.argv[1]
need = {"cuda": ["fused_adam", "cpu_adam"], "cpu": []}[stack]   # FusedAdam for GPU training; cpu_adam for offload
missing = [op for op in need if not installed_ops.get(op)]
print(f"imports ok: torch {torch.__version__} (cuda {torch.version.cuda}), deepspeed {deepspeed.__version__}, "
      f"transformers {transformers.__version__}; ops installed: {sorted(k for k, v in installed_ops.items() if v)}")
if missing:
    sys.exit(f"error: DeepSpeed ops {missing} are not installed in this {stack} stack (rebuild the image)")
if stack == "cuda" and not torch.version.cuda:
    sys.exit("error: the cuda stack has a CPU-only torch")
PY
}

if [ "${1:-}" = "--check" ]; then check; exit; fi
PREFIX=${1:?usage: STACK=cpu|cuda bash containers/build.sh <project dir> | --check}
want=$(sed -n 's/^PYTHON_VERSION=//p' "$here/versions.env")
have=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have" = "$want" ] || [ -n "${ALLOW_PYTHON_MISMATCH:-}" ] || {
    echo "error: Python $have here, containers/versions.env says $want (submitit pickles need the same)" >&2; exit 1; }

# the pins, from pyproject.toml alone: torch and deepspeed are installed on their own below
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" - "$PREFIX/pyproject.toml" "$work" <<'PY'
import re, sys, pathlib
text = pathlib.Path(sys.argv[1]).read_text()
deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
pins = re.findall(r'"([A-Za-z0-9_.-]+==[^"]+)"', deps)
out = pathlib.Path(sys.argv[2])
for name in ("torch", "deepspeed"):
    (out / name).write_text(next(p for p in pins if p.startswith(name + "==")))
(out / "requirements.txt").write_text("\n".join(p for p in pins if not p.startswith(("torch==", "deepspeed=="))) + "\n")
PY

"$py" -m pip install -q --upgrade pip setuptools wheel
if [ "$STACK" = cuda ]; then
    "$py" -c 'import torch; assert torch.version.cuda, "CPU torch"' 2>/dev/null || {
        echo "error: the CUDA stack builds on a base image with a CUDA torch (BASE_IMAGE in versions.env)" >&2; exit 1; }
    torch_cuda=$("$py" -c 'import torch; print(torch.version.cuda.split(".")[0])')
    nvcc_cuda=$(nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
    [ "$torch_cuda" = "$nvcc_cuda" ] || {
        echo "error: torch is built for CUDA $torch_cuda, nvcc is CUDA $nvcc_cuda: pick a matching BASE_IMAGE" >&2; exit 1; }
    export DS_ACCELERATOR=cuda DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 DS_BUILD_UTILS=1
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:?set TORCH_CUDA_ARCH_LIST (containers/versions.env)}
else
    "$py" -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$(cat "$work/torch")"
    export DS_ACCELERATOR=cpu DS_BUILD_OPS=0   # CPU training uses torch's AdamW; DeepSpeed JITs its comm op
fi
# every other install keeps the torch that is there: our own constraint instead of the base image's PIP_CONSTRAINT
"$py" -c 'import torch; print("torch==" + torch.__version__)' > "$work/constraints.txt"
export PIP_CONSTRAINT="$work/constraints.txt"
"$py" -m pip install -q -r "$work/requirements.txt"
"$py" -m pip install -q --no-build-isolation --no-cache-dir "$(cat "$work/deepspeed")"
"$py" -m pip install -q --no-deps "$PREFIX"
"$py" - "$PREFIX" "$STACK" <<'PY'
import sys, torch, deepspeed
from deepspeed.git_version_info import installed_ops
stack = f"stack {sys.argv[2]}\ntorch {torch.__version__} cuda {torch.version.cuda}\ndeepspeed {deepspeed.__version__}\n" \
        f"ops {' '.join(sorted(k for k, v in installed_ops.items() if v)) or '(JIT)'}\n"
open(f"{sys.argv[1]}/STACK", "w").write(stack)
print(stack, end="")
PY
check
