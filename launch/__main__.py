"""The suite's command line: plan a study, run it, collect it.

    python -m launch plan CONFIG [--profile P] [--runs DIR] [--json]
    python -m launch run CONFIG [--profile P] [--runs DIR] [--only STAGE]   # local executor, stage by stage
    python -m launch run-cell CELL_DIR                                      # one cell in this process (debug)
    python -m launch submit CONFIG --profile P [--executor slurm|local|debug] [--dry-run] [--wait] [--only STAGE]
    python -m launch status RUN_DIR|CONFIG [--json]     # cells by stage: done / running / pending / failed ...
    python -m launch cancel RUN_DIR|CONFIG              # scancel every job of the study's manifest
    python -m launch prefetch CONFIG                    # login node: fill the HF cache, check volumes fit
    python -m launch rates RUN_DIR                      # the profile's cost rates, measured on a finished study
    python -m launch collect RUN_DIR [--json]           # tables (Markdown, CSV, LaTeX), plots, tidy results
    python -m launch COMMAND --help                     # what each command and argument does

Bad input prints one `error:` line naming the field and the fix and exits 2; nothing is written.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from launch.core import layout
from launch.core.env import cell_env
from launch.core.layout import atomic_write_json, atomic_write_text
from launch.core.profile import load_profile
from launch.core.schema import ConfigError
from launch.core.spec import STAGES, load_spec
from launch.costs import check_memory, rates
from launch.local import run_inprocess, run_plan
from launch.plan import make_plan
from launch.prefetch import cache_gaps, prefetch
from launch.worker import exit_now, run_cell_dir, run_cells, write_job


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, never a usage dump
        raise ConfigError("command line", message, "see python -m launch --help")


HELP = {
    "plan": "show the stages and cells a study will run, what is done, and its cost; writes nothing",
    "run": "run a study on this machine, stage by stage (the local executor)",
    "submit": "submit a study to Slurm as array jobs chained by dependencies (or run it with "
              "another executor)",
    "status": "cells by stage and state (done, running, pending, failed, ...) with the logs of "
              "failed cells",
    "cancel": "scancel every job the study ever submitted",
    "prefetch": "login node: fill the profile's HF cache with every model and dataset, check that "
                "volumes fit",
    "run-cell": "run one cell in this process (what every executor runs; a done cell returns at "
                "once)",
    "run-cells": "run several cells of one kind in this process, in order, each with its own log "
                 "and outcome",
    "debug-cell": "rerun one cell in this process, or in the image, as its job would",
    "shell": "a shell in the image with a job's binds and variables",
    "rates": "the profile's cost rates (GPU-hour estimate of plan) measured on a study's finished "
             "cells",
    "collect": "tables (Markdown, CSV, LaTeX), plots and the tidy results of a study's finished "
               "cells",
}


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m launch", description="elastica: plan and run alignment-elasticity "
                                                     "studies. "
                "Bad input prints one error line and exits 2.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser, metavar="COMMAND")
    for name in ("plan", "run", "submit", "status", "cancel"):
        s = sub.add_parser(name, help=HELP[name], description=HELP[name])
        s.add_argument("config", metavar="CONFIG|RUN_DIR",
                       help="a study YAML (configs/...), or a run folder runs/<experiment> made by "
                            "run or submit")
        s.add_argument("--profile", default="configs/profiles/local-cpu.yaml",
                       help="where it runs: a profile YAML (default: %(default)s); ignored with a "
                            "run folder")
        s.add_argument("--runs", default=None, help="runs root (default: the profile's runs_root)")
        if name in ("plan", "status"):
            s.add_argument("--json", action="store_true", help="print JSON instead of the table")
        if name in ("run", "submit"):
            s.add_argument("--only", default=None, metavar="STAGE", help="run only this stage")
            s.add_argument("--jobs", default="1", metavar="N",
                           help="local executor: run up to N cells at once (each with cpus/N "
                           "threads, a stage of one cell every core, unless OMP_NUM_THREADS is "
                           "set); at equal threads per cell the results are the same bit for bit")
        if name == "submit":
            s.add_argument("--executor", choices=("slurm", "local", "debug"), default=None,
                           help="default: the profile's executor (debug: every cell in this "
                                "process)")
            s.add_argument("--dry-run", action="store_true",
                           help="print the arrays and job scripts, submit nothing")
            s.add_argument("--wait", action="store_true", help="block until the run ends; non-zero "
                                                               "if a cell failed")
            s.add_argument("--allow-dirty", action="store_true",
                           help="submit although the checkout has uncommitted changes (jobs run "
                                "the working tree)")
    s = sub.add_parser("prefetch", help=HELP["prefetch"], description=HELP["prefetch"])
    s.add_argument("config", help="a study YAML")
    s.add_argument("--profile", default="", help="its hf_home is the cache to fill (default: "
                                                 "$HF_HOME)")
    s = sub.add_parser("collect", help=HELP["collect"], description=HELP["collect"])
    s.add_argument("run_dir", metavar="RUN_DIR", help="runs/<experiment>, e.g. runs/toy-setting2")
    s.add_argument("--json", action="store_true", help="print the tables and the cells not in them "
                                                       "as JSON")
    s = sub.add_parser("rates", help=HELP["rates"], description=HELP["rates"])
    s.add_argument("run_dir", help="runs/<experiment> with finished training and eval cells")
    s = sub.add_parser("run-cell", help=HELP["run-cell"], description=HELP["run-cell"])
    s.add_argument("cell_dir", help="runs/<experiment>/<stage>/<cell id>")
    s.add_argument("--rerun", action="store_true", help="run a done cell again; its dependents "
                                                        "stay valid")
    s.add_argument("--invalidate", action="store_true", help="with --rerun: the cells made from it "
                                                             "run again too")
    s = sub.add_parser("run-cells", help=HELP["run-cells"], description=HELP["run-cells"])
    s.add_argument("cell_dirs", nargs="+", help="cell folders of one kind, run in this order")
    s = sub.add_parser("debug-cell", help=HELP["debug-cell"], description=HELP["debug-cell"])
    s.add_argument("run_dir", help="runs/<experiment>")
    s.add_argument("cell", help="<stage>/<cell id> (see python -m launch status RUN_DIR)")
    s.add_argument("--image", default="", help="run it in this Apptainer image, with the job's "
                                               "binds and variables")
    s.add_argument("--invalidate", action="store_true", help="the cells made from it run again at "
                                                             "the next submit")
    s = sub.add_parser("shell", help=HELP["shell"], description=HELP["shell"])
    s.add_argument("--image", required=True, help="the Apptainer image (.sif or sandbox folder)")
    s.add_argument("--profile", default="", help="its binds, hf_home and env")
    s.add_argument("--run", default="", help="a run folder to bind too")
    return p


def parse(argv):
    return make_parser().parse_args(argv)


def load(args):
    """The plan, profile and runs root of CONFIG or a run folder (its study.yaml, profile.yaml)."""
    run = Path(args.config)
    if getattr(args, "runs", None) is not None and not (args.runs.strip()
                                                        and args.runs.isprintable()):
        raise ConfigError("--runs", f"{args.runs!r} is not a folder name",
                          "give a runs root, or leave --runs out for the profile's runs_root")
    if run.is_dir():
        meta = read_study_json(run)
        spec = load_spec(run / "study.yaml", base_dir=meta["cwd"])
        if spec.experiment != run.name:
            raise ConfigError("RUN_DIR", f"{run} holds the study {spec.experiment!r} (renamed or "
                                         "copied?): its cells "
                              f"would be looked for in {run.parent / spec.experiment}",
                              f"rename the folder back to {spec.experiment}")
        profile = load_profile(run / "profile.yaml")
        plan, runs = make_plan(spec), str(run.parent)
    else:
        spec = load_spec(args.config)
        profile = load_profile(args.profile)
        plan, runs = make_plan(spec), args.runs or profile.runs_root
    check_memory(plan, profile)
    if profile.image and not profile.in_image(runs):
        raise ConfigError("--runs", f"{runs} is not under any of the profile's binds "
                                    f"{list(profile.binds)}: jobs in "
                          "the image would not find it", "give a runs root under a bind, or add "
                                                         "its folder to binds")
    return plan, profile, runs


def read_study_json(run) -> dict:
    """A run folder's study.json (written by run and submit), checked: one line if absent or bad."""
    try:
        meta = json.loads((run / "study.json").read_text())
    except FileNotFoundError:
        raise ConfigError("RUN_DIR", f"{run} has no study.json",
                          "give a config file, or a folder that launch "
                          "run/submit created (runs/<experiment>)") from None
    except (OSError, ValueError):
        raise ConfigError("RUN_DIR", f"{run / 'study.json'} is not valid JSON (truncated?)",
                          "give the study's "
                          "config file instead (launch status CONFIG --runs ROOT)") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("cwd"), str):
        raise ConfigError("RUN_DIR", f"{run / 'study.json'} lacks its cwd",
                          "give the study's config file instead")
    return meta


