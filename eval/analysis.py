"""The report's tables, computed from the collector's records (eval/records.py): rebound curves and
their window statistics, the start-adjusted arm effect, Setting I's resistance gaps, the Hooke
products of compression, and the paper's printed numbers beside ours. Every cell is a number
(eval.stats.Stat) until a writer renders it.

    from eval.analysis import rebound_tables, window_table
    tables, curves = rebound_tables(records, "positive_rate")
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml
import numpy as np

from eval.records import metric_of, seed_of
from eval.stats import (Stat, ci_label, holm, natural, p_equivalent, p_value, stat, t_quantile,
                        unit_ci, unit_of)
from eval.tables import Table
from launch.core.spec import WINDOWS

# metrics whose "back to the base" is a fixed level, not the base model's own value: KL to the base
# is 0 for the base itself, and the paper counts negative examples until KL < 0.01 (its KL table)
REVERT_LEVEL = {"kl_to_base": 0.01}


def revert_label(metric_name: str) -> str:
    level = REVERT_LEVEL.get(metric_name)
    return "negatives to base" if level is None else f"negatives to {metric_name} < {level:g}"


def slug(*parts) -> str:
    """A file name from a table's parts: letters, digits, '.', '_' and '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(str(p) for p in parts if p != "")).strip("-")


@dataclass(frozen=True)
class Point:
    """A rebound curve's point: a negative volume, the mean over seeds, its 95 % CI half-width."""
    negative: int
    mean: float
    half: float
    n: int                                # units in the mean (seeds, or bases: stats.units)
    seeds: dict                           # seed -> that seed's value (paired statistics)
    unit: str = "seeds"


@dataclass(frozen=True)
class Curve:
    """One start model under negative fine-tuning: its points by negative volume (base: one)."""
    model: str
    arm: str                              # positive | control | from-base | base
    start: int                            # the start's positive volume (0 for the base model)
    points: list


# ------------------------------------------------------------------------------------- rebound
def rebound_tables(records, metric_name: str) -> tuple[list[Table], list[Curve]]:
    """Per model and arm: positive volume x negative volume matrix of mean ± CI over seeds (+ the
    base row), and the same numbers as curves."""
    # (model, arm) -> (pos, neg) -> [(value, stderr, seed)]
    groups: dict[tuple, dict[tuple, list]] = defaultdict(lambda: defaultdict(list))
    sizes = {}
    for r in records:
        c, m = r["coords"], metric_of(r, metric_name)
        if r["stage"] != "eval" or m is None or "negative" not in c:
            continue
        sizes[c["model"]] = c.get("size", "")
        groups[(c["model"], c.get("arm", ""))][(c.get("positive", 0), c.get("negative", 0))].append(
            (m["value"], m["stderr"], seed_of(c)))

    def point(n, vals) -> Point:
        seeds = {s: v for v, _, s in vals}
        mean, half, k, unit = unit_ci(seeds, vals[0][1])
        return Point(n, mean, half, k, seeds, unit)
    cell = lambda q: Stat(q.mean, q.half, q.n, signed=False, unit=q.unit)
    tables, curves = [], []
    negs = sorted({k[1] for g in groups.values() for k in g})
    for model in sorted({k[0] for k in groups},
                        key=lambda m: (natural(sizes.get(m) or ""), natural(m))):
        base = groups.get((model, "base"), {}).get((0, 0), [])
        for arm in sorted(a for (mm, a) in groups if mm == model and a != "base"):
            cells = groups[(model, arm)]
            # negative fine-tuning from the base: its start is the base
            if arm == "from-base" and base:
                cells = {**cells, (0, 0): base}
            label = f"{model}" + (f" ({sizes[model]})" if sizes.get(model) else "") + f", arm {arm}"
            t = Table(slug("rebound", metric_name, model, arm), "",
                      [f"{arm} \\ negative"] + [str(n) for n in negs])
            ns = []
            if base:
                b = point(0, base)
                ns.append((b.n, b.unit))
                t.add("base model", *[cell(b) if n == 0 else None for n in negs])
            for p in sorted({k[0] for k in cells}):
                pts = [point(n, cells[(p, n)]) for n in negs if cells.get((p, n))]
                curves.append(Curve(model, arm, p, pts))
                ns += [(q.n, q.unit) for q in pts]
                at = {q.negative: q for q in pts}
                t.add(p, *[cell(at[n]) if n in at else None for n in negs])
            t.title = (f"{metric_name}: {label} (rows: {arm} volume; columns: negative volume); "
                       f"mean ± {ci_label(ns)}")
            tables.append(t)
        if base:
            curves.append(Curve(model, "base", 0, [point(0, base)]))
    return tables, curves


