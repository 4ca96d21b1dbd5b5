"""The collector: every cell's results -> tables (Markdown, CSV, LaTeX), plots (PNG, PDF) and a status list.

Reads `eval/*/result.json` and `cross/*/summary.json` (never logs), with each cell's coordinates from its
`job.json`. The list of expected cells comes from the collect cell's upstream list (all cells of the plan), so
missing, unfinished, failed and corrupt cells are listed by id; they never enter a table.

    python -m eval.collect runs/<experiment>          # or: make collect RUN=runs/<experiment>
Writes runs/<experiment>/report/{rebound,resistance,compression}.{md,csv,tex}, *.png/pdf, cells.md.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from launch import layout
from launch.jobs import KINDS, CollectJob, json_problem
from launch.layout import atomic_write_text


def t_quantile(p: float, df: int) -> float:
    """The Student-t quantile t with P(|T| < t) = p (two-sided: p = 0.95 gives the 97.5 % point) for integer df,
    exact: the t distribution's closed form for integer df, inverted by bisection (no scipy)."""
    def inside(t):
        th = math.atan(t / math.sqrt(df))
        c2, term, total = math.cos(th) ** 2, 1.0, 1.0
        for k in range(1 + df % 2, df - 1, 2):   # odd df: 1 + 2/3 c2 + 2*4/(3*5) c2^2 ...; even: 1 + 1/2 c2 ...
            term *= c2 * k / (k + 1)
            total += term
        if df % 2:
            return 2 / math.pi * (th + (math.sin(th) * math.cos(th) * total if df > 1 else 0.0))
        return math.sin(th) * total
    lo, hi = 0.0, 1e7
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if inside(mid) < p else (lo, mid)
    return (lo + hi) / 2


Z95 = 1.959963984540054   # the normal 97.5 % point


def natural(name) -> list:
    """Sort key that reads numbers as numbers: toy-5k < toy-10k < toy-20k, tinyllama-2T < 2.5T < 3T."""
    return [(0, float(t)) if t[0].isdigit() else (1, t) for t in re.findall(r"\d+(?:\.\d+)?|\D+", str(name))]


def mean_ci(values: list[float], stderr_one: float | None = None) -> tuple[float, float, int]:
    """Mean and 95 % half-width over seeds; with one seed, the normal 97.5 % point x the cell's own standard error."""
    n = len(values)
    m = sum(values) / n
    if n == 1:
        return m, Z95 * (stderr_one or 0.0), 1
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, t_quantile(0.95, n - 1) * sd / math.sqrt(n), n


# --------------------------------------------------------------------------------------------- reading
def _json(path: Path):
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def expected_cells(exp: Path) -> list[str]:
    """stage/cell keys the plan expects: the newest collect cell's upstream list, else what is on disk."""
    jobs = sorted((exp / "collect").glob("*/job.json"), key=lambda p: p.stat().st_mtime)
    if jobs and (meta := _json(jobs[-1])) and meta.get("upstream"):
        return list(meta["upstream"])
    return [f"{s}/{p.name}" for s in ("eval", "cross", "responses") for p in sorted((exp / s).glob("*")) if p.is_dir()]


def read_cells(exp: Path):
    """(records, problems): records are dicts with coords and metrics; problems are (key, state, detail) of the
    expected cells that are not done (layout.cell_state) or whose output fails its check; they never enter a table."""
    records, problems = [], []
    for key in expected_cells(exp):
        d = exp / key
        meta = _json(d / "job.json") or {}
        kind = meta.get("kind", "eval" if key.startswith("eval/") else "train")
        want = KINDS[kind].outputs[0] if KINDS[kind].outputs else "summary.json"
        # (outputs are checked below on the data read once: a done cell costs three reads and no stat)
        state = layout.cell_state(d, kind, (), meta.get("upstream", []))
        data = _json(d / want) if state in ("done", "stale") else None
        if state in ("done", "stale"):   # its own output first: a corrupt cell is corrupt, whatever its upstream
            problem = "job.json unreadable" if not meta else f"{want} unreadable" if data is None else \
                json_problem(data, want, kind)
            state, detail = ("corrupt", problem) if problem else \
                (state, "made from an upstream cell that is gone, corrupt or redone")
        else:
            detail = {"todo": "never started" if not d.exists() else "no done marker",
                      "corrupt": "its done marker is unreadable"}.get(state) or \
                (_json(d / "FAILED") or {}).get("error", state)
        if state != "done":   # never tabled; the next run redoes it
            problems.append((key, state, detail))
            continue
        base = ((meta.get("job") or {}).get("base") or {}).get("path", "")
        records.append({"key": key, "stage": key.split("/")[0], "coords": meta.get("coords", {}), "data": data,
                        "base": base})
    return records, problems


def metric_of(rec: dict, name: str) -> dict | None:
    return next((m for m in rec["data"].get("metrics", []) if m.get("name") == name and
                 isinstance(m.get("value"), (int, float))), None)


