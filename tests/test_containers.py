"""Containers: the def files (sections, one version source, Python version), the image command line
of the launcher, `make debug-cell` on the host, and a real image build where apptainer exists.

    .venv/bin/python -m pytest -q tests/test_containers.py
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launch.core.profile import Profile

from launch.core.schema import ConfigError, build

pytestmark = pytest.mark.slow   # real training, images or subprocess studies: not in make test-fast

ROOT = Path(__file__).resolve().parent.parent
DEFS = [ROOT / "containers" / "elastica.def", ROOT / "containers" / "elastica-cpu.def"]


def versions() -> dict:
    return dict(l.split("=", 1) for l in (ROOT / "containers/versions.env").read_text().splitlines()
                if l and not l.startswith("#"))


def sections(text: str) -> dict[str, str]:
    """Header lines (Bootstrap, From) under '', then each %section's body."""
    out, name = {"": ""}, ""
    for line in text.splitlines():
        m = re.match(r"^%(\w+)\s*$", line)
        if m:
            name = m.group(1)
            out[name] = ""
        else:
            out[name] += line + "\n"
    return out


@pytest.mark.parametrize("path", DEFS, ids=lambda p: p.name)
def test_def_file_sections_and_single_version_source(path):
    s = sections(path.read_text())
    assert {"arguments", "files", "post", "environment", "test", "labels"} <= set(s)
    assert re.search(r"^Bootstrap: docker$", s[""], re.M) and re.search(r"^From: \{\{ \w+ \}\}$",
                                                                        s[""], re.M)
    # every build argument is either in versions.env or defaulted in %arguments (GIT_COMMIT only)
    used = set(re.findall(r"\{\{ (\w+) \}\}", path.read_text()))
    defaults = {l.split("=")[0].strip() for l in s["arguments"].splitlines() if "=" in l}
    assert used <= set(versions()) | defaults and defaults == {"GIT_COMMIT"}
    # the steps are containers/build.sh's, the pins pyproject.toml's: no version list in the def
    # file
    for f in ("pyproject.toml", "LICENSE", "containers/build.sh", "containers/versions.env"):
        assert f"{f} /opt/elastica/{f}" in s["files"], f
    assert "bash /opt/elastica/containers/build.sh /opt/elastica" in s["post"]
    assert not re.search(r"(torch|transformers|deepspeed|datasets|submitit|wandb)==",
                         path.read_text())
    assert "PYTHONNOUSERSITE=1" in s["environment"] and "PYTHONPATH" not in s["environment"]
    # fails when an op is missing
    assert "bash /opt/elastica/containers/build.sh --check" in s["test"]
    assert "org.elastica.git_commit {{ GIT_COMMIT }}" in s["labels"]


