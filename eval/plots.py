"""The report's plots (PNG and PDF): rebound curves with their 95 % bands, and Setting I's inverse
vs forward losses. matplotlib is imported inside each function, so that reading and tabling never
pay for it.

    from eval.plots import plot_rebound
    plot_rebound({"positive_rate": curves}, Path("runs/x/report/rebound"))
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # files only, on any node: no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from eval.analysis import Curve, base_level
from eval.stats import ci_label
from eval.tables import Table


FORMATS = (".png", ".pdf")


def _save(fig, out: Path, formats=FORMATS, tight: bool = True) -> list[Path]:
    """The figure in each format (PNG, PDF), each written to a temp name and renamed. tight=False
    keeps the figure's own margins (tight_layout renders the figure once more to measure it: a
    third of the collector's time, bench P5)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    paths = [out.with_suffix(f) for f in formats]
    for p in paths:
        tmp = p.with_name(f".{p.stem}.tmp{p.suffix}")
        # PNG at zlib level 1: the demo's plot 8 % larger, encoded faster (bench P5)
        fig.savefig(tmp, **({"pil_kwargs": {"compress_level": 1}} if p.suffix == ".png" else {}))
        os.replace(tmp, p)
    plt.close(fig)
    return paths


def plot_rebound(panels: dict[str, list[Curve]], out: Path, formats=FORMATS) -> list[Path]:
    """One figure: a row per model, a column per metric of `panels` (the probability and, beside it,
    the log-odds of the same rate). x is symmetric-log so that the aligned start sits at 0 negative
    examples; bands are the tables' 95 % CIs, labelled with their kind and number of seeds; the base
    model's level is a labelled line."""
    names = list(panels)
    first = panels[names[0]]
    # the tables' order: by size label, then name
    models = list(dict.fromkeys(c.model for c in first))
    if not models:
        return []
    width, height = 5.0 * len(names), 3.6 * len(models)
    fig, axes = plt.subplots(len(models), len(names), figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=0.5 / height,
                        top=1 - 0.35 / height, wspace=1.0 / (5 - 1.0), hspace=0.9 / 3.6)
    cmap = plt.get_cmap("viridis")
    for i, model in enumerate(models):
        for j, name in enumerate(names):
            ax, curves = axes[i][j], panels[name]
            mine = [c for c in curves if c.model == model]
            vols = sorted({c.start for c in mine if c.arm != "base"})
            negs = sorted({q.negative for c in mine for q in c.points})
            seeds = [(q.n, q.unit) for c in mine for q in c.points]
            for c in mine:   # arms and start volumes in the tables' order
                if c.arm == "base":
                    continue
                x, y, ci = [q.negative for q in c.points], [q.mean for q in c.points], [q.half for q in c.points]
                color = cmap(vols.index(c.start) / max(1, len(vols) - 1))
                ax.plot(x, y, "-" if c.arm == "positive" else ":", marker="o", color=color,
                        label=f"{c.arm} {c.start}")
                ax.fill_between(x, [a - b for a, b in zip(y, ci)], [a + b for a, b in zip(y, ci)],
                                color=color, alpha=0.15)
            if (level := base_level(mine, model)) is not None:
                ax.axhline(level, ls="--", color="gray", label="base model")
            small = min((n for n in negs if n > 0), default=1)
            ax.set_xscale("symlog", linthresh=small, linscale=0.5)
            ax.set_xlim(left=0)
            # a tick at every volume measured, 0 included; a label on at most 9 of them (more
            # overlap, and text is most of the drawing time)
            every = -(-len(negs) // 9)
            ax.set_xticks(negs, [str(n) if k % every == 0 else "" for k, n in enumerate(negs)],
                          fontsize=7)
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xlabel("negative examples")
            ax.set_ylabel(name)
            ax.set_title(f"{model}: {name}", fontsize=9)
            if i == 0:
                ax.legend(fontsize=6, title=f"bands: {ci_label(seeds or [(0, 'seeds')])}", title_fontsize=6)
    return _save(fig, out, formats, tight=False)


def plot_resistance(t: Table, out: Path, formats=FORMATS) -> list[Path]:
    """Setting I: inverse and forward mean training loss per model and slice pair."""
    if not t.rows:
        return []
    labels = [f"{r['model']} {r['pair']}" for r in t.rows]
    inv = [r["inverse (θj→Di)"].mean for r in t.rows]
    fwd = [r["forward (θi→Dj)"].mean for r in t.rows]
    fig, ax = plt.subplots(figsize=(max(5, len(labels)), 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], inv, 0.4, label="inverse")
    ax.bar([x + 0.2 for x in xs], fwd, 0.4, label="forward")
    ax.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean training loss")
    ax.legend()
    return _save(fig, out, formats)
