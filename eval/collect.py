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
import re
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


# ---------------------------------------------------------------------------------------------
# results
RESULT_COLUMNS = ["study", "setting", "task", "model", "size", "arm", "start_volume",
                  "negative_volume", "slice_from",
                  "slice_to", "direction", "metric", "space", "row", "pretrain_seed", "seed",
                  "value", "stderr", "n", "ci_low", "ci_high", "ci_kind", "n_units", "unit"]


def results_rows(records, study: dict) -> list[dict]:
    """The long, tidy form of every number in the tables: one 'seed' row per (cell, metric) with
    value, stderr and n, and one 'mean' row per (coordinates, metric) with the mean over seeds and
    its CI, computed exactly as the Markdown tables compute theirs (mean_ci)."""
    seeds: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        c = r["coords"]
        base = {"study": study.get("experiment", ""), "setting": study.get("setting", ""),
                "task": study.get("task", ""), "model": c.get("model", ""),
                "size": c.get("size", ""),
                "arm": c.get("arm", ""), "start_volume": c.get("positive", ""),
                "negative_volume": c.get("negative", ""),
                "slice_from": c.get("from", c.get("slice", "")), "slice_to": c.get("to", ""),
                "direction": c.get("direction", "")}
        if r["stage"] == "cross":
            ms = [{"name": k, "value": r["data"][k], "space": "loss"} for k in ("mean_loss",
                                                                                "final_loss")
                  if isinstance(r["data"].get(k), (int, float))]
        else:
            ms = [m for m in r["data"].get("metrics", []) if isinstance(m.get("value"),
                                                                        (int, float))]
        for m in ms:
            row = {**base, "metric": m["name"], "space": m.get("space", m.get("unit", "")),
                   "row": "seed",
                   "pretrain_seed": c.get("pretrain_seed", ""), "seed": c.get("seed", ""),
                   "value": m["value"], "stderr": m.get("stderr", ""), "n": m.get("n", "")}
            seeds[tuple(base.values()) + (m["name"],)].append(row)
    out = []
    for group in seeds.values():
        group.sort(key=lambda r: (str(r["pretrain_seed"]), str(r["seed"])))
        out += group
        one = group[0]
        chains = {seed_of({k: r[k] for k in ("pretrain_seed", "seed") if r[k] != ""}): r["value"]
                  for r in group}
        mean, half, n, unit = unit_ci(chains, one["stderr"] if one["stderr"] != "" else None)
        out.append({**one, "row": "mean", "pretrain_seed": "", "seed": "", "value": mean,
                    "stderr": "", "n": "", "ci_low": mean - half, "ci_high": mean + half,
                    "ci_kind": ci_kind(n, unit), "n_units": n, "unit": unit})
    return [{k: r.get(k, "") for k in RESULT_COLUMNS} for r in out]


def write_results(rows: list[dict], report: Path) -> list[Path]:
    """report/results.csv (numbers as numbers, one header line, nothing else) and results.jsonl."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RESULT_COLUMNS)
    w.writerows([repr(v) if type(v) is float else v for v in r.values()] for r in rows)
    atomic_write_text(report / "results.csv", buf.getvalue())
    atomic_write_text(report / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return [report / "results.csv", report / "results.jsonl"]


# ---------------------------------------------------------------------------------------------
# entry
def tables_of(records, study: dict, models: dict, claims=()) -> tuple[dict[str, list[Table]], dict,
                                                                      str | None]:
    """The report's tables by group, the rebound curves to plot, and the headline metric; claims:
    the study's (spec.Claim), tested in the group 'claims'."""
    tables: dict[str, list[Table]] = {}
    panels: dict = {}
    metric_names = {m["name"] for r in records if r["stage"] == "eval"
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
        if "kl_to_base" in extra:   # the paper's KL table: negatives until KL reverts
            tables["rebound"].append(analysis.window_table(extra["kl_to_base"][1], "kl_to_base",
                                                           windows))
    if claims:
        curves_of = functools.cache(lambda n: analysis.rebound_tables(records, n)[1])
        tables["claims"] = analysis.claims_tables(curves_of, claims)
    res = analysis.resistance_table(records)
    if res.rows:
        tables["resistance"] = [res]
    if any(n.startswith("bits_per_") for n in metric_names):
        tables["compression"] = [analysis.compression_table(records, pretrain_sizes(records))]
    tables["paper"] = [analysis.paper_table(records, study.get("task", ""), models)]
    return {k: [t for t in ts if t.rows] for k, ts in tables.items()
            if any(t.rows for t in ts)}, panels, headline


def collect(exp: Path, expected: list[str] | None = None, study: dict | None = None,
            models: dict | None = None, claims=()) -> dict:
    """Write the report of run folder `exp`. expected: the stage/cell keys the plan expects
    (default: the result cells on disk); study: its experiment, setting and task (default: the
    folder's name); models: each model's label -> hub id (the paper table's key); claims: the
    study's (spec.Claim)."""
    exp = Path(exp)
    report = exp / "report"
    study = {"experiment": exp.name, "setting": "", "task": "", **(study or {})}
    records, problems = read_cells(exp, on_disk(exp) if expected is None else list(expected))
    tables, panels, headline = tables_of(records, study, models or {}, claims)
    files: list[Path] = []
    if panels:
        files += plots.plot_rebound(panels, report / "rebound")
    if "resistance" in tables:
        files += plots.plot_resistance(tables["resistance"][0], report / "resistance")
    written = set()
    for name, ts in tables.items():   # and each table as CSV: report/tables/<table name>.csv
        atomic_write_text(report / f"{name}.md", "\n".join(t.markdown() for t in ts))
        atomic_write_text(report / f"{name}.tex", "\n".join(t.latex() for t in ts))
        files += [report / f"{name}.{ext}" for ext in ("md", "tex")]
        for t in ts:
            atomic_write_text(report / "tables" / f"{t.name}.csv", t.csv())
            written.add(f"{t.name}.csv")
    for old in (report / "tables").glob("*.csv"):   # no table of an earlier collect stays behind
        if old.name not in written:
            old.unlink()
    files += write_results(results_rows(records, study), report)
    status = Table("cells", "Cells not in the tables", ["cell", "status", "detail"])
    for p in problems:
        status.add(*p)
    atomic_write_text(report / "cells.md",
                      status.markdown() if problems else "All expected cells are in the tables.\n")
    index = write_index(exp, study, tables, [f for f in files if f.suffix == ".png"],
                        status if problems else None)
    return {"report": str(report), "records": len(records), "problems": problems, "tables": tables,
            "files": [str(f) for f in files], "headline": headline, "index": str(index)}


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
             "[results.jsonl](results.jsonl) (columns in "
             "the README); each table as CSV under [tables/](tables). Tables for reading below, as "
             "Markdown and "
             "LaTeX (`*.tex`).", ""]
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
    """The summary with its tables as rows keyed by column name, numbers as numbers (Stat: mean,
    half, n)."""
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
    # every eval metric with its coordinates, and the tables, in the study's collect run; W&B is a
    # mirror:
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