# --------------------------------------------------------------------------------------------- tables
class Table:
    def __init__(self, title: str, header: list[str]):
        self.title, self.header, self.rows = title, header, []

    def markdown(self) -> str:
        cell = lambda c: str(c).replace("|", "\\|")   # a pipe in a cell (|D|·Δ) would split it
        lines = [f"### {self.title}", "", "| " + " | ".join(map(cell, self.header)) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(map(cell, r)) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(self.header)
        w.writerows(self.rows)
        return buf.getvalue()

    def latex(self) -> str:
        esc = latex_escape
        lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{" + "l" * 1 + "r" * (len(self.header) - 1)
                 + "}", r"\toprule", " & ".join(esc(h) for h in self.header) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) for c in r) + r" \\" for r in self.rows]
        lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + esc(self.title) + "}", r"\end{table}"]
        return "\n".join(lines) + "\n"


LATEX = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#", "%": r"\%",
         "_": r"\_", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}", "<": r"\textless{}", ">": r"\textgreater{}",
         "|": r"\textbar{}", "±": r"$\pm$", "θ": r"$\theta$", "→": r"$\rightarrow$", "↔": r"$\leftrightarrow$",
         "−": r"$-$", "·": r"$\cdot$", "Δ": r"$\Delta$"}


def latex_escape(text) -> str:
    """Text as LaTeX typesets it: every character special to LaTeX escaped, the tables' symbols as math."""
    return "".join(LATEX.get(c, c) for c in str(text))


def fmt(m: float, ci: float) -> str:
    return f"{m:.3f} ± {ci:.3f}"


@dataclass(frozen=True)
class Point:
    """One point of a rebound curve: a negative volume, the mean over seeds and its 95 % CI half-width."""
    negative: int
    mean: float
    half: float
    n: int                                # seeds in the mean
    seeds: dict                           # seed -> that seed's value (paired statistics)


@dataclass(frozen=True)
class Curve:
    """One start model under negative fine-tuning: its points by negative volume (the base model: one point)."""
    model: str
    arm: str                              # positive | control | base
    start: int                            # the start's positive volume (0 for the base model)
    points: list


def ci_cell(values, ns: list, digits: int = 3, resolve: bool = False) -> str:
    """'mean ± half-width' of paired per-seed values (a dict or a list; '' when none), its n appended to ns (for the
    table's title); resolve: mark it 'resolved' when the CI excludes 0."""
    values = list(values.values()) if isinstance(values, dict) else list(values)
    if not values:
        return ""
    m, half, n = mean_ci(values)
    ns.append(n)
    if n == 1:
        return f"{m:+.{digits}f}"
    return f"{m:+.{digits}f} ± {half:.{digits}f}" + (" resolved" if resolve and abs(m) > half else "")


def seed_of(coords: dict):
    """What pairs a cell with the same chain's other cells: its seed, or (pre-training seed, seed) where the study
    has several pre-training seeds (then every mean and CI is over both)."""
    return (coords["pretrain_seed"], coords.get("seed")) if "pretrain_seed" in coords else coords.get("seed")


def ci_label(ns) -> str:
    """The interval every 'mean ± half-width' of a table is, with its n (seeds)."""
    ns = sorted(set(ns))
    if len(ns) == 1:
        return ci_kind(ns[0])
    return f"95% CI over {ns[0]}-{ns[-1]} seeds (t; normal from the cell's error where 1)"


def rebound_tables(records, metric_name: str) -> tuple[list[Table], list[Curve]]:
    """Per model and arm: positive volume x negative volume matrix of mean ± CI over seeds (+ the base row), and
    the same numbers as curves."""
    groups = defaultdict(lambda: defaultdict(list))      # (model, arm) -> (pos, neg) -> [(value, stderr, seed)]
    sizes = {}
    for r in records:
        c, m = r["coords"], metric_of(r, metric_name)
        if r["stage"] != "eval" or m is None or "negative" not in c:
            continue
        sizes[c["model"]] = c.get("size", "")
        groups[(c["model"], c.get("arm", ""))][(c.get("positive", 0), c.get("negative", 0))].append(
            (m["value"], m["stderr"], seed_of(c)))

    def point(n, vals) -> Point:
        mean, half, k = mean_ci([v for v, _, _ in vals], vals[0][1])
        return Point(n, mean, half, k, {s: v for v, _, s in vals})
    tables, curves = [], []
    negs = sorted({k[1] for g in groups.values() for k in g})
    for model in sorted({k[0] for k in groups}, key=lambda m: (natural(sizes.get(m) or ""), natural(m))):
        base = groups.get((model, "base"), {}).get((0, 0), [])
        for arm in sorted(a for (mm, a) in groups if mm == model and a != "base"):
            cells = groups[(model, arm)]
            if arm == "from-base" and base:   # negative fine-tuning from the base: its start is the base
                cells = {**cells, (0, 0): base}
            label = f"{model}" + (f" ({sizes[model]})" if sizes.get(model) else "") + f", arm {arm}"
            t = Table("", [f"{arm} \\ negative"] + [str(n) for n in negs])
            ns = []
            if base:
                b = point(0, base)
                ns.append(b.n)
                t.rows.append(["base model"] + [fmt(b.mean, b.half) if n == 0 else "" for n in negs])
            for p in sorted({k[0] for k in cells}):
                pts = [point(n, cells[(p, n)]) for n in negs if cells.get((p, n))]
                curves.append(Curve(model, arm, p, pts))
                ns += [q.n for q in pts]
                at = {q.negative: q for q in pts}
                t.rows.append([str(p)] + [fmt(at[n].mean, at[n].half) if n in at else "" for n in negs])
            t.title = (f"{metric_name}: {label} (rows: {arm} volume; columns: negative volume); "
                       f"mean ± {ci_label(ns)}")
            tables.append(t)
        if base:
            curves.append(Curve(model, "base", 0, [point(0, base)]))
    return tables, curves