def base_level(curves: list[Curve], model: str) -> float | None:
    return next((c.points[0].mean for c in curves if c.model == model and c.arm == "base"), None)


def crossing(points: list, seed, level) -> float | None:
    """Negative examples at which one seed's curve first reaches `level` (a number, or a curve:
    negative volume -> level), linear between grid points; None where it never does."""
    prev = None
    for q in points:
        v = q.seeds.get(seed)
        at = level if isinstance(level, (int, float)) else level.get(q.negative)
        if v is None or at is None:
            continue
        d = v - at   # above the level while > 0
        if d <= 0:
            if prev is None:
                return float(q.negative)
            n0, d0 = prev
            return n0 + d0 / (d0 - d) * (q.negative - n0)
        prev = (q.negative, d)
    return None


def window_stats(curves: list[Curve], metric_name: str, windows=WINDOWS) -> list[dict]:
    """Window-robust rebound statistics per start curve, each a mean over seeds with its 95 % CI:
    - change@w: per seed, the value after w negative examples minus the value at 0 (paired; a fall
      is negative), for w in `windows` (WINDOWS and the study's claims' windows) and the last
      volume;
    - deeper@w: that change minus the same seed's change from the arm's smallest start (does deeper
      alignment fall more?); model@w: minus the same start's change in the study's first model
      (Setting III: a larger model, more pre-training); both 'resolved' when the CI excludes 0;
    - return: negative examples until the seed's curve reaches its own base eval's level (linear
      between grid points), or REVERT_LEVEL's fixed level (KL to the base below 0.01), over the
      seeds that get there (of return_of); for those metrics, where the study has the from-base
      arm, also return_fb: until the curve reaches the same seed's from-base curve (as close to the
      base as the base itself fine-tuned on as many negatives: a level every model can reach);
    - deeper-return: the return (return_fb where there is one) minus the same seed's from the
      arm's smallest start (does deeper alignment need more negatives, or fewer, the paper's Table
      3?)."""
    out: list[dict] = []
    first: dict[tuple, Curve] = {}
    base = {c.model: c.points[0].seeds for c in curves if c.arm == "base"}
    from_base = {c.model: c for c in curves if c.arm == "from-base"}
    changes = lambda c, w: {s: v - c.points[0].seeds[s] for q in c.points if q.negative == w
                            for s, v in q.seeds.items() if s in c.points[0].seeds and s is not None}
    for c in curves:
        if c.arm != "base":
            first.setdefault((c.model, c.arm), c)
            first.setdefault((c.arm, c.start), c)
    for c in curves:
        if c.arm == "base" or not c.points or c.points[0].negative != 0:
            continue
        at = {q.negative for q in c.points}
        row = {"metric": metric_name, "model": c.model, "arm": c.arm, "start": c.start}
        for w in sorted({w for w in windows if w in at} | {max(at)} - {0}):
            row[f"change@{w}"] = change = changes(c, w)
            for key, ref in (("deeper", first[(c.model, c.arm)]),
                             ("model", first[(c.arm, c.start)])):
                if ref is not c and (other := changes(ref, w)):
                    row[f"{key}@{w}"] = {s: change[s] - other[s] for s in change if s in other}
        fixed = REVERT_LEVEL.get(metric_name)
        if c.arm != "from-base" and (fixed is not None or c.model in base):
            # each seed's level: the fixed one, or its own base eval's
            levels = {s: base[c.model][s] if fixed is None else fixed for s in c.points[0].seeds
                      if fixed is not None or s in base[c.model]}
            row["return"] = {s: x for s, level in levels.items()
                             if (x := crossing(c.points, s, level)) is not None}
            row["return_of"] = len(levels)
            if fixed is not None and (fb := from_base.get(c.model)):
                curve = {s: {q.negative: q.seeds[s] for q in fb.points if s in q.seeds}
                         for s in c.points[0].seeds}
                row["return_fb"] = {s: x for s, lv in curve.items()
                                    if (x := crossing(c.points, s, lv)) is not None}
        out.append(row)
    ret = lambda r: r.get("return_fb", r.get("return"))
    for r in out:   # minus the smallest start's, per seed
        low = next((o for o in out if (o["model"], o["arm"]) == (r["model"], r["arm"])), r)
        if low is not r and ret(r) is not None and ret(low) is not None:
            r["deeper-return"] = {s: x - ret(low)[s] for s, x in ret(r).items() if s in ret(low)}
    return out