def check_writable(plan, runs) -> None:
    """Refuse an unwritable or full runs root before anything starts (one line, exit 2)."""
    exp = plan.exp_dir(runs)
    probe = Path(runs)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is not a folder")
        if not os.access(probe, os.W_OK):
            raise PermissionError(f"no write permission on {probe}")
        if exp.exists():
            with tempfile.NamedTemporaryFile(dir=exp, prefix=".probe"):
                pass
        if shutil.disk_usage(probe).free < 64 * 2**20:
            raise OSError(f"only {shutil.disk_usage(probe).free // 2**20} MiB free on {probe}")
    except OSError as e:
        raise ConfigError("runs_root", f"{runs} is not usable: {e}",
                          "choose a writable folder with free space "
                          "(--runs or runs_root in the profile)") from None


def remember(args, plan, runs) -> None:
    """Save study and profile in the run folder: status, cancel and collect need only RUN_DIR."""
    if Path(args.config).is_dir():
        return
    exp = plan.exp_dir(runs)
    atomic_write_text(exp / "study.yaml", Path(args.config).read_text())
    atomic_write_text(exp / "profile.yaml", Path(args.profile).read_text())
    atomic_write_json(exp / "study.json",
                      {"config": str(Path(args.config).resolve()), "cwd": os.getcwd(),
                                           "profile": str(Path(args.profile).resolve())})