def test_build_script_builds_the_ops_for_the_named_accelerator():
    post = sections(DEFS[0].read_text())["post"]
    assert 'STACK=cuda TORCH_CUDA_ARCH_LIST="{{ TORCH_CUDA_ARCH_LIST }}"' in post
    assert versions()["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0"   # A100, H100
    script = (ROOT / "containers" / "build.sh").read_text()
    assert "export DS_ACCELERATOR=cuda DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 DS_BUILD_UTILS=1" in script
    # the base's Python is checked
    assert "--no-build-isolation" in script and "PYTHON_VERSION=" in script
    assert '"cuda": ["fused_adam", "cpu_adam"]' in script


@pytest.mark.slow
def test_build_script_installs_the_cpu_stack_in_a_fresh_venv(tmp_path):
    """The images' %post steps, run for the CPU stack in a new venv: the pins, DeepSpeed built
    against the installed torch, the project; then the %test check, which also fails where an op the
    CUDA stack needs is missing (ds_report alone would exit 0)."""
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    env = {**os.environ, "PATH": f"{tmp_path / 'venv' / 'bin'}:{os.environ['PATH']}",
           "STACK": "cpu",
           "ALLOW_PYTHON_MISMATCH": "1"}   # this machine's Python need not be the images'
    env.pop("VIRTUAL_ENV", None)
    proj = tmp_path / "opt-elastica"   # what the def's %files copies into the image
    proj.mkdir()
    for f in ("pyproject.toml", "LICENSE", "containers", "launch", "train", "eval"):
        (shutil.copytree if (ROOT / f).is_dir() else shutil.copy)(ROOT / f, proj / f)
    r = subprocess.run(["bash", str(proj / "containers" / "build.sh"), str(proj)], env=env,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "imports ok: torch 2.13.0" in r.stdout and "deepspeed 0.19.8" in r.stdout
    stack = (proj / "STACK").read_text()
    assert stack.startswith("stack cpu\ntorch 2.13.0") and "ops (JIT)" in stack
    r = subprocess.run(["bash", str(ROOT / "containers" / "build.sh"), "--check"],
                       env={**env, "STACK": "cuda"}, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "error: DeepSpeed ops ['fused_adam', 'cpu_adam'] are not installed" in r.stderr


def test_python_version_is_stated_once_and_checked():
    from launch import slurm
    v = versions()
    assert slurm.container_python() == v["PYTHON_VERSION"]
    assert v["PYTHON_VERSION"] in v["CPU_BASE_IMAGE"]       # python:3.12-... matches
    here = "%d.%d" % sys.version_info[:2]
    prof = build(Profile, {"name": "p", "executor": "slurm", "image": "/images/x.sif"})
    if here != v["PYTHON_VERSION"]:
        with pytest.raises(ConfigError, match="image: the login node runs Python"):
            slurm.check_image_python(prof)
    else:
        slurm.check_image_python(prof)
    slurm.check_image_python(build(Profile, {"name": "p"}))   # no image: nothing to check


def test_job_script_runs_in_the_image_with_this_checkout(tmp_path):
    from launch.slurm import python_command, setup_lines
    image = tmp_path / "x.sif"
    image.write_bytes(b"not really an image")
    prof = build(Profile, {"name": "p", "executor": "slurm", "image": str(image),
                           "binds": ["/scratch", "/data"]})
    assert python_command(prof) == f"apptainer exec --nv --bind /scratch,/data {image} python"
    lines = setup_lines(prof)
    assert f"export PYTHONPATH={ROOT}" in lines and f"export ELASTICA_IMAGE={image}" in lines
    digest = next(l for l in lines if l.startswith("export ELASTICA_IMAGE_DIGEST="))
    import hashlib
    assert digest.endswith(hashlib.sha256(b"not really an image").hexdigest())


def test_apptainer_stand_in_sees_the_exact_command(tmp_path):
    """A logging stand-in for apptainer (not the real binary) checks what make debug-cell runs in
    the image: the checkout, the run folder, the HF cache and the profile's binds bound, the job's
    variables set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (bin_dir / "apptainer").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n"
                                       "echo \"HF_HOME=$HF_HOME HF_HUB_OFFLINE=$HF_HUB_OFFLINE "
                                       "WANDB_MODE=$WANDB_MODE "
                                       f"PYTHONPATH=$PYTHONPATH\" >> {log}\n")
    (bin_dir / "apptainer").chmod(0o755)
    run = tmp_path / "runs" / "exp"
    (run / "eval" / "c1").mkdir(parents=True)
    (run / "eval" / "c1" / "job.json").write_text("{}")
    (run / "profile.yaml").write_text("name: site\nexecutor: slurm\nhf_home: /shared/hf\nbinds: "
                                      "[/scratch]\n"
                                      "wandb_mode: disabled\n")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    image = tmp_path / "e.sif"
    image.write_bytes(b"stand-in image")   # a missing image is refused before apptainer is called
    r = subprocess.run(["make", "-s", "debug-cell", f"RUN={run}", "CELL=eval/c1", f"IMAGE={image}"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    cmd, envline = log.read_text().strip().splitlines()
    assert cmd == (f"exec --nv --bind {ROOT},{run},/shared/hf,/scratch {image} python -m launch "
                   "run-cell "
                   f"{run}/eval/c1 --rerun")
    assert envline == f"HF_HOME=/shared/hf HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONPATH={ROOT}"


def test_debug_cell_on_the_host_reproduces_the_result(tmp_path, exp_dir):
    """A toy eval cell rerun with make debug-cell (in-process, on the host) gives the same
    result.json metrics."""
    from conftest import run_cell_procs, write_cell
    from launch.core.jobs import EvalJob, ModelRef
    from launch.core.spec import Data, Eval, Scorer
    gpt2 = ModelRef(path=str(exp_dir / "models" / "gpt2"))
    job = EvalJob(model=gpt2, base=gpt2,
                  prompts=Data(path=str(exp_dir / "world" / "data" / "prompts.jsonl")),
                  eval=Eval(prompts=32, max_new_tokens=8, temperature=1.0,
                            scorer=Scorer(kind="rule"), compression=("positive",)),
                  template="plain",
                  compression={"positive": Data(path=str(exp_dir / "world" / "data" / "positive.jsonl"))},
                  seed=4, max_length=64, attribute_tokens=True)
    run = tmp_path / "runs" / "exp"
    d = write_cell(run / "eval" / "c1", job, kind="eval", stage="eval", outputs=["result.json"])
    (rc, out), = run_cell_procs(d)
    assert rc == 0, out[-2000:]
    first = json.loads((d / "result.json").read_text())["metrics"]
    r = subprocess.run(["make", "-s", "debug-cell", f"RUN={run}", "CELL=eval/c1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.loads((d / "result.json").read_text())["metrics"] == first
    assert (d / "DONE").exists() and len((d / "attempts.jsonl").read_text().splitlines()) == 2
    # the rerun keeps its done marker's nonce: the cells made from it stay valid; INVALIDATE=1 gives
    # a new one
    nonce = json.loads((d / "DONE").read_text())["nonce"]
    r = subprocess.run(["make", "-s", "debug-cell", f"RUN={run}", "CELL=eval/c1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and json.loads((d / "DONE").read_text())["nonce"] == nonce
    r = subprocess.run(["make", "-s", "debug-cell", f"RUN={run}", "CELL=eval/c1", "INVALIDATE=1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and json.loads((d / "DONE").read_text())["nonce"] != nonce


@pytest.mark.skipif(shutil.which("apptainer") is None, reason="apptainer binary not found")
def test_build_cpu_image_and_run_a_cell(tmp_path):
    r = subprocess.run(["make", "container", "STACK=cpu"], cwd=ROOT, capture_output=True, text=True,
                       timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    image = sorted(ROOT.glob("containers/elastica-cpu-*.sif"))[-1]
    r = subprocess.run(["apptainer", "test", str(image)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "imports ok" in r.stdout