def base_level(curves: list[Curve], model: str) -> float | None:
    return next((c.points[0].mean for c in curves if c.model == model and c.arm == "base"), None)


WINDOWS = (25, 50, 100)   # negative examples after which paired drops are reported (those on the study's grid)


def crossing(points: list, seed, level: float) -> float | None:
    """Negative examples at which one seed's curve first reaches `level` (linear between grid points), or None."""
    prev = None
    for q in points:
        v = q.seeds.get(seed)
        if v is None:
            continue
        if v <= level:
            if prev is None:
                return float(q.negative)
            n0, v0 = prev
            return n0 + (v0 - level) / (v0 - v) * (q.negative - n0)
        prev = (q.negative, v)
    return None


def window_stats(curves: list[Curve], metric_name: str) -> list[dict]:
    """Window-robust rebound statistics per start curve, each a mean over seeds with its 95 % CI:
    - drop@w: per seed, the value after w negative examples minus the value at 0 (paired), for w in WINDOWS and
      the last volume;
    - deeper@w: that drop minus the same seed's drop from the arm's smallest start (does deeper alignment fall
      more?); model@w: minus the same start's drop in the study's first model (Setting III: a larger model, more
      pre-training); both 'resolved' when the CI excludes 0;
    - return: negative examples until the seed's curve reaches its own base eval's level (linear between grid
      points), over the seeds that get there ('k/n' of them)."""
    out, first = [], {}
    base = {c.model: c.points[0].seeds for c in curves if c.arm == "base"}
    drops = lambda c, w: {s: v - c.points[0].seeds[s] for q in c.points if q.negative == w for s, v in q.seeds.items()
                          if s in c.points[0].seeds and s is not None}
    for c in curves:
        if c.arm != "base":
            first.setdefault((c.model, c.arm), c)
            first.setdefault((c.arm, c.start), c)
    for c in curves:
        if c.arm == "base" or not c.points or c.points[0].negative != 0:
            continue
        at = {q.negative for q in c.points}
        row = {"metric": metric_name, "model": c.model, "arm": c.arm, "start": c.start}
        for w in sorted({w for w in WINDOWS if w in at} | {max(at)} - {0}):
            row[f"drop@{w}"] = drop = drops(c, w)
            for key, ref in (("deeper", first[(c.model, c.arm)]), ("model", first[(c.arm, c.start)])):
                if ref is not c and (other := drops(ref, w)):
                    row[f"{key}@{w}"] = {s: drop[s] - other[s] for s in drop if s in other}
        if c.model in base and c.arm != "from-base":
            seeds = [s for s in c.points[0].seeds if s in base[c.model]]
            row["return"] = {s: x for s in seeds if (x := crossing(c.points, s, base[c.model][s])) is not None}
            row["return_of"] = len(seeds)
        out.append(row)
    return out


def window_table(curves: list[Curve], metric_name: str) -> Table:
    """window_stats as a table: mean ± CI per statistic; 'resolved' marks a deeper@w whose CI excludes 0."""
    stats = window_stats(curves, metric_name)
    wins = sorted({int(k[5:]) for r in stats for k in r if k.startswith("drop@")})
    fixed = [w for w in WINDOWS if w in wins][-1:] or wins[:1]   # the ordering test's window
    models = list(dict.fromkeys(r["model"] for r in stats))
    vs_model = [f"minus {models[0]} @{w}" for w in fixed] if len(models) > 1 else []
    t = Table("", ["model", "arm", "start"] + [f"drop@{w}" for w in wins] +
              [f"minus smallest start @{w}" for w in fixed] + vs_model + ["negatives to base"])
    ns = []
    cell = lambda vals, digits=3, resolve=False: ci_cell(vals, ns, digits, resolve)
    for r in stats:
        ret = r.get("return", {})
        back = "" if "return" not in r else (f"{cell(ret, 0).lstrip('+')} ({len(ret)}/{r['return_of']})" if ret
                                             else f"none by the last volume (0/{r['return_of']})")
        t.rows.append([r["model"], r["arm"], r["start"]] + [cell(r.get(f"drop@{w}", {})) for w in wins] +
                      [cell(r.get(f"deeper@{w}", {}), resolve=True) for w in fixed] +
                      [cell(r.get(f"model@{w}", {}), resolve=True) for w in fixed if vs_model] + [back])
    t.title = (f"{metric_name}: paired drops from the start after {', '.join(map(str, wins))} negative examples, the "
               f"drop minus the smallest start's, and the negatives to reach the base; mean ± "
               f"{ci_label(ns or [1])}; resolved: the CI excludes 0")
    return t


