"""The serving trade-off in one picture: quality against bytes per vector (every model, head and precision of the
precision table) and, given a speed table from benchmarks/serving_bench.py, quality against sentences per second,
each panel with its Pareto front marked (the points no other point beats on both axes at once)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from jasper.core.tables import ResultRow
from jasper.evaluation.precision import PrecisionRow

MARKERS = {"float32": "o", "int8": "s", "ubinary": "^"}


def _name(model: str, head: str) -> str:
    return f"{model}/{head}" if head else model


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the ``(cost, quality)`` points on the front: no other point costs as little or less and scores as
    well or better, one of them strictly. Sorted by cost.

    >>> pareto_front([(1, 0.5), (2, 0.4), (4, 0.8), (4, 0.7), (8, 0.8)])
    [0, 2]
    """
    front = []
    for i, (cost, quality) in enumerate(points):
        beaten = any(
            c <= cost and q >= quality and (c < cost or q > quality)
            for j, (c, q) in enumerate(points)
            if j != i
        )
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def speed_points(pcfg: Mapping, rows: Sequence[ResultRow], metric: str) -> list[tuple[str, float, float]]:
    """``(label, sentences/s, quality)`` for every row of the speed table that ``pareto.match`` pairs with a model
    of the table (``[[BENCH ROW NAME, MODEL/HEAD], ...]``), at ``pareto.texts`` and ``pareto.batch``."""
    table = json.loads(Path(pcfg["speed"]).read_text())
    rates = {
        r["model"]: r["sentences_per_s"]
        for r in table["rows"]
        if r["texts"] == pcfg.get("texts", "short") and int(r["batch"]) == int(pcfg.get("batch", 32))
    }
    quality = {f"{r.model}/{r.head}": r.metrics.get(metric) for r in rows}
    points = []
    for bench, name in pcfg.get("match") or []:
        if bench not in rates or name not in quality:
            raise KeyError(
                f"eval.pareto.match: {bench!r} -> {name!r}: the speed table has {sorted(rates)}, the results "
                f"{sorted(quality)}"
            )
        if quality[name] is not None:
            points.append((name, rates[bench], quality[name]))
    return points


def _panel(
    ax, points: list[tuple[str, float, float]], xlabel: str, metric: str, styles: Sequence[tuple]
) -> None:
    """Every point in its model's colour and its precision's marker; the front outlined and its points named."""
    front = pareto_front([(-x if xlabel.startswith("sentences") else x, y) for _, x, y in points])
    for (_, x, y), (color, marker) in zip(points, styles, strict=True):
        ax.scatter(x, y, marker=marker, color=color, s=28, alpha=0.85)
    for i in front:
        label, x, y = points[i]
        ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    on_front = sorted((points[i][1], points[i][2]) for i in front)
    ax.plot([x for x, _ in on_front], [y for _, y in on_front], color="black", lw=1)
    ax.scatter(*zip(*on_front, strict=True), s=90, facecolors="none", edgecolors="black")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_title(metric, fontsize=9)
    ax.grid(alpha=0.3)


def plot_tradeoffs(
    precision: Sequence[PrecisionRow],
    rows: Sequence[ResultRow],
    path: Path,
    metrics: Sequence[str] | None = None,
    pcfg: Mapping | None = None,
) -> Path:
    """PNG: per metric, quality vs bytes per vector (every model/head/precision; marker by precision) and, with
    ``pcfg["speed"]``, quality (float32) vs sentences per second; the Pareto front outlined in black."""
    # matplotlib: heavy, and only the figure needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    metrics = list(metrics or dict.fromkeys(k for r in precision for k in r.metrics))
    speed = bool(pcfg and pcfg.get("speed"))
    fig = Figure(figsize=(5 * len(metrics), 4.2 * (2 if speed else 1)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if speed else 1, len(metrics), squeeze=False)
    models = list(dict.fromkeys([r.model for r in precision] + [r.model for r in rows]))
    colors = {m: f"C{i % 10}" for i, m in enumerate(models)}
    for col, metric in enumerate(metrics):
        kept = [r for r in precision if metric in r.metrics]
        points = [
            (_name(r.model, r.head) + f" {r.precision}", float(r.bytes), r.metrics[metric]) for r in kept
        ]
        styles = [(colors[r.model], MARKERS[r.precision]) for r in kept]
        _panel(axes[0][col], points, "bytes per vector", metric, styles)
        if speed:
            found = speed_points(pcfg, rows, metric)
            styles = [(colors.get(label.split("/")[0], "gray"), "o") for label, _, _ in found]
            _panel(axes[1][col], found, "sentences per second", metric, styles)
    handles = [Line2D([], [], ls="", marker="o", color=c, label=m) for m, c in colors.items()]
    handles += [Line2D([], [], ls="", marker=k, color="gray", label=p) for p, k in MARKERS.items()]
    handles.append(Line2D([], [], ls="", marker="o", ms=10, mfc="none", mec="black", label="Pareto front"))
    axes[0][-1].legend(handles=handles, fontsize="x-small")
    axes[0][0].set_ylabel("score")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path