def cmd_plan(args) -> int:
    plan, profile, runs = load(args)
    summary = plan.summary(runs, profile)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    t = Table(box=box.SIMPLE, pad_edge=False)
    slurm = profile.executor == "slurm"
    for col in ("stage", "cells", "done", "to run", "ckpts", "steps", "examples", "GPU-h") + \
            (("a cell asks",) if slurm else ()):
        t.add_column(col, justify="left" if col in ("stage", "a cell asks") else "right",
                     no_wrap=True)
    for s in summary["stages"]:
        gh, a = s["gpu_hours_to_run"], s["asks"]
        asks = (f"{a['nodes']}x{a['gpus_per_node']}GPU" if a["gpus_per_node"] else "CPU") + \
            f" {a['time_min']}m" + (f" {a['mem_gb']}G" if a["mem_gb"] else "")
        st = s["steps"]
        steps = "" if not st else str(st[0]) if len(st) == 1 else f"{st[0]}-{st[-1]}"
        t.add_row(s["name"], str(s["cells"]), str(s["done"]), str(s["to_run"]),
                  str(s["checkpoints"] or ""), steps,
                  f"{s['examples']:,}", "" if gh is None else f"{gh:,.1f}",
                  *((asks,) if slurm else ()))
    con = Console()
    con.print(f"{summary['experiment']} ({summary['setting']}, {summary['task']}) on profile "
              f"{profile.name}: cells in {summary['runs_dir']}/<stage>/", soft_wrap=True)
    con.print(t)
    con.print(f"training examples: {summary['total_examples']:,} nested; "
              f"{summary['reuse_examples']:,} with each positive checkpoint trained once and "
              f"reused (the seed's code); {summary['naive_examples']:,} with every final cell "
              "trained from its base")
    hours = [s["gpu_hours_to_run"] for s in summary["stages"] if s["gpu_hours_to_run"] is not None]
    if hours:
        con.print(f"estimated GPU-hours to run: {sum(hours):,.1f}, from profile {profile.name}'s "
                  "rates: training cells = tokens (examples x max_length, an upper bound) / "
                  f"{profile.train_tokens_per_gpu_hour:,.0f} per GPU-hour + GPUs x "
                  f"({profile.train_fixed_minutes:g} min load and init + "
                  f"{profile.train_minutes_per_checkpoint:g} min per checkpoint); eval cells x "
                  f"{profile.eval_minutes_per_cell:g} min. Stages without a rate are left out.",
                  soft_wrap=True)
    else:
        con.print("no GPU-hour estimate: set train_tokens_per_gpu_hour, train_fixed_minutes, "
                  "train_minutes_per_checkpoint and eval_minutes_per_cell in the profile (measure "
                  "them on your "
                  "cluster: python -m launch rates runs/<experiment>)", soft_wrap=True)
    if summary["fork_memory"]:
        most: dict[str, float] = {}
        for row in summary["fork_memory"]:
            most[row["model"]] = max(most.get(row["model"], 0), row["gb_per_node"])
        con.print("host memory per node that milestone forks hold (launch.costs): " + ", ".join(
            f"{m} {gb:,.0f} GB" for m, gb in most.items()) + "; train.mem_gb: "
                                                             f"{profile.train.mem_gb or 'default'}"
            + "".join(f", stages.{k}.mem_gb: {v['mem_gb']}" for k, v in profile.stages.items()
                      if "mem_gb" in v),
            soft_wrap=True)
    for s in summary["stages"]:
        if s["few_steps"]:
            r = plan.spec.recipe_for(s["name"])
            con.print(f"warning: {s['name']} checkpoints after {', '.join(s['few_steps'])} "
                      f"optimizer step(s) (global batch {r.global_batch}, tail: {r.tail}): such a "
                      "cell barely moves from its start",
                      soft_wrap=True)
    light = [s["name"] for s in summary["stages"] if STAGES[s["name"]] == "light"]
    if slurm and light and profile.partition and not profile.cpu_partition:
        con.print(f"{' and '.join(light)} ask no GPU but run on partition {profile.partition}: set "
                  "cpu_partition to "
                  "your site's CPU partition (sinfo -s lists them)", soft_wrap=True)
    if reused := sum(s["reused"] for s in summary["stages"]):
        con.print(f"{reused} cells are done in other studies under {runs}: run and submit take "
                  "them, not run them")
    if summary["trust_remote_code"]:
        con.print(f"trust_remote_code is ON for: {', '.join(summary['trust_remote_code'])}")
    return 0