def adjusted_table(curves: list[Curve], metric_name: str) -> Table:
    """Does a control arm fall differently from the aligned arm once the start level is accounted for? Per window w:
    ordinary least squares over every (start, seed) of an aligned (positive) arm and one other arm,
    drop@w = a + b * start level + c * [other arm]; c with its 95 % t interval (n - 3 degrees of freedom). The
    aligned arm is the model's own and, for every other model, also the study's first model's (a base pre-trained
    on the shifted corpus against the aligned base). The observations share bases and seeds, so the interval
    treats as independent what is not quite."""
    import numpy as np
    t = Table(f"{metric_name}: start-adjusted arm effect on the paired drop (OLS: drop ~ start level + arm; "
              "c = the arm's drop minus the aligned arm's at the same start; 95% t CI over starts x seeds)",
              ["model", "arm", "vs aligned arm of", "window", "arm effect c", "start slope b", "n", "resolved"])
    obs = defaultdict(list)   # (model, arm, w) -> [(start level, drop)]
    for c in curves:
        at = {q.negative: q.seeds for q in c.points}
        if c.arm == "base" or 0 not in at:
            continue
        for w in WINDOWS:
            for sd in (sd for sd in at.get(w, {}) if sd in at[0]):
                obs[(c.model, c.arm, w)].append((at[0][sd], at[w][sd] - at[0][sd]))
    first = next((c.model for c in curves if c.arm == "positive"), None)
    pairs = [(k, k[0]) for k in obs if k[1] != "positive"] + [(k, first) for k in obs if k[0] != first]
    for (model, arm, w), ref in sorted(pairs, key=lambda p: (natural(p[0][0]), p[0][1], p[1] != p[0][0], p[0][2])):
        pos, other = obs.get((ref, "positive", w), []), obs[(model, arm, w)]
        n = len(pos) + len(other)
        if not pos or n < 5:
            continue
        x = np.array([[1.0, lv, 0.0] for lv, _ in pos] + [[1.0, lv, 1.0] for lv, _ in other])
        y = np.array([d for _, d in pos] + [d for _, d in other])
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        resid = y - x @ coef
        cov = float(resid @ resid) / (n - 3) * np.linalg.pinv(x.T @ x)
        half = t_quantile(0.95, n - 3) * math.sqrt(max(cov[2, 2], 0.0))
        t.rows.append([model, arm, ref, w, f"{coef[2]:+.3f} ± {half:.3f}", f"{coef[1]:+.3f}", n,
                       "yes" if abs(coef[2]) > half else "no"])
    return t


def resistance_table(records):
    """Paper's Table 1: for each model and slice pair i<j, inverse (theta_j on D_i) vs forward (theta_i on D_j);
    every gap is paired by seed (forward minus inverse within each seed's chain) and its CI resolves the direction.
    The entropy-corrected gap subtracts each target's own entropy (its sampler's nats/token on the answers trained
    on): a loss is bounded below by its target's entropy, so the corrected gap compares the excess, KL(D || model)."""
    loss, ent = defaultdict(dict), defaultdict(dict)   # (model, from, to) -> {seed: loss}; (model, slice) -> ...
    ce, ce_attr = defaultdict(dict), defaultdict(dict)
    for r in records:
        c = r["coords"]
        if r["stage"] == "responses" and (m := metric_of(r, "sampler_nats_per_token/train")):
            ent[(c["model"], c["slice"])][seed_of(c)] = m["value"]
        if "direction" not in c:
            continue
        k = (c["model"], c["from"], c["to"])
        if r["stage"] == "cross" and r["data"].get("mean_loss") is not None:
            loss[k][seed_of(c)] = r["data"]["mean_loss"]
        elif r["stage"] == "eval" and (m := metric_of(r, "bits_per_token/target")):
            ce[k][seed_of(c)] = m["value"]
            if a := metric_of(r, "bits_per_attribute_token/target"):
                ce_attr[k][seed_of(c)] = a["value"]
    weights = sorted({r["data"].get("loss_weighting", "token") for r in records if r["stage"] == "cross"}) or ["token"]
    t = Table(f"Setting I: mean training loss ({'/'.join(weights)}-weighted, nats), inverse vs forward (lower = "
              "easier); gaps paired by seed, forward − inverse (> 0: inverse easier)",
              ["model", "pair", "inverse (θj→Di)", "forward (θi→Dj)", "paired gap", "inverse easier",
               "target entropy Di / Dj", "entropy-corrected gap", "inverse easier, corrected", "held-out bits gap",
               "attribute bits gap"])
    ns = []

    def gap(fwd: dict, inv: dict, shift=None) -> tuple[str, str]:
        seeds = [s for s in inv if s in fwd and (shift is None or s in shift)]
        if not seeds:
            return "", ""
        m, ci, n = mean_ci([fwd[s] - inv[s] - (shift[s] if shift else 0.0) for s in seeds])
        ns.append(n)
        return (f"{m:+.4f} ± {ci:.4f}" if n > 1 else f"{m:+.4f}",
                ("yes" if m > 0 else "no") + (" (resolved)" if n > 1 and abs(m) > ci else
                                              " (unresolved)" if n > 1 else ""))
    for model in sorted({k[0] for k in loss}, key=natural):
        for i, j in sorted({(k[1], k[2]) for k in loss if k[0] == model and k[1] < k[2]}):
            inv, fwd = loss.get((model, j, i)), loss.get((model, i, j))
            if not inv or not fwd:
                continue
            (mi, ci_i, n_i), (mf, ci_f, n_f) = mean_ci(list(inv.values())), mean_ci(list(fwd.values()))
            ns += [n_i, n_f]
            hi, hj = ent.get((model, i), {}), ent.get((model, j), {})
            dh = {s: hj[s] - hi[s] for s in hi if s in hj}   # forward's target (D_j) minus inverse's (D_i)
            ents = f"{sum(hi.values()) / len(hi):.4f} / {sum(hj.values()) / len(hj):.4f}" if hi and hj else ""
            t.rows.append([model, f"θ{i}↔θ{j}", fmt(mi, ci_i), fmt(mf, ci_f), *gap(fwd, inv), ents,
                           *(gap(fwd, inv, dh) if dh else ("", "")),
                           gap(ce.get((model, i, j), {}), ce.get((model, j, i), {}))[0],
                           gap(ce_attr.get((model, i, j), {}), ce_attr.get((model, j, i), {}))[0]])
    if ns:
        t.title += f"; mean ± {ci_label(ns)}"
    return t