def window_table(curves: list[Curve], metric_name: str, windows=WINDOWS) -> Table:
    """window_stats as a table of mean ± CI; 'resolved': a difference whose CI excludes 0."""
    stats = window_stats(curves, metric_name, windows)
    wins = sorted({int(k.split("@")[1]) for r in stats for k in r if k.startswith("change@")})
    fixed = [w for w in WINDOWS if w in wins][-1:] or wins[:1]   # the ordering test's window
    models = list(dict.fromkeys(r["model"] for r in stats))
    vs_model = [f"minus {models[0]} @{w}" for w in fixed] if len(models) > 1 else []
    fb = [f"negatives to from-base {metric_name}"] if any("return_fb" in r for r in stats) else []
    t = Table(slug("windows", metric_name), "",
              ["model", "arm", "start"] + [f"change@{w}" for w in wins] +
              [f"minus smallest start @{w}" for w in fixed] + vs_model
              + [revert_label(metric_name), "seeds reaching base"] + fb
              + ["negatives minus smallest start's"])
    ns: list = []   # (n, unit) of every mean
    cell = lambda vals, digits=3, test=False, signed=True: stat(vals, digits, test, signed, ns)
    for r in stats:
        ret = r.get("return", {})
        t.add(r["model"], r["arm"], r["start"], *[cell(r.get(f"change@{w}", {})) for w in wins],
              *[cell(r.get(f"deeper@{w}", {}), test=True) for w in fixed],
              *[cell(r.get(f"model@{w}", {}), test=True) for w in fixed if vs_model],
              cell(ret, 0, signed=False), f"{len(ret)}/{r['return_of']}" if "return" in r else None,
              *[cell(r.get("return_fb", {}), 0, signed=False) for _ in fb],
              cell(r.get("deeper-return", {}), 0, test=True))
    t.title = (f"{metric_name}: paired change from the start (after − start: a fall is negative) "
               f"after {', '.join(map(str, wins))} negative examples, the change minus the "
               f"smallest start's, and the {revert_label(metric_name)}; mean ± "
               f"{ci_label(ns or [1])}; resolved: the CI excludes 0")
    return t


