"""Report tables: rows keyed by column name, cells kept as numbers (`eval.stats.Stat`, int, float)
or text until a writer renders them as Markdown, LaTeX, CSV or a terminal table.

CSV keeps numbers as numbers: a column of Stat cells becomes `<column>` (the mean), `<column> ±`
(the 95 % half-width) and `<column> n` (seeds) where the column has intervals.

    t = Table("windows", "drops", ["model", "change@25"]); t.add("m", Stat(-0.1, 0.02, 3))
    t.markdown(); t.csv(); t.latex()
"""
from __future__ import annotations

import csv
import io

from eval.stats import Stat


def text(value) -> str:
    """A cell as the Markdown, LaTeX and terminal tables print it."""
    if value is None:
        return ""
    if isinstance(value, Stat):
        return value.text()
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


class Table:
    """A titled table; `name` is its file name under report/tables/ (<name>.csv)."""

    def __init__(self, name: str, title: str, columns: list[str]):
        self.name, self.title, self.columns = name, title, list(columns)
        self.rows: list[dict] = []

    def add(self, *values) -> dict:
        """Append one row, its values in column order."""
        if len(values) != len(self.columns):
            raise ValueError(f"{self.name}: {len(values)} values for {len(self.columns)} columns")
        row = dict(zip(self.columns, values))
        self.rows.append(row)
        return row

    def column(self, name: str) -> list:
        return [r.get(name) for r in self.rows]

    def texts(self) -> list[list[str]]:
        return [[text(r.get(c)) for c in self.columns] for r in self.rows]

    def markdown(self) -> str:
        cell = lambda c: str(c).replace("|", "\\|")   # a pipe in a cell (|D|·Δ) would split it
        lines = [f"### {self.title}", "", "| " + " | ".join(map(cell, self.columns)) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(map(cell, r)) + " |" for r in self.texts()]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        esc = latex_escape
        lines = [r"\begin{table}[t]", r"\centering",
                 r"\begin{tabular}{l" + "r" * (len(self.columns) - 1) + "}",
                 r"\toprule", " & ".join(esc(h) for h in self.columns) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) for c in r) + r" \\" for r in self.texts()]
        lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + esc(self.title) + "}",
                  r"\end{table}"]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """One header line and numbers as numbers (full precision); see the module's docstring."""
        spread = {c for c in self.columns
                  if any(isinstance(v, Stat) and v.half is not None for v in self.column(c))}
        header = [h for c in self.columns
                  for h in ([c, f"{c} ±", f"{c} n"] if c in spread else [c])]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for r in self.rows:
            out = []
            for c in self.columns:
                v = r.get(c)
                if isinstance(v, Stat):
                    out += [repr(v.mean)] + ([("" if v.half is None else repr(v.half)), v.n]
                                             if c in spread else [])
                else:
                    out += [repr(v) if isinstance(v, float) else "" if v is None else v] + \
                        (["", ""] if c in spread else [])
            w.writerow(out)
        return buf.getvalue()

    def compact(self) -> list["Table"]:
        """Two tables, means then 95 % half-widths, for narrow terminals (self if no intervals)."""
        if not any(isinstance(v, Stat) and v.half is not None for r in self.rows
                   for v in r.values()):
            return [self]
        means = Table(self.name, f"{self.title}. Means:", self.columns)
        halves = Table(self.name, "CI half-widths (±):", self.columns)
        for r in self.rows:
            means.rows.append({c: Stat(v.mean, None, v.n, v.digits, v.signed) if isinstance(v, Stat)
                               else v
                               for c, v in r.items()})
            halves.rows.append({c: (f"{v.half:.{v.digits}f}" if v.half is not None else "")
                                if isinstance(v, Stat) else (v if k == 0 else "")
                                for k, (c, v) in enumerate(r.items())})
        return [means, halves]


LATEX = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
         "%": r"\%",
         "_": r"\_", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}", "<": r"\textless{}",
         ">": r"\textgreater{}",
         "|": r"\textbar{}", "±": r"$\pm$", "θ": r"$\theta$", "→": r"$\rightarrow$",
         "↔": r"$\leftrightarrow$", "−": r"$-$", "·": r"$\cdot$", "Δ": r"$\Delta$"}


def latex_escape(value) -> str:
    """Text as LaTeX typesets it: LaTeX's special characters escaped, the table symbols as math."""
    return "".join(LATEX.get(c, c) for c in str(value))