def compression_table(records, pretrain_sizes: dict):
    """Hooke's law as the theorem states it: under a perturbation (negative fine-tuning) the change of a model's
    compression rate on each dataset it was trained on is inversely proportional to the dataset's size, so
    |D_pre|·Δpre = |D_pos|·Δpos. Per start and negative volume: every bits/token change from the start, paired by
    seed (mean ± CI), and the two products with the ratio of their means. |D_pre| is the base's pre-training
    volume (coords pretrain_n; else its checkpoint's); |D_pos| the positive examples trained on: the start's volume
    in the aligned arm, those inside the pre-training corpus (world:joint) from the base itself."""
    by = defaultdict(dict)   # (model, arm, positive, negative) -> {seed: {metric: bits}}
    info = {}
    for r in records:
        c = r["coords"]
        if r["stage"] != "eval" or "negative" not in c:
            continue
        key = (c["model"], c.get("arm"), c.get("positive"), c.get("negative"))
        by[key][seed_of(c)] = {m["name"]: m["value"] for m in r["data"].get("metrics", [])
                               if m["name"].startswith("bits_per_")}
        info[key[:3]] = c
    roles = sorted({n for v in by.values() for m in v.values() for n in m})
    t = Table("", ["model", "arm", "start", "negative"] + [f"Δ {r.split('_per_')[1]}" for r in roles] +
              ["|D_pre|·Δpre", "|D_pos|·Δpos", "pre − pos", "ratio"])
    ns = []
    for key in sorted(by, key=lambda k: tuple(natural(str(x)) for x in k)):
        model, arm, p, n = key
        start = by.get((model, arm, p, 0)) or by.get((model, "base", 0, 0) if arm == "from-base" else (), {})
        if not n or not start:   # (the from-base arm starts at the base model's own eval)
            continue
        c = info[key[:3]]
        d_pre = c.get("pretrain_n") or pretrain_sizes.get(model)
        d_pos = c.get("pretrain_positive") if arm == "from-base" else p if arm == "positive" else None
        seeds = [s for s in by[key] if s in start]
        delta = {r: {s: by[key][s][r] - start[s][r] for s in seeds if r in by[key][s] and r in start[s]}
                 for r in roles}
        row = [model, arm, p, n] + [ci_cell(delta[r], ns, 4) for r in roles]
        pre, pos = delta.get("bits_per_token/pretrain", {}), delta.get("bits_per_token/positive", {})
        if d_pre and d_pos and pre and pos:
            a, b = [d_pre * pre[s] for s in pre if s in pos], [d_pos * pos[s] for s in pre if s in pos]
            row += [ci_cell(a, ns, 4), ci_cell(b, ns, 4), ci_cell([x - y for x, y in zip(a, b)], ns, 4, resolve=True),
                    f"{sum(a) / sum(b):.3f}" if sum(b) else ""]
        else:
            row += ["", "", "", ""]
        t.rows.append(row)
    t.title = ("Compression (bits/token) under negative fine-tuning: each change from the start, paired by seed, and "
               "the Hooke products |D|·Δ (equal in the theorem; their paired difference, resolved where its CI "
               f"excludes 0, and the ratio of their means); mean ± {ci_label(ns or [1])}")
    return t


# --------------------------------------------------------------------------------------------- results
RESULT_COLUMNS = ["study", "setting", "task", "model", "size", "arm", "start_volume", "negative_volume", "slice_from",
                  "slice_to", "direction", "metric", "space", "row", "pretrain_seed", "seed", "value", "stderr", "n",
                  "ci_low", "ci_high", "ci_kind", "n_seeds"]


def ci_kind(n_seeds: int) -> str:
    return (f"t 95% over {n_seeds} seeds" if n_seeds > 1 else
            "normal 95% from the cell's standard error (1 seed)")