def adjusted_table(curves: list[Curve], metric_name: str, windows=WINDOWS) -> Table:
    """Does a control arm fall differently from the aligned arm once the start level is accounted
    for? Per window w: ordinary least squares over every (start, seed) of an aligned (positive) arm
    and one other arm, change@w = a + b * start level + c * [other arm]; c with its 95 % t interval.
    The aligned arm is the model's own and, for every other model, also the study's first model's (a
    base pre-trained on the shifted corpus against the aligned base). Observations that share a
    chain (the starts of one seed are one nested run) or a base (several pre-training seeds) are not
    independent: the interval is cluster-robust (CR1) over those units, with units - 1 degrees of
    freedom (stats.units' unit: the base where there are several, else the seed)."""
    t = Table(slug("adjusted", metric_name),
              f"{metric_name}: start-adjusted arm effect on the paired change (OLS: change ~ start "
              "level + arm; c = the arm's change minus the aligned arm's at the same start; 95% t "
              "CI, cluster-robust over the units named, units - 1 df)",
              ["model", "arm", "vs aligned arm of", "window", "arm effect c", "start slope b", "n",
               "units"])
    obs = defaultdict(list)   # (model, arm, w) -> [(start level, change, unit)]
    unit, unit_name = unit_of({s for c in curves for q in c.points for s in q.seeds})
    for c in curves:
        at = {q.negative: q.seeds for q in c.points}
        if c.arm == "base" or 0 not in at:
            continue
        for w in windows:
            for sd in (sd for sd in at.get(w, {}) if sd in at[0]):
                obs[(c.model, c.arm, w)].append((at[0][sd], at[w][sd] - at[0][sd], unit(sd)))
    first = next((c.model for c in curves if c.arm == "positive"), "")
    pairs = [(k, k[0]) for k in obs if k[1] != "positive"] + [(k, first) for k in obs
                                                              if k[0] != first]
    for (model, arm, w), ref in sorted(pairs, key=lambda p: (natural(p[0][0]), p[0][1],
                                                             p[1] != p[0][0], p[0][2])):
        pos, other = obs.get((ref, "positive", w), []), obs[(model, arm, w)]
        rows = [(1.0, lv, 0.0, d, u) for lv, d, u in pos] + [(1.0, lv, 1.0, d, u)
                                                             for lv, d, u in other]
        groups = sorted({r[4] for r in rows}, key=str)
        n, g = len(rows), len(groups)
        if not pos or n < 5 or g < 2:
            continue
        x, y = np.array([r[:3] for r in rows]), np.array([r[3] for r in rows])
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        resid, bread = y - x @ coef, np.linalg.pinv(x.T @ x)
        meat = np.zeros((3, 3))
        for u in groups:
            idx = [i for i, r in enumerate(rows) if r[4] == u]
            score = x[idx].T @ resid[idx]
            meat += np.outer(score, score)
        cov = bread @ meat @ bread * g / (g - 1) * (n - 1) / (n - 3)
        half = t_quantile(0.95, g - 1) * math.sqrt(max(cov[2, 2], 0.0))
        t.add(model, arm, ref, w, Stat(float(coef[2]), half, g, test=True, unit=unit_name),
              Stat(float(coef[1]), None, n), n, f"{g} {unit_name}")
    return t


# -------------------------------------------------------------------------------------- claims
def claims_tables(curves_of, claims) -> list[Table]:
    """The study's claims (spec.Claim), each named with its primary statistic before the run: every
    row of that statistic at its window (each model and start of its arm) is one test of one family;
    p two-sided (or, for an equivalence claim, two one-sided tests against its bound), Holm-adjusted
    within the family. curves_of(metric) -> that metric's rebound curves. Two tables: the claims'
    verdicts, and every test."""
    verdicts = Table("claims", "Claims named in the study's config with their primary statistic; "
                     "each family Holm-corrected at 5 % (every other number of the report is "
                     "secondary)", ["claim", "primary statistic", "expects", "tests",
                                    "as expected", "opposite", "unresolved", "verdict"])
    tests = Table("claim-tests", "Every test of each claim: the statistic (mean ± 95 % CI over its "
                  "units), p, and p Holm-adjusted within the claim", ["claim", "model", "arm",
                                                                     "start", "value", "units",
                                                                     "p", "p Holm", "result"])
    for claim in claims:
        curves, w = curves_of(claim.metric), claim.window
        found: list[tuple] = []   # (model, arm, start, Stat)
        if claim.statistic == "arm-effect":
            found = [(r["model"], r["arm"], f"vs {r['vs aligned arm of']}", r["arm effect c"])
                     for r in adjusted_table(curves, claim.metric, (w,)).rows
                     if not claim.versus or r["vs aligned arm of"] == claim.versus]
        else:
            key = claim.statistic if claim.statistic == "deeper-return" else \
                f"{claim.statistic}@{w}"
            for r in window_stats(curves, claim.metric, (w,)):
                if (vals := r.get(key)) and (s := stat(vals, test=True)):
                    found.append((r["model"], r["arm"], r["start"], s))
        found = [f for f in found if (not claim.arm or f[1] == claim.arm)
                 and (not claim.model or f[0] == claim.model)]
        equiv = claim.expect == "equivalent"
        ps = [(p_equivalent(s, claim.bound) if equiv else p_value(s)) for *_, s in found]
        adjusted = holm([1.0 if p is None else p for p in ps])
        counts = {"as expected": 0, "opposite": 0, "unresolved": 0}
        for (model, arm, start, s), p, q in zip(found, ps, adjusted):
            sign = "negative" if s.mean < 0 else "positive"
            result = "unresolved" if p is None or q >= 0.05 else \
                "as expected" if equiv or sign == claim.expect else "opposite"
            counts[result] += 1
            tests.add(claim.name, model, arm, start, dataclasses.replace(s, test=False),
                      f"{s.n} {s.unit}, {max(s.n - 1, 0)} df",
                      Stat(p, digits=4, signed=False) if p is not None else None,
                      Stat(q, digits=4, signed=False), result)
        m = len(found)
        verdict = ("no test (the statistic is defined nowhere: e.g. no start reached its level)"
                   if not m else "contradicted" if counts["opposite"] else
                   "reproduced" if counts["as expected"] == m else
                   "unresolved" if not counts["as expected"] else
                   f"partly ({counts['as expected']} of {m})")
        expects = f"|effect| < {claim.bound:g}" if equiv else f"{claim.expect} sign"
        verdicts.add(claim.name, f"{claim.statistic}{f'@{w}' if w else ''} of {claim.metric}"
                     + "".join(f" ({x})" for x in (claim.model, claim.arm) if x)
                     + (f" vs {claim.versus}'s aligned arm" if claim.versus else ""), expects, m,
                     counts["as expected"], counts["opposite"], counts["unresolved"], verdict)
    return [verdicts, tests]


