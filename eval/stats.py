"""The collector's statistics: exact Student-t quantiles, means over seeds with 95 % intervals, and
`Stat`, the number every table cell holds until a writer renders it (eval/tables.py). No scipy, no
numpy.

    from eval.stats import mean_ci, stat
    stat([0.51, 0.55, 0.49])      # Stat(mean=0.5166..., half=0.0758..., n=3)
    stat({(1, 42): 0.5, (1, 43): 0.6, (2, 42): 0.4, (2, 43): 0.3})   # over 2 bases: n=2
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass


def t_within(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df, exact (the closed form for integer df)."""
    th = math.atan(t / math.sqrt(df))
    c2, term, total = math.cos(th) ** 2, 1.0, 1.0
    # odd df: 1 + 2/3 c2 + 2*4/(3*5) c2^2 ...; even: 1 + 1/2 c2 ...
    for k in range(1 + df % 2, df - 1, 2):
        term *= c2 * k / (k + 1)
        total += term
    if df % 2:
        return 2 / math.pi * (th + (math.sin(th) * math.cos(th) * total if df > 1 else 0.0))
    return math.sin(th) * total


@functools.lru_cache(maxsize=None)   # a handful of (p, df) pairs per study, asked thousands of times
def t_quantile(p: float, df: int) -> float:
    """The Student-t quantile t with P(|T| < t) = p (two-sided: p = 0.95 gives the 97.5 % point) for
    integer df: t_within inverted by bisection."""
    lo, hi = 0.0, 1e7
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_within(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


Z95 = 1.959963984540054   # the normal 97.5 % point


def mean_ci(values: list[float], stderr_one: float | None = None) -> tuple[float, float, int]:
    """Mean and 95 % half-width over independent units; with one, the normal 97.5 % point x the
    cell's own standard error."""
    n = len(values)
    m = sum(values) / n
    if n == 1:
        return m, Z95 * (stderr_one or 0.0), 1
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, t_quantile(0.95, n - 1) * sd / math.sqrt(n), n


def unit_of(keys) -> tuple:
    """The independent unit of chains keyed by records.seed_of: (chain key -> its unit, 'seeds' |
    'bases'). The seed; or, where the chains sit inside two or more pre-training seeds ((pretrain
    seed, seed) keys), the base (alignment seeds of one base share it: not independent)."""
    keys = list(keys)
    if keys and all(isinstance(k, tuple) for k in keys) and len({k[0] for k in keys}) > 1:
        return (lambda k: k[0]), "bases"
    return (lambda k: k), "seeds"


def units(values: dict) -> tuple[list[float], str]:
    """What a mean and its interval are over: per-chain values averaged within each unit."""
    key, unit = unit_of(values)
    if unit == "seeds":
        return list(values.values()), unit
    groups: dict = {}
    for k, v in values.items():
        groups.setdefault(key(k), []).append(v)
    return [sum(v) / len(v) for v in groups.values()], unit


def unit_ci(values: dict, stderr_one: float | None = None) -> tuple[float, float, int, str]:
    """mean_ci over units(values): (mean, half-width, n units, 'seeds' | 'bases')."""
    vals, unit = units(values)
    return (*mean_ci(vals, stderr_one), unit)


@dataclass(frozen=True)
class Stat:
    """One number of a table: a mean over n units (seeds, or bases: stats.units) with its 95 %
    half-width (None: no interval, e.g. one seed of a paired statistic, or a plain number), and how
    it prints: `digits` decimals, a sign when `signed`, and the word 'resolved' when `test` and the
    interval excludes 0."""
    mean: float
    half: float | None = None
    n: int = 1
    digits: int = 3
    signed: bool = True
    test: bool = False
    unit: str = "seeds"

    @property
    def resolved(self) -> bool | None:
        """Whether the 95 % interval excludes 0 (None without an interval)."""
        return None if self.half is None else abs(self.mean) > self.half

    def number(self, value: float) -> str:
        return f"{value:{'+' if self.signed else ''}.{self.digits}f}"

    def text(self) -> str:
        if self.half is None:
            return self.number(self.mean)
        return f"{self.number(self.mean)} ± {self.half:.{self.digits}f}" + (" resolved" if self.test
                                                                            and
                                                                              self.resolved else "")


def stat(values, digits: int = 3, test: bool = False, signed: bool = True,
         ns: list | None = None) -> Stat | None:
    """The Stat of paired per-chain values: a dict keyed by records.seed_of (its mean and interval
    over stats.units) or a list of independent values; None when there are none; one unit has no
    interval. ns: a table's (n, unit) list (for its title's interval label) that this one joins."""
    if not values:
        return None
    vals, unit = units(values) if isinstance(values, dict) else (list(values), "seeds")
    m, half, n = mean_ci(vals)
    if ns is not None:
        ns.append((n, unit))
    return Stat(m, half if n > 1 else None, n, digits, signed, test, unit)


def _se_df(s: Stat) -> tuple[float, int] | None:
    """A Stat's standard error and df, from its half-width (t 95 % with n - 1 df)."""
    if s.half is None or s.n < 2:
        return None
    return s.half / t_quantile(0.95, s.n - 1), s.n - 1


def p_value(s: Stat) -> float | None:
    """Two-sided p of 'the mean is 0' (None without an interval)."""
    if (sd := _se_df(s)) is None:
        return None
    se, df = sd
    return (0.0 if s.mean else 1.0) if se == 0 else 1.0 - t_within(abs(s.mean) / se, df)


def p_equivalent(s: Stat, bound: float) -> float | None:
    """p of 'the effect is at least `bound` in size' (two one-sided t tests; small p: |mean| <
    bound is shown, the 90 % interval inside ±bound)."""
    if (sd := _se_df(s)) is None:
        return None
    se, df = sd
    if se == 0:
        return 0.0 if abs(s.mean) < bound else 1.0
    below = lambda t: 0.5 + math.copysign(t_within(abs(t), df), t) / 2   # P(T < t)
    return max(1.0 - below((s.mean + bound) / se), below((s.mean - bound) / se))


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values of one family (their order kept)."""
    out, running = [1.0] * len(ps), 0.0
    for rank, i in enumerate(sorted(range(len(ps)), key=ps.__getitem__)):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def ci_kind(n: int, unit: str = "seeds") -> str:
    """The interval of a mean over n units, with its degrees of freedom."""
    if n <= 1:
        return "normal 95% from the cell's standard error (1 seed)"
    return f"t 95% over {n} {unit}, {n - 1} df" + (" (each base: the mean of its alignment seeds)"
                                                   if unit == "bases" else "")


def ci_label(ns) -> str:
    """The interval of a table's 'mean ± half-width'; ns: each mean's (n, unit) (or n: seeds)."""
    ns = sorted({(n, "seeds") if isinstance(n, int) else tuple(n) for n in ns})
    if len(ns) == 1:
        return ci_kind(*ns[0])
    kinds = sorted({u for n, u in ns if n > 1}) or ["seeds"]
    lo, hi = ns[0][0], ns[-1][0]
    return (f"95% CI over {lo}-{hi} {' or '.join(kinds)} (t, n - 1 df; normal from the cell's "
            "error where 1)" + ("; each base: the mean of its alignment seeds"
                                if "bases" in kinds else ""))


def natural(name) -> list:
    """Sort key reading numbers as numbers: toy-5k < toy-10k < toy-20k, tinyllama-2T < 2.5T < 3T."""
    return [(0, float(t)) if t[0].isdigit() else (1, t) for t in re.findall(r"\d+(?:\.\d+)?|\D+",
                                                                            str(name))]