def results_rows(records, study: dict) -> list[dict]:
    """The long, tidy form of every number in the tables: one 'seed' row per (cell, metric) with value, stderr and
    n, and one 'mean' row per (coordinates, metric) with the mean over seeds and its CI, computed exactly as the
    Markdown tables compute theirs (mean_ci)."""
    seeds: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        c = r["coords"]
        base = {"study": study.get("experiment", ""), "setting": study.get("setting", ""),
                "task": study.get("task", ""), "model": c.get("model", ""), "size": c.get("size", ""),
                "arm": c.get("arm", ""), "start_volume": c.get("positive", ""),
                "negative_volume": c.get("negative", ""),
                "slice_from": c.get("from", c.get("slice", "")), "slice_to": c.get("to", ""),
                "direction": c.get("direction", "")}
        if r["stage"] == "cross":
            ms = [{"name": k, "value": r["data"][k], "space": "loss"} for k in ("mean_loss", "final_loss")
                  if isinstance(r["data"].get(k), (int, float))]
        else:
            ms = [m for m in r["data"].get("metrics", []) if isinstance(m.get("value"), (int, float))]
        for m in ms:
            row = {**base, "metric": m["name"], "space": m.get("space", m.get("unit", "")), "row": "seed",
                   "pretrain_seed": c.get("pretrain_seed", ""), "seed": c.get("seed", ""), "value": m["value"],
                   "stderr": m.get("stderr", ""), "n": m.get("n", "")}
            seeds[tuple(base.values()) + (m["name"],)].append(row)
    out = []
    for group in seeds.values():
        group.sort(key=lambda r: (str(r["pretrain_seed"]), str(r["seed"])))
        out += group
        one = group[0]
        mean, half, n = mean_ci([r["value"] for r in group], one["stderr"] if one["stderr"] != "" else None)
        out.append({**one, "row": "mean", "pretrain_seed": "", "seed": "", "value": mean, "stderr": "", "n": "",
                    "ci_low": mean - half, "ci_high": mean + half, "ci_kind": ci_kind(n), "n_seeds": n})
    return [{k: r.get(k, "") for k in RESULT_COLUMNS} for r in out]