# ----------------------------------------------------------------------------------- Setting I
def pair_values(records, name: str) -> dict:
    """(model, from, to) -> {seed: value} of one Setting I measure: the cross run's `mean_loss`, or
    a metric of the cross run's eval."""
    out: dict = defaultdict(dict)
    for r in records:
        c = r["coords"]
        if "direction" not in c:
            continue
        if r["stage"] == "cross" and name == "mean_loss":
            v = r["data"].get("mean_loss")
        elif r["stage"] == "eval":
            v = (metric_of(r, name) or {}).get("value")
        else:
            continue
        if v is not None:
            out[(c["model"], c["from"], c["to"])][seed_of(c)] = v
    return out


def slice_pairs(values: dict):
    """(model, i, j, inverse, forward) for every model and slice pair i<j that has both directions;
    values: (model, from, to) -> {seed: value}."""
    for model in sorted({k[0] for k in values}, key=natural):
        for i, j in sorted({(k[1], k[2]) for k in values if k[0] == model and k[1] < k[2]}):
            inv, fwd = values.get((model, j, i)), values.get((model, i, j))
            if inv and fwd:
                yield model, i, j, inv, fwd


def paired_gap(fwd: dict, inv: dict, ns: list, shift=None) -> Stat | None:
    """Forward minus inverse within each seed's chain (minus shift), mean ± CI over seeds."""
    seeds = [s for s in inv if s in fwd and (shift is None or s in shift)]
    return stat({k: fwd[k] - inv[k] - (shift[k] if shift else 0.0) for k in seeds}, 4, test=True,
                ns=ns)


def level(values: dict, ns: list) -> Stat:
    """One direction's mean over seeds, its CI where there are two or more."""
    mean, half, n, unit = unit_ci(values)
    ns.append((n, unit))
    return Stat(mean, half if n > 1 else None, n, 4, signed=False, unit=unit)