def check_only(args, plan, runs) -> None:
    """--only STAGE: a stage of this plan, whose cells' upstream cells are done (or can be taken
    from another study): otherwise its first cell would start, load, and fail on a missing input."""
    if not args.only:
        return
    if args.only not in plan.stages:
        raise ConfigError("--only", f"no stage {args.only!r} in this plan",
                          f"use one of {', '.join(plan.stages)}")
    states, reused = plan.states(runs), plan.reusable(runs)
    missing = [u for c in plan.stages[args.only] if states[c.key] != "done" for u in c.upstream
               if states[u] != "done" and u not in reused]
    if missing:
        raise ConfigError("--only", f"stage {args.only} needs {len(set(missing))} upstream cells "
                                    "that are not done "
                          f"(first: {missing[0]})", f"run stage {missing[0].split('/')[0]} first, "
                                                    "or run without --only")


def check_jobs(args) -> int:
    # not isdigit: '²' is a digit
    if not (re.fullmatch(r"[0-9]{1,4}", args.jobs) and int(args.jobs) >= 1):
        raise ConfigError("--jobs", f"{args.jobs!r} is not a number of cells to run at once",
                          "give a whole number from 1 (e.g. --jobs 2 on 2 cores)")
    return int(args.jobs)


def cmd_run(args) -> int:
    jobs = check_jobs(args)
    plan, profile, runs = load(args)
    check_only(args, plan, runs)
    check_writable(plan, runs)
    remember(args, plan, runs)
    return run_plan(plan, runs, profile, only=args.only, jobs=jobs)