def write_results(rows: list[dict], report: Path) -> list[Path]:
    """report/results.csv (numbers as numbers, one header line, nothing else) and results.jsonl."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    atomic_write_text(report / "results.csv", buf.getvalue())
    atomic_write_text(report / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return [report / "results.csv", report / "results.jsonl"]


# --------------------------------------------------------------------------------------------- plots
def _save(fig, out: Path, tight: bool = True) -> list[Path]:
    """PNG and PDF, each written to a temp name and renamed. tight=False keeps the figure's own margins
    (tight_layout renders the figure once more to measure it: a third of the collector's time, bench P5)."""
    import os
    import matplotlib.pyplot as plt
    out.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for p in paths:
        tmp = p.with_name(f".{p.stem}.tmp{p.suffix}")
        fig.savefig(tmp)
        os.replace(tmp, p)
    plt.close(fig)
    return paths


def plot_rebound(panels: dict[str, list[Curve]], out: Path) -> list[Path]:
    """One figure: a row per model, a column per metric of `panels` (the probability and, beside it, the log-odds
    of the same rate). x is symmetric-log so that the aligned start sits at 0 negative examples; bands are the
    tables' 95 % CIs, labelled with their kind and number of seeds; the base model's level is a labelled line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    names = list(panels)
    first = panels[names[0]]
    models = list(dict.fromkeys(c.model for c in first))   # the tables' order: by size label, then name
    if not models:
        return []
    width, height = 5.0 * len(names), 3.6 * len(models)
    fig, axes = plt.subplots(len(models), len(names), figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.35 / height,
                        wspace=1.0 / (5 - 1.0), hspace=0.9 / 3.6)
    cmap = plt.get_cmap("viridis")
    for i, model in enumerate(models):
        for j, name in enumerate(names):
            ax, curves = axes[i][j], panels[name]
            mine = [c for c in curves if c.model == model]
            vols = sorted({c.start for c in mine if c.arm != "base"})
            negs = sorted({q.negative for c in mine for q in c.points})
            seeds = [q.n for c in mine for q in c.points]
            for c in mine:   # arms and start volumes in the tables' order
                if c.arm == "base":
                    continue
                x, y, ci = [q.negative for q in c.points], [q.mean for q in c.points], [q.half for q in c.points]
                color = cmap(vols.index(c.start) / max(1, len(vols) - 1))
                ax.plot(x, y, "-" if c.arm == "positive" else ":", marker="o", color=color,
                        label=f"{c.arm} {c.start}")
                ax.fill_between(x, [a - b for a, b in zip(y, ci)], [a + b for a, b in zip(y, ci)], color=color,
                                alpha=0.15)
            if (level := base_level(mine, model)) is not None:
                ax.axhline(level, ls="--", color="gray", label="base model")
            small = min((n for n in negs if n > 0), default=1)
            ax.set_xscale("symlog", linthresh=small, linscale=0.5)
            ax.set_xlim(left=0)
            ax.set_xticks(negs, [str(n) for n in negs], fontsize=7)   # the volumes measured, 0 included
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xlabel("negative examples")
            ax.set_ylabel(name)
            ax.set_title(f"{model}: {name}", fontsize=9)
            if i == 0:
                ax.legend(fontsize=6, title=f"bands: {ci_label(seeds or [0])}", title_fontsize=6)
    return _save(fig, out, tight=False)


def plot_resistance(t: Table, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not t.rows:
        return []
    labels = [f"{r[0]} {r[1]}" for r in t.rows]
    inv = [float(r[2].split(" ")[0]) for r in t.rows]
    fwd = [float(r[3].split(" ")[0]) for r in t.rows]
    fig, ax = plt.subplots(figsize=(max(5, len(labels)), 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], inv, 0.4, label="inverse")
    ax.bar([x + 0.2 for x in xs], fwd, 0.4, label="forward")
    ax.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean training loss")
    ax.legend()
    return _save(fig, out)


# --------------------------------------------------------------------------------------------- entry
def collect(exp: Path) -> dict:
    exp = Path(exp)
    report = exp / "report"
    records, problems = read_cells(exp)
    tables: dict[str, list[Table]] = {}
    files: list[Path] = []
    metric_names = {m["name"] for r in records if r["stage"] == "eval" for m in r["data"].get("metrics", [])}
    headline = next((n for n in ("positive_rate", "score", "kl_to_base") if n in metric_names), None)
    if headline:
        tabs, curves = rebound_tables(records, headline)
        extra = {n: rebound_tables(records, n) for n in sorted(metric_names)
                 if n != headline and n in ("positive_logit", "positive_prob", "kl_to_base", "score")}
        tables["rebound"] = tabs + [t for ts, _ in extra.values() for t in ts] + \
            [f(c, n) for n, c in [(headline, curves)] + [(n, extra[n][1]) for n in ("positive_logit",) if n in extra]
             for f in (window_table, adjusted_table)]
        tables["rebound"] = [t for t in tables["rebound"] if t.rows]
        panels = {headline: curves, **({"positive_logit": extra["positive_logit"][1]} if "positive_logit" in extra
                                       else {})}
        files += plot_rebound(panels, report / "rebound")
    res = resistance_table(records)
    if res.rows:
        tables["resistance"] = [res]
        files += plot_resistance(res, report / "resistance")
    if any(n.startswith("bits_per_") for n in metric_names):
        sizes = _pretrain_sizes(records)
        tables["compression"] = [compression_table(records, sizes)]
    for name, ts in tables.items():   # and each table as CSV: report/tables/<name>-<k>.csv
        atomic_write_text(report / f"{name}.md", "\n".join(t.markdown() for t in ts))
        atomic_write_text(report / f"{name}.tex", "\n".join(t.latex() for t in ts))
        files += [report / f"{name}.{ext}" for ext in ("md", "tex")]
        for k, t in enumerate(ts):
            atomic_write_text(report / "tables" / f"{name}-{k}.csv", t.csv())
    study = study_info(exp)
    files += write_results(results_rows(records, study), report)
    status = Table("Cells not in the tables", ["cell", "status", "detail"])
    status.rows = [list(p) for p in problems]
    atomic_write_text(report / "cells.md", status.markdown() if problems else "All expected cells are in the tables.\n")
    index = write_index(exp, study, tables, [f for f in files if f.suffix == ".png"], status if problems else None)
    return {"report": str(report), "records": len(records), "problems": problems, "tables": tables,
            "files": [str(f) for f in files], "headline": headline, "index": str(index)}


def study_info(exp: Path) -> dict:
    """experiment / setting / task of the study (its saved study.yaml; the folder's name where there is none)."""
    import yaml
    try:
        spec = yaml.safe_load((exp / "study.yaml").read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError):
        spec = {}
    spec = spec if isinstance(spec, dict) else {}
    if not spec:   # a run made without the CLI: its collect cell's job names the study
        jobs = sorted((exp / "collect").glob("*/job.json"), key=lambda p: p.stat().st_mtime)
        spec = ((_json(jobs[-1]) or {}).get("job") or {}) if jobs else {}
    return {"experiment": spec.get("experiment", exp.name), "setting": spec.get("setting", ""),
            "task": spec.get("task", "")}


def write_index(exp: Path, study: dict, tables: dict, plots: list[Path], problems: Table | None) -> Path:
    """report/index.md: one page per study that renders on any Git host: what it is, the code it ran, its config,
    every table and plot inline, and the cells that are not in them."""
    from launch.layout import git_commit
    report = exp / "report"
    commits = set()
    for rec in exp.glob("*/*/record.json"):   # a regex, not a JSON parse: 10,000 cells stay cheap (bench P5)
        try:
            commits.update(re.findall(r'"git_commit": "([^"]+)"', rec.read_text()))
        except OSError:
            pass
    commits = sorted(commits)
    lines = [f"# {study['experiment']}", "",
             f"Setting: {study['setting'] or 'unknown'}; task: {study['task'] or 'unknown'}. Collected "
             f"{time.strftime('%Y-%m-%d %H:%M')} by commit {git_commit()}; cells ran at "
             f"{', '.join(commits[:5]) + (' and others' if len(commits) > 5 else '') or 'an unrecorded commit'}.",
             "",
             "Tidy numbers for programs: [results.csv](results.csv) and [results.jsonl](results.jsonl) (columns in "
             "the README). Tables for reading below, as [Markdown](.) and LaTeX (`*.tex`).", ""]
    for p in plots:
        lines += [f"![{p.stem}]({p.name})", ""]
    for ts in tables.values():
        lines += [t.markdown() for t in ts]
    lines += ["## Cells not in the tables", "", problems.markdown() if problems else "None: every expected cell is in "
              "the tables.", ""]
    if (exp / "study.yaml").exists():
        lines += ["## Config", "", "<details><summary>study.yaml</summary>", "", "```yaml",
                  (exp / "study.yaml").read_text().rstrip(), "```", "", "</details>", ""]
    atomic_write_text(report / "index.md", "\n".join(lines))
    return report / "index.md"


def _pretrain_sizes(records) -> dict:
    """Toy models' pre-training volume (|D_pre|): the milestone of the pretrain checkpoint each eval's base is."""
    sizes = {}
    for r in records:
        path = r.get("base", "")
        if r["stage"] == "eval" and path.startswith("@pretrain/") and "/checkpoints/n" in path:
            sizes[r["coords"].get("model")] = int(path.rsplit("/n", 1)[1])
    return sizes


def compact(t: Table) -> list[Table]:
    """A table of 'mean ± CI' cells as two tables, means and CI half-widths, for narrow terminals and pipes."""
    if not any(" ± " in str(c) for r in t.rows for c in r):
        return [t]
    means, cis = Table(f"{t.title}. Means:", t.header), Table("CI half-widths (±):", t.header)
    for r in t.rows:
        means.rows.append([str(c).split(" ± ")[0] for c in r])
        cis.rows.append([str(c).split(" ± ")[1] if " ± " in str(c) else ("" if k else c) for k, c in enumerate(r)])
    return [means, cis]


def print_summary(summary: dict, console=None) -> None:
    """The headline tables on the terminal; at 100 columns or fewer, or piped, each 'mean ± CI' table is printed
    as two (means, then CI half-widths) so that no cell wraps."""
    from rich import box
    from rich.console import Console
    from rich.table import Table as RTable
    con = console or Console()
    narrow = con.width <= 100 or not con.is_terminal
    headline = summary["headline"] or ""
    for name, ts in summary["tables"].items():
        if name == "compression":   # wide; it is in the report files
            continue
        for t in [t for t in ts if name != "rebound" or t.title.startswith(headline)]:
            for part in (compact(t) if narrow else [t]):
                con.print(part.title, style="bold", highlight=False)
                rt = RTable(box=box.SIMPLE if narrow else box.HEAVY_HEAD, pad_edge=False)
                for h in part.header:
                    rt.add_column(str(h), overflow="fold")
                for r in part.rows:
                    rt.add_row(*[str(c) for c in r])
                con.print(rt)
    for key, status, detail in summary["problems"]:
        con.print(f"[yellow]{status}[/]: {key} ({detail})")
    con.print(f"report: {summary.get('index') or summary['report']} ({summary['records']} cells in tables, "
              f"{len(summary['problems'])} not)", soft_wrap=True)   # a path is copied whole, never wrapped


def log_to_wandb(summary: dict, out_dir: Path, exp_dir: Path, job: CollectJob) -> None:
    from launch.tracking import wandb_run
    run = wandb_run(out_dir, exp_dir, {"setting": job.setting, "task": job.task})
    if run is None:
        return
    import wandb
    rows = [json.loads(l) for l in (Path(summary["report"]) / "results.jsonl").read_text().splitlines()]
    run.log({"results": wandb.Table(columns=RESULT_COLUMNS, data=[[None if r[c] == "" else r[c] for c in
                                                                   RESULT_COLUMNS] for r in rows])})
    for name, ts in summary["tables"].items():
        for i, t in enumerate(ts):
            run.log({f"tables/{name}/{i}": wandb.Table(columns=[str(h) for h in t.header],
                                                       data=[[str(c) for c in r] for r in t.rows])})
    run.summary.update({"cells_in_tables": summary["records"], "cells_not": len(summary["problems"])})
    run.finish()


def cell_main(job: CollectJob, out_dir: Path, exp_dir: Path, runtime=None) -> list[str]:
    summary = collect(exp_dir)
    try:   # every eval metric with its coordinates, and the tables, in the study's collect run; W&B is a mirror:
        log_to_wandb(summary, out_dir, exp_dir, job)   # the report on disk is the result, so W&B never fails the cell
    except Exception as e:  # noqa: BLE001
        print(f"warning: W&B logging of the collect cell failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    atomic_write_text(Path(out_dir) / "summary.json", json.dumps(
        {k: summary[k] for k in ("report", "index", "records", "problems", "files", "headline")}, indent=2))
    return ["summary.json"]


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m eval.collect", description="tables and plots of a run folder")
    p.add_argument("run_dir", nargs="?", help="runs/<experiment>, e.g. runs/toy-setting2")
    p.add_argument("--json", action="store_true", help="print the tables and the cells not in them as JSON")
    args, extra = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    run = Path(args.run_dir or "")
    # a study's folder holds <stage>/<cell id>/job.json: any other folder (a runs root, a home) gets no report/
    if extra or not args.run_dir or not run.is_dir() or next(run.glob("*/*/job.json"), None) is None:
        print(f"error: RUN_DIR: {args.run_dir or '(none)'} is not a run folder, nothing was written "
              "(give runs/<experiment>, e.g. make collect RUN=runs/toy-setting2)", file=sys.stderr)
        return 2
    try:
        summary = collect(Path(args.run_dir))
        if args.json:
            print(json.dumps({**{k: summary[k] for k in ("report", "index", "records", "problems", "headline")},
                              "tables": {name: [{"title": t.title, "header": t.header, "rows": t.rows} for t in ts]
                                         for name, ts in summary["tables"].items()}}, indent=2, default=str))
        else:
            print_summary(summary)
    except BrokenPipeError:   # `| head` closed stdout: no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