def resistance_table(records):
    """Paper's Table 1: for each model and slice pair i<j, inverse (theta_j on D_i) vs forward
    (theta_i on D_j); every gap is paired by seed (forward minus inverse within each seed's chain)
    and its CI resolves the direction. The entropy-corrected gap subtracts each target's own entropy
    (its sampler's nats/token on the answers trained on): a loss is bounded below by its target's
    entropy, so the corrected gap compares the excess, KL(D || model)."""
    loss, ce = pair_values(records, "mean_loss"), pair_values(records, "bits_per_token/target")
    ce_attr = pair_values(records, "bits_per_attribute_token/target")
    ent: dict = defaultdict(dict)   # (model, slice) -> {seed: its sampler's nats/token}
    for r in records:
        c = r["coords"]
        if r["stage"] == "responses" and (m := metric_of(r, "sampler_nats_per_token/train")):
            ent[(c["model"], c["slice"])][seed_of(c)] = m["value"]
    weights = sorted({r["data"].get("loss_weighting", "token") for r in records
                      if r["stage"] == "cross"}) or ["token"]
    t = Table("resistance", f"Setting I: mean training loss ({'/'.join(weights)}-weighted, nats), "
                            "inverse vs forward (lower = easier); gaps paired by seed, forward − "
                            "inverse (> 0: inverse easier; resolved: the CI excludes 0)",
              ["model", "pair", "inverse (θj→Di)", "forward (θi→Dj)", "paired gap",
               "target entropy Di",
               "target entropy Dj", "entropy-corrected gap", "held-out bits gap",
               "attribute bits gap"])
    ns: list = []
    mean = lambda d: Stat(sum(d.values()) / len(d), None, len(d), 4, signed=False) if d else None
    for model, i, j, inv, fwd in slice_pairs(loss):
        hi, hj = ent.get((model, i), {}), ent.get((model, j), {})
        # forward's target (D_j) minus inverse's (D_i)
        dh = {s: hj[s] - hi[s] for s in hi if s in hj}
        t.add(model, f"θ{i}↔θ{j}", level(inv, ns), level(fwd, ns), paired_gap(fwd, inv, ns),
              mean(hi), mean(hj), paired_gap(fwd, inv, ns, dh) if dh else None,
              paired_gap(ce.get((model, i, j), {}), ce.get((model, j, i), {}), ns),
              paired_gap(ce_attr.get((model, i, j), {}), ce_attr.get((model, j, i), {}), ns))
    if ns:
        t.title += f"; mean ± {ci_label(ns)}"
    return t


def resistance_kl_table(records):
    """Paper's Table 2: for each model and slice pair i<j, how far training moved the model, as the
    eval's kl_to_base with the start slice as the base: KL(after || start) per response token on
    the trained model's own answers to held-out prompts. Forward (theta_i on D_j) vs inverse
    (theta_j on D_i), the gap paired by seed (forward − inverse)."""
    kl = pair_values(records, "kl_to_base")
    t = Table("resistance-kl", "", ["model", "pair", "forward (θi→Dj)", "inverse (θj→Di)",
                                    "paired gap"])
    ns: list = []
    for model, i, j, inv, fwd in slice_pairs(kl):
        t.add(model, f"θ{i}↔θ{j}", level(fwd, ns), level(inv, ns), paired_gap(fwd, inv, ns))
    t.title = ("Setting I: KL change, KL(after ‖ start slice) in nats per token on the trained "
               "model's own answers to held-out prompts, forward vs inverse; gap paired by seed, "
               "forward − inverse (> 0: forward moved the model more; resolved: the CI excludes "
               f"0); mean ± {ci_label(ns or [1])}")
    return t


def resistance_paper_table(records, task: str) -> Table:
    """Setting I in the layout of the paper's Table 1: one row per dataset and model, per slice pair
    (neighbours first, as the paper orders them) the inverse loss beside the forward one; the rows
    of the three Setting I studies stack into the paper's table."""
    rows: dict[str, dict] = defaultdict(dict)   # model -> (i, j) -> (inverse, forward)
    for model, i, j, inv, fwd in slice_pairs(pair_values(records, "mean_loss")):
        rows[model][(i, j)] = (inv, fwd)
    pairs = sorted({p for v in rows.values() for p in v}, key=lambda p: (p[1] - p[0], p))
    t = Table("resistance-paper", "", ["dataset", "model"] + [
        f"{a}→{b}" for i, j in pairs for a, b in ((f"θ{j}", f"θ{i}"), (f"θ{i}", f"θ{j}"))])
    ns: list = []
    for model, at in rows.items():
        t.add(task, model, *[level(at[p][k], ns) if p in at else None
                             for p in pairs for k in (0, 1)])
    t.title = ("Setting I in the paper's Table 1 layout: mean training loss per slice pair, inverse "
               f"(θj→θi, on D_i) beside forward (θi→θj, on D_j); mean ± {ci_label(ns or [1])}")
    return t


