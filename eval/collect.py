"""The collector: every cell's results -> tables (Markdown, CSV, LaTeX), plots (PNG, PDF), the tidy
results and a list of the cells not in them. The modules it calls: eval/records.py (what it reads),
eval/stats.py (intervals), eval/analysis.py (the tables), eval/tables.py (their writers),
eval/plots.py.

It reads `eval/*/result.json` and `cross/*/summary.json` (never logs), each cell's coordinates from
its job.json, and is told which cells to expect (the collect cell's upstream: every result cell of
the plan), so missing, unfinished, failed and corrupt cells are listed by id; they never enter a
table.

    python -m launch collect runs/<experiment>          # or: make collect RUN=runs/<experiment>
Writes runs/<experiment>/report/: index.md, {rebound,resistance,compression,paper}.{md,tex},
tables/<name>.csv, results.{csv,jsonl}, *.png/pdf, cells.md.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import os
import pickle
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table as RTable

from eval import analysis, plots
from eval.records import on_disk, pretrain_sizes, read_cells, seed_of
from eval.stats import Stat, ci_kind, unit_ci
from eval.tables import Table
from launch.core.jobs import CollectJob, Context
from launch.core.layout import atomic_write_text, git_commit
from launch.core.spec import WINDOWS
from launch.core.tracking import wandb_run

# the first of these a study measured leads its report
HEADLINES = ("positive_rate", "score", "kl_to_base")
EXTRA = ("positive_logit", "positive_prob", "kl_to_base", "score")   # also tabled when measured


# ------------------------------------------------------------------------------------- results
RESULT_COLUMNS = ["study", "setting", "task", "model", "size", "arm", "start_volume",
                  "negative_volume", "slice_from",
                  "slice_to", "direction", "metric", "space", "row", "pretrain_seed", "seed",
                  "value", "stderr", "n", "ci_low", "ci_high", "ci_kind", "n_units", "unit"]


def results_rows(records, study: dict) -> list[dict]:
    """The long, tidy form of every number in the tables: one 'seed' row per (cell, metric) with
    value, stderr and n, and one 'mean' row per (coordinates, metric) with the mean over seeds and
    its CI, computed exactly as the Markdown tables compute theirs (mean_ci)."""
    seeds: dict[tuple, list[tuple]] = defaultdict(list)   # RESULT_COLUMNS[:12] -> [:19]
    for r in records:
        c = r["coords"]
        where = (study.get("experiment", ""), study.get("setting", ""), study.get("task", ""),
                 c.get("model", ""), c.get("size", ""), c.get("arm", ""), c.get("positive", ""),
                 c.get("negative", ""), c.get("from", c.get("slice", "")), c.get("to", ""),
                 c.get("direction", ""))
        if r["stage"] == "cross":
            ms = [{"name": k, "value": r["data"][k], "space": "loss"}
                  for k in ("mean_loss", "final_loss") if isinstance(r["data"].get(k), (int, float))]
        else:
            ms = [m for m in r["data"].get("metrics", []) if isinstance(m.get("value"), (int, float))]
        for m in ms:
            seeds[where + (m["name"],)].append(
                where + (m["name"], m.get("space", m.get("unit", "")), "seed",
                         c.get("pretrain_seed", ""), c.get("seed", ""), m["value"],
                         m.get("stderr", ""), m.get("n", "")))
    out = []
    for group in seeds.values():
        group.sort(key=lambda g: (str(g[14]), str(g[15])))
        out += [dict(zip(RESULT_COLUMNS, g + ("",) * 5)) for g in group]
        chains = {seed_of({k: v for k, v in (("pretrain_seed", g[14]), ("seed", g[15]))
                           if v != ""}): g[16] for g in group}
        one = group[0]
        mean, half, n, unit = unit_ci(chains, one[17] if one[17] != "" else None)
        out.append(dict(zip(RESULT_COLUMNS, one[:13] + ("mean", "", "", mean, "", "", mean - half,
                                                        mean + half, ci_kind(n, unit), n, unit))))
    return out


def write_results(rows: list[dict], report: Path) -> list[Path]:
    """report/results.csv (numbers as numbers, one header line, nothing else) and results.jsonl."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RESULT_COLUMNS)
    w.writerows([repr(v) if type(v) is float else v for v in r.values()] for r in rows)
    atomic_write_text(report / "results.csv", buf.getvalue())
    atomic_write_text(report / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return [report / "results.csv", report / "results.jsonl"]


# --------------------------------------------------------------------------------------- entry
def tables_of(records, study: dict, models: dict, claims=()) -> tuple[dict[str, list[Table]], dict,
                                                                      str | None]:
    """The report's tables by group, the rebound curves to plot, and the headline metric; claims:
    the study's (spec.Claim), tested in the group 'claims'."""
    tables: dict[str, list[Table]] = {}
    panels: dict = {}
    # the rebound evals' metrics (Setting I's evals have slice pairs, not negative volumes)
    metric_names = {m["name"] for r in records if r["stage"] == "eval" and "negative" in r["coords"]
                    for m in r["data"].get("metrics", [])}
    headline = next((n for n in HEADLINES if n in metric_names), None)
    if headline:
        tabs, curves = analysis.rebound_tables(records, headline)
        extra = {n: analysis.rebound_tables(records, n) for n in sorted(metric_names)
                 if n != headline and n in EXTRA}
        panels = {headline: curves,
                  **({"positive_logit": extra["positive_logit"][1]} if "positive_logit" in extra
                                       else {})}
        # the fixed windows, and those the study's claims name
        windows = tuple(sorted(set(WINDOWS) | {c.window for c in claims if c.window}))
        tables["rebound"] = tabs + [t for ts, _ in extra.values() for t in ts] + \
            [f(c, n, windows) for n, c in panels.items() for f in (analysis.window_table,
                                                                   analysis.adjusted_table)]
        # the paper's KL table: negatives until KL reverts
        kl = curves if headline == "kl_to_base" else extra.get("kl_to_base", (None, None))[1]
        if kl:
            tables["rebound"] += ([] if headline == "kl_to_base" else
                                  [analysis.window_table(kl, "kl_to_base", windows)]) + \
                [analysis.kl_paper_table(kl)]
    if claims:
        curves_of = functools.cache(lambda n: analysis.rebound_tables(records, n)[1])
        tables["claims"] = analysis.claims_tables(curves_of, claims)
    res = [analysis.resistance_table(records), analysis.resistance_paper_table(
        records, study.get("task", "")), analysis.resistance_kl_table(records)]
    if any(t.rows for t in res):
        tables["resistance"] = res
    if any(n.startswith("bits_per_") for n in metric_names):
        tables["compression"] = [analysis.compression_table(records, pretrain_sizes(records))]
    tables["paper"] = [analysis.paper_table(records, study.get("task", ""), models)]
    return {k: [t for t in ts if t.rows] for k, ts in tables.items()
            if any(t.rows for t in ts)}, panels, headline


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def forked(fn, *args):
    """fn(*args) started in a forked process (on Linux with a second core; inline elsewhere): the
    child shares what is already read and imported, nothing is sent to it. Returns a function that
    waits for the child and returns fn's result, or raises its error."""
    if cores() < 2 or sys.platform != "linux":
        result = fn(*args)
        return lambda: result
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: its answer down the pipe, then out without any parent's cleanup
        os.close(r)
        try:
            answer = pickle.dumps((True, fn(*args)))
        except BaseException as e:  # noqa: BLE001 (the parent raises it)
            try:
                answer = pickle.dumps((False, e))
            except Exception:  # noqa: BLE001
                answer = pickle.dumps((False, RuntimeError(f"{type(e).__name__}: {e}")))
        with os.fdopen(w, "wb") as f:
            f.write(answer)
        os._exit(0)
    os.close(w)

    def wait():
        with os.fdopen(r, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
        if not data:
            raise RuntimeError(f"the collector's forked {fn.__name__} died (wait status {status})")
        ok, value = pickle.loads(data)
        if not ok:
            raise value
        return value
    return wait


READ_APART = 2000   # from this many expected cells on, they are read in parts, one per core


def read_all(exp: Path, expected: list[str]):
    """read_cells over the expected cells, in contiguous parts read side by side (the cells of one
    upstream run lie together in the plan's order, so each upstream is verified in one part)."""
    n = min(cores(), len(expected) // READ_APART)
    if n < 2:
        return read_cells(exp, expected)
    bounds = [len(expected) * i // n for i in range(n + 1)]
    waits = [forked(read_cells, exp, expected[a:b]) for a, b in zip(bounds[1:-1], bounds[2:])]
    parts = [read_cells(exp, expected[:bounds[1]])] + [w() for w in waits]
    return [r for rs, _ in parts for r in rs], [p for _, ps in parts for p in ps]


def plot_all(tables: dict, panels: dict, report: Path, formats=plots.FORMATS) -> list[Path]:
    """The report's plots in the given formats."""
    files = plots.plot_rebound(panels, report / "rebound", formats) if panels else []
    for t in tables.get("resistance", []):
        if t.name == "resistance":
            files += plots.plot_resistance(t, report / "resistance", formats)
    return files


def collect(exp: Path, expected: list[str] | None = None, study: dict | None = None,
            models: dict | None = None, claims=()) -> dict:
    """Write the report of run folder `exp`. expected: the stage/cell keys the plan expects
    (default: the result cells on disk); study: its experiment, setting and task (default: the
    folder's name); models: each model's label -> hub id (the paper table's key); claims: the
    study's (spec.Claim). The plots are drawn on another core while the tables are written."""
    exp = Path(exp)
    report = exp / "report"
    study = {"experiment": exp.name, "setting": "", "task": "", **(study or {})}
    records, problems = read_all(exp, on_disk(exp) if expected is None else list(expected))
    tables, panels, headline = tables_of(records, study, models or {}, claims)
    report.mkdir(parents=True, exist_ok=True)
    drawn = [forked(plot_all, tables, panels, report, (f,)) for f in plots.FORMATS]
    try:
        files = write_tables(tables, report)
        files += write_results(results_rows(records, study), report)
        status = Table("cells", "Cells not in the tables", ["cell", "status", "detail"])
        for p in problems:
            status.add(*p)
        atomic_write_text(report / "cells.md", status.markdown() if problems else
                          "All expected cells are in the tables.\n")
    finally:   # every child is waited for, also when writing failed
        plotted = [f for wait in drawn for f in wait()]
    files = plotted + files
    index = write_index(exp, study, tables, [f for f in files if f.suffix == ".png"],
                        status if problems else None)
    return {"report": str(report), "records": len(records), "problems": problems, "tables": tables,
            "files": [str(f) for f in files], "headline": headline, "index": str(index)}


def write_tables(tables: dict, report: Path) -> list[Path]:
    """Each group's tables as report/<group>.{md,tex}, each as tables/<name>.csv (no stale one)."""
    files, written = [], set()
    for name, ts in tables.items():
        atomic_write_text(report / f"{name}.md", "\n".join(t.markdown() for t in ts))
        atomic_write_text(report / f"{name}.tex", "\n".join(t.latex() for t in ts))
        files += [report / f"{name}.{ext}" for ext in ("md", "tex")]
        for t in ts:
            atomic_write_text(report / "tables" / f"{t.name}.csv", t.csv())
            written.add(f"{t.name}.csv")
    for old in (report / "tables").glob("*.csv"):
        if old.name not in written:
            old.unlink()
    return files


def write_index(exp: Path, study: dict, tables: dict, plots_: list[Path],
                problems: Table | None) -> Path:
    """report/index.md: one page per study that renders on any Git host: what it is, the code it
    ran, its config, every table and plot inline, and the cells that are not in them."""
    report = exp / "report"
    found: set[str] = set()
    # a regex, not a JSON parse: 10,000 cells stay cheap (bench P5)
    for rec in exp.glob("*/*/record.json"):
        try:
            found.update(re.findall(r'"git_commit": "([^"]+)"', rec.read_text()))
        except OSError:
            pass
    commits = sorted(found)
    lines = [f"# {study['experiment']}", "",
             f"Setting: {study['setting'] or 'unknown'}; task: {study['task'] or 'unknown'}. "
             "Collected "
             f"{time.strftime('%Y-%m-%d %H:%M')} by commit {git_commit()}; cells ran at "
             f"{', '.join(commits[:5]) + (' and others' if len(commits) > 5 else '') or 'an unrecorded commit'}.",
             "",
             "Tidy numbers for programs: [results.csv](results.csv) and "
             "[results.jsonl](results.jsonl) (columns in the README); each table as CSV under "
             "[tables/](tables). Tables for reading below, as Markdown and LaTeX (`*.tex`).", ""]
    for p in plots_:
        lines += [f"![{p.stem}]({p.name})", ""]
    for ts in tables.values():
        lines += [t.markdown() for t in ts]
    lines += ["## Cells not in the tables", "",
              problems.markdown() if problems else "None: every expected cell is in "
              "the tables.", ""]
    # the config as the study saved it, shown (never read for what to collect)
    if (exp / "study.yaml").exists():
        lines += ["## Config", "", "<details><summary>study.yaml</summary>", "", "```yaml",
                  (exp / "study.yaml").read_text().rstrip(), "```", "", "</details>", ""]
    atomic_write_text(report / "index.md", "\n".join(lines))
    return report / "index.md"


def print_summary(summary: dict, console=None) -> None:
    """The headline tables on the terminal; at 100 columns or fewer, or piped, each 'mean ± CI'
    table is printed as two (means, then CI half-widths) so that no cell wraps."""
    con = console or Console()
    narrow = con.width <= 100 or not con.is_terminal
    headline = summary["headline"] or ""
    for name, ts in summary["tables"].items():
        if name in ("compression", "paper"):   # wide; they are in the report files
            continue
        for t in [t for t in ts if name != "rebound" or t.title.startswith(headline)]:
            for part in (t.compact() if narrow else [t]):
                con.print(part.title, style="bold", highlight=False)
                rt = RTable(box=box.SIMPLE if narrow else box.HEAVY_HEAD, pad_edge=False)
                for h in part.columns:
                    rt.add_column(str(h), overflow="fold")
                for r in part.texts():
                    rt.add_row(*r)
                con.print(rt)
    for key, status, detail in summary["problems"]:
        con.print(f"[yellow]{status}[/]: {key} ({detail})")
    con.print(f"report: {summary.get('index') or summary['report']} ({summary['records']} cells in "
              "tables, "
              # a path is copied whole, never wrapped
              f"{len(summary['problems'])} not)", soft_wrap=True)


def summary_json(summary: dict) -> dict:
    """The summary, its tables as rows keyed by column, numbers as numbers (Stat: mean, half, n)."""
    num = lambda v: {"mean": v.mean, "half": v.half, "n": v.n} if isinstance(v, Stat) else v
    return {**{k: summary[k] for k in ("report", "index", "records", "problems", "headline")},
            "tables": {name: [{"name": t.name, "title": t.title, "columns": t.columns,
                               "rows": [{c: num(v) for c, v in r.items()} for r in t.rows]}
                              for t in ts]
                       for name, ts in summary["tables"].items()}}


def log_to_wandb(summary: dict, ctx: Context, job: CollectJob) -> None:
    run = wandb_run(ctx.out_dir, ctx.exp_dir, {"setting": job.setting, "task": job.task}, ctx.stage,
                    ctx.coords)
    if run is None:
        return
    import wandb
    rows = [json.loads(l)
            for l in (Path(summary["report"]) / "results.jsonl").read_text().splitlines()]
    columns: list[str | int] = list(RESULT_COLUMNS)
    run.log({"results": wandb.Table(columns=columns,
                                    data=[[None if r[c] == "" else r[c] for c in RESULT_COLUMNS]
                                                           for r in rows])})
    for ts in summary["tables"].values():
        for t in ts:
            run.log({f"tables/{t.name}": wandb.Table(columns=[str(h) for h in t.columns],
                                                     data=t.texts())})
    run.summary.update({"cells_in_tables": summary["records"],
                        "cells_not": len(summary["problems"])})
    run.finish()


def cell_main(job: CollectJob, ctx: Context) -> list[str]:
    """The collect cell: its upstream is every result cell of the plan, its job names the study."""
    summary = collect(ctx.exp_dir, list(ctx.upstream),
                      {"experiment": job.experiment, "setting": job.setting, "task": job.task},
                      ctx.coords.get("models", {}), job.claims)
    # every eval metric with its coordinates, and the tables, in the study's collect run (a mirror)
    try:
        # the report on disk is the result, so W&B never fails the cell
        log_to_wandb(summary, ctx, job)
    except Exception as e:  # noqa: BLE001
        print(f"warning: W&B logging of the collect cell failed: {type(e).__name__}: "
              f"{str(e).splitlines()[0][:200]}")
    atomic_write_text(ctx.out_dir / "summary.json", json.dumps(
        {k: summary[k] for k in ("report", "index", "records", "problems", "files", "headline")},
                                                               indent=2))
    return ["summary.json"]