def refuse(err: ConfigError, dry_run: bool, refused: list) -> None:
    """A submission stops here; a dry run says that it would, goes on showing the job scripts, and
    then exits 2 with the first refusal (a dry run is how users check a submission: it makes every
    check the submit makes)."""
    if not dry_run:
        raise err
    print(f"note: a real submit would stop here: {err.line()}")
    refused.append(err)


def cmd_submit(args) -> int:
    # here, not at the top: submitit is absent where only cells run (the GPU bundle, an image)
    from launch import slurm
    jobs = check_jobs(args)
    plan, profile, runs = load(args)
    check_only(args, plan, runs)
    executor, refused = args.executor or profile.executor, list[ConfigError]()
    # jobs run offline: every file must be in the cache already
    if executor == "slurm" and profile.hf_home:
        if gaps := cache_gaps(plan.spec, profile.hf_home):
            refuse(ConfigError("hf_home", f"{profile.hf_home} lacks {', '.join(gaps)}",
                               f"on the login node: make prefetch CONFIG={args.config} "
                               f"PROFILE={args.profile}",
                               file=args.profile), args.dry_run, refused)
    if executor == "slurm" and profile.image and not Path(profile.image).is_file():
        refuse(ConfigError("image", f"{profile.image} does not exist",
                           "build it (make container) or fix the path",
                           file=args.profile), args.dry_run, refused)
    if executor == "slurm":
        try:
            slurm.require_slurm(profile, need_sbatch=not args.dry_run)
        except ConfigError as e:
            refuse(e, args.dry_run, refused)
    # a dry run never runs or writes anything, whatever the executor
    if args.dry_run and executor != "slurm":
        reused = plan.reusable(runs)
        todo = plan.todo(runs) - set(reused)
        if reused:
            print(f"{len(reused)} cells are done in other studies under {runs}: they would be "
                  "taken, not run")
        for stage, cells in plan.stages.items():
            left = [c for c in cells if c.key in todo]
            print(f"== stage {stage}: {len(left)} of {len(cells)} cells to run ({executor} "
                  "executor)")
            for c in left:
                print(f"   {c.key}")
        print(f"dry run: nothing run, nothing written (runs root {runs})")
        return 0
    if not args.dry_run:
        check_writable(plan, runs)
        # on Slurm, once every array passed sbatch --test-only (slurm.submit)
        if executor != "slurm":
            remember(args, plan, runs)
    if executor == "local":
        return run_plan(plan, runs, profile, only=args.only, jobs=jobs)
    if executor == "debug":
        return run_inprocess(plan, runs, profile, only=args.only)
    try:
        slurm.submit(plan, runs, profile, dry_run=args.dry_run, only=args.only,
                     allow_dirty=args.allow_dirty, before_first=lambda: remember(args, plan, runs))
    # the cluster refused the profile's resources: the profile is the file to fix
    except ConfigError as e:
        e.file = e.file or (args.profile if e.field.endswith(" array") else "")
        if not args.dry_run:
            raise
        refused.append(e)
    if refused:
        print(f"dry run: a real submit would be refused ({len(refused)} problem(s) above); nothing "
              "was submitted")
        raise refused[0]
    if args.wait and not args.dry_run:
        return slurm.wait(plan, runs)
    return 0


STATE_ORDER = ("done", "running", "pending", "failed", "timed out", "cancelled", "corrupt", "stale",
               "not submitted", "todo", "unknown")