def kl_paper_table(curves: list[Curve]) -> Table:
    """The paper's Table 3 layout: per model, KL to the base after alignment (0 negatives) and the
    negative examples until KL to the base falls below 0.01, one column per positive volume (the
    aligned arm; means over the seeds that get there, their count beside)."""
    ret = {(r["model"], r["start"]): r for r in window_stats(curves, "kl_to_base")
           if r["arm"] == "positive"}
    starts = sorted({c.start for c in curves if c.arm == "positive"})
    t = Table("kl-paper", "", ["model", "measure"] + [str(p) for p in starts])
    ns: list = []
    for model in dict.fromkeys(c.model for c in curves if c.arm == "positive"):
        at = {c.start: c for c in curves if c.arm == "positive" and c.model == model}
        t.add(model, "KL to the base after alignment",
              *[stat(at[p].points[0].seeds, 3, signed=False, ns=ns)
                if p in at and at[p].points[0].negative == 0 else None for p in starts])
        t.add(model, revert_label("kl_to_base"),
              *[stat(ret[(model, p)].get("return", {}), 0, signed=False, ns=ns)
                if (model, p) in ret else None for p in starts])
        t.add(model, "seeds that get there",
              *[f"{len(ret[(model, p)].get('return', {}))}/{ret[(model, p)].get('return_of', 0)}"
                if (model, p) in ret else None for p in starts])
    t.title = ("The paper's Table 3 layout: KL to the base (nats/token) after alignment on each "
               "positive volume (columns), and the negative examples until it falls below 0.01 "
               f"(per seed, linear between grid points); mean ± {ci_label(ns or [1])}")
    return t


# --------------------------------------------------------------------------------------- Hooke
def compression_table(records, pretrain_sizes: dict):
    """Hooke's law as the theorem states it: under a perturbation (negative fine-tuning) the change
    of a model's compression rate on each dataset it was trained on is inversely proportional to the
    dataset's size, so |D_pre|·Δpre = |D_pos|·Δpos. Per start and negative volume: every bits/token
    change from the start, paired by seed (mean ± CI), and the two products with the ratio of their
    means. |D_pre| is the base's pre-training volume (coords pretrain_n; else its checkpoint's);
    |D_pos| the positive examples trained on: the start's volume in the aligned arm, those inside
    the pre-training corpus (world:joint) from the base itself."""
    # (model, arm, positive, negative) -> {seed: {metric: bits}}
    by: dict[tuple, dict] = defaultdict(dict)
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
    t = Table("compression", "",
              ["model", "arm", "start", "negative"] + [f"Δ {r.split('_per_')[1]}" for r in roles] +
              ["|D_pre|·Δpre", "|D_pos|·Δpos", "pre − pos", "ratio"])
    ns: list = []   # (n, unit) of every mean
    cell = lambda values, test=False: stat(values, 4, test, ns=ns)
    for key in sorted(by, key=lambda k: tuple(natural(str(x)) for x in k)):
        model, arm, p, n = key
        start = by.get((model, arm, p, 0)) or by.get((model, "base", 0, 0) if arm == "from-base"
                                                     else (), {})
        if not n or not start:   # (the from-base arm starts at the base model's own eval)
            continue
        c = info[key[:3]]
        d_pre = c.get("pretrain_n") or pretrain_sizes.get(model)
        d_pos = c.get("pretrain_positive") if arm == "from-base" else p if arm == "positive" else None
        seeds = [s for s in by[key] if s in start]
        delta = {r: {s: by[key][s][r] - start[s][r] for s in seeds if r in by[key][s]
                     and r in start[s]}
                 for r in roles}
        row = [model, arm, p, n] + [cell(delta[r]) for r in roles]
        pre, pos = delta.get("bits_per_token/pretrain", {}), delta.get("bits_per_token/positive",
                                                                       {})
        if d_pre and d_pos and pre and pos:
            a = {s: d_pre * pre[s] for s in pre if s in pos}
            b = {s: d_pos * pos[s] for s in a}
            ratio = sum(a.values()) / sum(b.values()) if sum(b.values()) else None
            row += [cell(a), cell(b), cell({s: a[s] - b[s] for s in a}, test=True),
                    Stat(ratio, None, len(a), signed=False) if ratio is not None else None]
        else:
            row += [None] * 4
        t.add(*row)
    t.title = ("Compression (bits/token) under negative fine-tuning: each change from the start, "
               "paired by seed, and the Hooke products |D|·Δ (equal in the theorem; their paired "
               "difference, resolved where its CI excludes 0, and the ratio of their means); mean "
               f"± {ci_label(ns or [1])}")
    return t


