"""The collector's statistics: exact Student-t quantiles, means over seeds with 95 % intervals, and
`Stat`, the number every table cell holds until a writer renders it (eval/tables.py). No scipy, no
numpy.

    from eval.stats import mean_ci, stat
    stat([0.51, 0.55, 0.49])      # Stat(mean=0.5166..., half=0.0758..., n=3)
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass


@functools.lru_cache(maxsize=None)   # a handful of (p, df) pairs per study, asked thousands of times
def t_quantile(p: float, df: int) -> float:
    """The Student-t quantile t with P(|T| < t) = p (two-sided: p = 0.95 gives the 97.5 % point) for
    integer df, exact: the t distribution's closed form for integer df, inverted by bisection."""
    def inside(t):
        th = math.atan(t / math.sqrt(df))
        c2, term, total = math.cos(th) ** 2, 1.0, 1.0
        # odd df: 1 + 2/3 c2 + 2*4/(3*5) c2^2 ...; even: 1 + 1/2 c2 ...
        for k in range(1 + df % 2, df - 1, 2):
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


def mean_ci(values: list[float], stderr_one: float | None = None) -> tuple[float, float, int]:
    """Mean and 95 % half-width over seeds; with one seed, the normal 97.5 % point x the cell's own
    standard error."""
    n = len(values)
    m = sum(values) / n
    if n == 1:
        return m, Z95 * (stderr_one or 0.0), 1
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, t_quantile(0.95, n - 1) * sd / math.sqrt(n), n


@dataclass(frozen=True)
class Stat:
    """One number of a table: a mean over n seeds with its 95 % half-width (None: no interval, e.g.
    one seed of a paired statistic, or a plain number), and how it prints: `digits` decimals, a sign
    when `signed`, and the word 'resolved' when `test` and the interval excludes 0."""
    mean: float
    half: float | None = None
    n: int = 1
    digits: int = 3
    signed: bool = True
    test: bool = False

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
    """The Stat of paired per-seed values (a dict or a list; None when there are none); one value
    has no interval. ns: a table's list of seed counts (for its title's interval label), which this
    one's n joins."""
    values = list(values.values()) if isinstance(values, dict) else list(values)
    if not values:
        return None
    m, half, n = mean_ci(values)
    if ns is not None:
        ns.append(n)
    return Stat(m, half if n > 1 else None, n, digits, signed, test)


def ci_kind(n_seeds: int) -> str:
    return (f"t 95% over {n_seeds} seeds" if n_seeds > 1 else
            "normal 95% from the cell's standard error (1 seed)")


def ci_label(ns) -> str:
    """The interval every 'mean ± half-width' of a table is, with its n (seeds)."""
    ns = sorted(set(ns))
    if len(ns) == 1:
        return ci_kind(ns[0])
    return f"95% CI over {ns[0]}-{ns[-1]} seeds (t; normal from the cell's error where 1)"


def natural(name) -> list:
    """Sort key that reads numbers as numbers: toy-5k < toy-10k < toy-20k, tinyllama-2T < 2.5T < 3T.
    """
    return [(0, float(t)) if t[0].isdigit() else (1, t) for t in re.findall(r"\d+(?:\.\d+)?|\D+",
                                                                            str(name))]
