"""Result reporting: JSON file, markdown table (rows = model/head, columns = metrics), score-vs-dimension plot."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class ResultRow:
    """Scores of one model (or one head of it): e.g. ResultRow("student", "fc2", 1024, {"stsb-dev": 0.85})."""

    model: str
    head: str = ""
    dim: int | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.model}/{self.head}" if self.head else self.model


def save_json(rows: Sequence[ResultRow], path: str | Path) -> Path:
    """Write rows as a JSON list of {"model", "head", "dim", "metrics"} (NaN is written as null)."""

    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [{**asdict(r), "metrics": {k: clean(v) for k, v in r.metrics.items()}} for r in rows]
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def load_json(path: str | Path) -> list[ResultRow]:
    """Read rows written by `save_json`."""
    return [ResultRow(**row) for row in json.loads(Path(path).read_text(encoding="utf-8"))]


def metric_names(rows: Iterable[ResultRow]) -> list[str]:
    """All metric names, in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r.metrics))


def markdown_table(rows: Sequence[ResultRow], digits: int = 4) -> str:
    """GitHub markdown table: one row per model/head, a `dim` column, then one column per metric ("-" = absent)."""
    names = metric_names(rows)
    header = ["model", "dim", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r.name, "-" if r.dim is None else str(r.dim)]
        for n in names:
            v = r.metrics.get(n)
            cells.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_vs_dim(rows: Sequence[ResultRow], path: str | Path, metrics: Sequence[str] | None = None) -> Path:
    """PNG with one panel per metric: score against head dimension, one line per model (rows without `dim` are
    left out). Uses matplotlib's Agg canvas directly, so it never touches the global backend or a display."""
    # matplotlib: heavy, and only the plot needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in rows if r.dim is not None]
    if not rows:
        raise ValueError("plot_vs_dim: no row has a head dimension")
    metrics = list(metrics) if metrics is not None else metric_names(rows)
    fig = Figure(figsize=(4.5 * len(metrics), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    models = list(dict.fromkeys(r.model for r in rows))
    for ax, metric in zip(axes, metrics, strict=True):
        for model in models:
            pts = sorted(
                (r.dim, r.metrics[metric])
                for r in rows
                if r.model == model and r.metrics.get(metric) is not None
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=model)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("head dimension")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score")
    axes[-1].legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def write_report(rows: Sequence[ResultRow], out_dir: str | Path, stem: str = "results") -> dict[str, Path]:
    """Write `<stem>.json`, `<stem>.md` and (when any row has a dim) `<stem>.png` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": save_json(rows, out_dir / f"{stem}.json")}
    paths["markdown"] = out_dir / f"{stem}.md"
    paths["markdown"].write_text(markdown_table(rows), encoding="utf-8")
    if any(r.dim is not None for r in rows):
        paths["png"] = plot_vs_dim(rows, out_dir / f"{stem}.png")
    return paths