# -------------------------------------------------------------------------- the paper's numbers
PAPER_NUMBERS = Path(__file__).resolve().parent / "paper_numbers.yaml"
COORDS = ("arm", "positive", "negative", "from", "to")


def paper_table(records, task: str, models: dict[str, str]) -> Table:
    """The paper's printed numbers (eval/paper_numbers.yaml) beside ours at the same coordinates,
    for the study's task and the models it ran (`models`: label -> hub id; matched by hub id). A
    number the paper gives without a start volume is compared with every start the study has; ours
    is the mean over seeds with its 95 % interval, empty where the study has no such cell."""
    entries = yaml.safe_load(PAPER_NUMBERS.read_text()) or []
    t = Table("paper", "",
              ["source", "model", "arm", "start", "negative", "slices", "metric", "paper", "ours"])
    ns: list = []   # (n, unit) of every mean
    reverts: dict[str, dict] = {}   # metric -> (model, arm, start) -> {seed: negatives to revert}
    for e in entries:
        if e["task"] != task:
            continue
        if e.get("statistic") == "revert":   # a number of the curves, not of one cell
            if e["metric"] not in reverts:
                rows = window_stats(rebound_tables(records, e["metric"])[1], e["metric"])
                reverts[e["metric"]] = {(r["model"], r["arm"], r["start"]): r.get("return")
                                        for r in rows}
            for model in sorted((m for m, h in models.items() if h == e["model"]), key=natural):
                got = reverts[e["metric"]].get((model, e["arm"], e["positive"]))
                t.add(e["source"], model, e["arm"], e["positive"], "", "",
                      revert_label(e["metric"]), e["paper"],
                      stat(got, 0, signed=False, ns=ns) if got else None)
            continue
        for model in sorted((m for m, h in models.items() if h == e["model"]), key=natural):
            # the coordinates the entry leaves open -> {seed: value}
            values: dict[tuple, dict] = defaultdict(dict)
            for r in records:
                c = r["coords"]
                if r["stage"] != e.get("stage", "eval") or c.get("model") != model or \
                        any(c.get(k) != e[k] for k in COORDS if k in e):
                    continue
                v = r["data"].get(e["metric"]) if r["stage"] == "cross" else (metric_of(r, e["metric"]) or {}).get(
                    "value")
                if isinstance(v, (int, float)):
                    values[tuple(c.get(k) for k in COORDS)][seed_of(c)] = v
            keys = sorted(values, key=lambda k: tuple(natural(str(x)) for x in k))
            found: list[tuple | None] = list(keys)
            for coords in found or [None]:
                at = dict(zip(COORDS, coords)) if coords is not None else e
                s = stat(values[coords], 4, signed=False, ns=ns) if coords else None
                slices = f"θ{at['from']}→D{at['to']}" if at.get("from") is not None else ""
                t.add(e["source"], model, at.get("arm"), at.get("positive"), at.get("negative"),
                      slices, e["metric"], e["paper"], s)
    t.title = (f"The paper's numbers ({task}) beside this study's at the same coordinates; ours: "
               f"mean ± {ci_label(ns or [1])}, empty where the study has no such cell; the paper "
               "reports no seeds or intervals")
    return t
