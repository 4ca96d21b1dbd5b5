"""The suite's command line: plan a study, run it, collect it.

    python -m launch plan CONFIG [--profile P] [--runs DIR] [--json]
    python -m launch run CONFIG [--profile P] [--runs DIR] [--only STAGE]   # local executor, stage by stage
    python -m launch run-cell CELL_DIR                                      # one cell in this process (debug)

Bad input prints one `error:` line naming the field and the fix and exits 2; nothing is written.
"""
from __future__ import annotations

import argparse
import json
import sys

from launch.spec import ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, never a usage dump
        raise ConfigError("command line", message, "see python -m launch --help")


def parse(argv):
    p = _Parser(prog="python -m launch", description="elastica: plan and run alignment-elasticity studies")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    for name in ("plan", "run"):
        s = sub.add_parser(name)
        s.add_argument("config")
        s.add_argument("--profile", default="configs/profiles/local-cpu.yaml")
        s.add_argument("--runs", default=None, help="runs root (default: the profile's runs_root)")
        if name == "plan":
            s.add_argument("--json", action="store_true")
        else:
            s.add_argument("--only", default=None, help="run only this stage")
    s = sub.add_parser("run-cell")
    s.add_argument("cell_dir")
    return p.parse_args(argv)


def load(args):
    from launch.plan import make_plan
    from launch.spec import load_profile, load_spec
    spec = load_spec(args.config)
    profile = load_profile(args.profile)
    return make_plan(spec), profile, args.runs or profile.runs_root


def cmd_plan(args) -> int:
    plan, profile, runs = load(args)
    summary = plan.summary(runs)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"{summary['experiment']} ({summary['setting']}, {summary['task']}) on profile {profile.name}")
    for col in ("stage", "cells", "done", "to run", "checkpoints", "examples", "outputs"):
        t.add_column(col, justify="left" if col in ("stage", "outputs") else "right")
    for s in summary["stages"]:
        t.add_row(s["name"], str(s["cells"]), str(s["done"]), str(s["to_run"]), str(s["checkpoints"] or ""),
                  f"{s['examples']:,}", s["dir"])
    con = Console()
    con.print(t)
    con.print(f"training examples: {summary['total_examples']:,} (every final cell from its base: "
              f"{summary['naive_examples']:,})")
    if summary["trust_remote_code"]:
        con.print(f"trust_remote_code is ON for: {', '.join(summary['trust_remote_code'])}")
    return 0


def cmd_run(args) -> int:
    from launch.local import run_plan
    plan, profile, runs = load(args)
    return run_plan(plan, runs, profile, only=args.only)


def cmd_run_cell(args) -> int:
    from launch.worker import run_cell_dir
    return run_cell_dir(args.cell_dir)


def main(argv=None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        return {"plan": cmd_plan, "run": cmd_run, "run-cell": cmd_run_cell}[args.cmd](args)
    except ConfigError as e:
        print(e.line(), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