def cmd_status(args) -> int:
    """Cells by stage and state: a column per state that occurs (readable at 80 columns, piped)."""
    from launch import slurm   # submitit, as in cmd_submit
    plan, profile, runs = load(args)
    rows = slurm.cell_states(plan, runs)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    present = [s for s in STATE_ORDER if any(r["state"] == s for r in rows)]
    t = Table(box=box.SIMPLE, pad_edge=False)
    for col in ("stage", "cells", *present, "MiB"):
        t.add_column(col, justify="left" if col == "stage" else "right", no_wrap=True)
    for stage in plan.stages:
        sr = [r for r in rows if r["stage"] == stage]
        folder = plan.exp_dir(runs) / stage
        size = sum(f.stat().st_size
                   for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0
        t.add_row(stage, str(len(sr)),
                  *[str(sum(r["state"] == s for r in sr) or "") for s in present],
                  f"{size / 2**20:,.1f}")
    con = Console()
    con.print(f"{plan.spec.experiment}: {len(rows)} cells in {plan.exp_dir(runs)}", soft_wrap=True)
    con.print(t)
    for r in rows:
        if r["state"] in ("failed", "timed out",
                          "corrupt") or r["state"] == "cancelled" and r["log"]:
            con.print(f"[red]{r['state']}[/] {r['stage']}/{r['cell']} (job {r['job'] or '-'}) log: "
                      f"{r['log'] or '-'}",
                      soft_wrap=True, markup=True)
            if tail := slurm.error_tail(r):
                con.print(tail, soft_wrap=True, markup=False, highlight=False)
    if any(r["state"] == "unknown" for r in rows):
        con.print(f"unknown: {sum(r['state'] == 'unknown' for r in rows)} {slurm.NO_RECORD}")
    if any(r["state"] != "done" for r in rows):
        con.print("resubmit what is missing: python -m launch submit "
                  f"{plan.exp_dir(runs) / 'study.yaml'} "
                  f"--profile {plan.exp_dir(runs) / 'profile.yaml'} --runs {runs}", soft_wrap=True)
    return 0


def cmd_cancel(args) -> int:
    from launch import slurm   # submitit, as in cmd_submit
    plan, profile, runs = load(args)
    ids = slurm.cancel(plan.exp_dir(runs))
    print(f"cancelled {len(ids)} jobs: {' '.join(ids)}" if ids else "no jobs in the manifest")
    return 0


def cmd_prefetch(args) -> int:
    spec, profile = load_spec(args.config), load_profile(args.profile) if args.profile else None
    try:
        prefetch(spec, profile)
    except ConfigError as e:   # a source of the study failed: name the study's file
        e.file = e.file or args.config
        raise
    return 0


def cmd_run_cell(args) -> int:
    d = Path(args.cell_dir)
    exp = d.parent.parent
    if not (d / layout.JOB).exists() and (exp / "study.json").exists():
        # a submitted cell whose task has not started (on Slurm the task writes job.json): plan the
        # study saved in the run folder and take the cell from it
        plan, profile, _ = load(argparse.Namespace(config=str(exp)))
        cell = next((c for c in plan.cells if c.stage == d.parent.name and c.id == d.name), None)
        if cell is None:
            raise ConfigError("CELL_DIR", f"{d} is not a cell of the study saved in {exp}",
                              f"pick one from: python -m launch status {exp}")
        write_job(d, plan.meta(cell, profile))
    return run_cell_dir(d, rerun=args.rerun, invalidate=args.invalidate)


def image_call(image: str, profile, run, argv: list[str], env: dict) -> int:
    """Run argv in the image as a job would: the checkout, the run folder, the HF cache and the
    profile's binds bound, the job's variables set (apptainer passes the environment in)."""
    if not Path(image).exists():
        raise ConfigError("--image", f"{image} does not exist", "build it (make container or make "
                                                                "sandbox), or give "
                          "the path of the .sif / sandbox folder")
    if shutil.which("apptainer") is None:
        raise ConfigError("--image", "apptainer not found on this machine",
                          "run on a node that has apptainer")
    binds = [str(layout.CODE_ROOT)] + ([str(run)] if run else []) + \
        ([profile.hf_home] if profile and profile.hf_home else []) + list(profile.binds if profile
                                                                          else ())
    cmd = ["apptainer", argv[0], "--nv", "--bind", ",".join(dict.fromkeys(binds)), image, *argv[1:]]
    print(" ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd, env={**env, "ELASTICA_IMAGE": image})


def cmd_debug_cell(args) -> int:
    """Rerun one cell as its job runs it: the run's profile decides the environment (offline HF
    cache, W&B mode, profile env); with --image, in the image with the job's binds. Its dependents
    stay valid unless --invalidate."""
    run = Path(args.run_dir).resolve()
    cell = run / args.cell
    if not (run / "study.json").exists() and not (cell / layout.JOB).exists():
        raise ConfigError("RUN", f"{args.run_dir} is not a run folder (no study.json)",
                          "run or submit the study first")
    if cell.parent.parent != run:
        raise ConfigError("CELL", f"{args.cell} is not <stage>/<cell id>",
                          f"pick one: python -m launch status {run}")
    profile = load_profile(run / "profile.yaml") if (run / "profile.yaml").exists() else None
    env = cell_env(profile)
    argv = ["run-cell", str(cell), "--rerun"] + (["--invalidate"] if args.invalidate else [])
    if args.image:
        return image_call(args.image, profile, run, ["exec", "python", "-m", "launch", *argv], env)
    os.environ.update(env)
    return cmd_run_cell(parse(argv))


def cmd_shell(args) -> int:
    """A shell in the image with a job's binds and variables (the profile's, the run folder's)."""
    profile = load_profile(args.profile) if args.profile else None
    return image_call(args.image, profile, Path(args.run).resolve() if args.run else None,
                      ["shell"], cell_env(profile))


def cmd_rates(args) -> int:
    if not Path(args.run_dir).is_dir():
        raise ConfigError("RUN_DIR", f"{args.run_dir} is not a folder", "give runs/<experiment>")
    found = rates(Path(args.run_dir))
    if not found["training_cells"] and not found["eval_cells"]:
        raise ConfigError("RUN_DIR", f"{args.run_dir} has no finished cell with timings",
                          "give a run folder whose training or eval cells are done")
    print(f"# measured on {found.pop('training_cells')} training and {found.pop('eval_cells')} "
          f"eval cells of {args.run_dir}: paste into the profile")
    for k, v in found.items():
        print(f"{k}: {v}")
    return 0


def cmd_collect(args) -> int:
    """The collect cell's work for a run folder: the plan saved in it says which cells to expect and
    what the study is; a folder of cells made without the CLI (no study.json): what is on disk."""
    from eval.collect import collect, print_summary, summary_json
    run = Path(args.run_dir)
    # a study's folder holds <stage>/<cell id>/job.json: no other folder (runs root, home) gets one
    if not args.run_dir.strip() or not run.is_dir() or next(run.glob(f"*/*/{layout.JOB}"),
                                                            None) is None:
        raise ConfigError("RUN_DIR", f"{args.run_dir or '(none)'} is not a run folder, nothing was "
                                     "written",
                          "give runs/<experiment>, e.g. make collect RUN=runs/toy-setting2")
    if (run / "study.json").exists():
        plan, _, _ = load(argparse.Namespace(config=str(run)))
        cell = plan.stages["collect"][0]
        summary = collect(run, list(cell.upstream),
                          {k: getattr(cell.job, k) for k in ("experiment", "setting", "task")},
                          cell.coords.get("models", {}), cell.job.claims)
    else:
        summary = collect(run)
    if args.json:
        print(json.dumps(summary_json(summary), indent=2, default=str))
    else:
        print_summary(summary)
    return 0


def cmd_run_cells(args) -> int:
    return run_cells(args.cell_dirs)


def quiet_broken_pipe() -> int:
    """`... | head` closed our stdout: no traceback, nothing more to say (SIGPIPE's code)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def main(argv=None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        return {"plan": cmd_plan, "run": cmd_run, "run-cell": cmd_run_cell,
                "run-cells": cmd_run_cells,
                "debug-cell": cmd_debug_cell, "shell": cmd_shell, "submit": cmd_submit,
                "status": cmd_status,
                "cancel": cmd_cancel, "prefetch": cmd_prefetch, "rates": cmd_rates,
                "collect": cmd_collect}[args.cmd](args)
    except ConfigError as e:
        print(e.line(), file=sys.stderr)
        return 2
    except BrokenPipeError:
        return quiet_broken_pipe()


if __name__ == "__main__":
    code = main()
    if sys.argv[1:2] in (["run-cell"], ["run-cells"]):
        # a cell process ends here: outputs written, process group destroyed (close_distributed).
        # The interpreter's teardown can still abort in gloo's or DeepSpeed's C++ threads (SIGABRT,
        # "terminate called without an active exception") and turn a done cell's exit into -6, so
        # it is skipped
        exit_now(code)
    sys.exit(code)
