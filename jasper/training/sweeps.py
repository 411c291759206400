"""Hydra multiruns: readable job folders, which stage a swept job starts from, each job's final metrics, and the
summary of a whole sweep (``sweep_summary.md``, ``.csv`` and ``.png`` in the sweep folder).

A job's folder is ``<run_dir>/<its overrides, readable>/stage<k>`` (``mrl_dims=128,64/stage3``), so the stages of one
combination chain beside each other. A stage-k job with no stage k-1 beside it starts from the run's own
``<run_dir>/stage<k-1>`` when its overrides change no stage below k (`first_stage_changed`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from jasper.storage.checkpoints import stage_folder, stage_number

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
ITEM_SEP = "__"  # hydra.job.config.override_dirname.item_sep in conf/train.yaml: values hold commas, keys "+"
FOLDER_SEP = "+"  # between the overrides of a folder name
MAX_NAME = 100
UNSAFE = re.compile(r"[\[\]{}()'\" ]")  # dropped from override values in folder names
NEUTRAL = (
    "paths.",
    "callbacks.",
    "logger.",
    "hydra.",
)  # where things are written and logged: no stage's weights


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def readable_subdir(override_dirname: str, stage: int) -> str:
    """A multirun job's folder: ``stage<k>`` under its other overrides written short (``mrl_dims=128,64``; the
    last part of each key, the whole key when two would read alike), or under a hash of them when too long.
    ``paths.*`` are left out: they say where the run is, and a job's folder named after its own cache folder
    (``cache_dir=outputs-cache/stage1``) would move it whenever the cache moves."""
    items = [item.partition("=")[::2] for item in override_dirname.split(ITEM_SEP) if item]
    items = [(key, value) for key, value in items if not key.lstrip("+~").startswith("paths.")]
    if not items:
        return stage_folder(stage)
    short = [key.split(".")[-1] for key, _ in items]
    parts = []
    for (key, value), name in zip(items, short, strict=True):
        name = key if short.count(name) > 1 else name
        clean = UNSAFE.sub("", value).replace("/", "-")
        parts.append(f"{name.lstrip('+~')}={clean}" if clean else name.lstrip("+~"))
    folder = FOLDER_SEP.join(parts)
    if len(folder) > MAX_NAME:
        digest = hashlib.sha1(ITEM_SEP.join(f"{k}={v}" for k, v in items).encode()).hexdigest()[:8]
        folder = f"{folder[: MAX_NAME - 9]}-{digest}"
    return f"{folder}/{stage_folder(stage)}"


def first_stage_changed(
    overrides: Sequence[str], excluded: Sequence[str] = (), first_uses: Mapping[str, int] | None = None
) -> int:
    """The first stage a job's overrides change: ``stages.stageN.*`` changes stage N, a key of ``first_uses`` the
    stage that first uses it (each stage's ``first_uses`` in conf/stages/: the MRL head keys, stage 3), anything
    else every stage (1). Keys in ``excluded`` (``stage``, ``run_name``, ...) and under `NEUTRAL` (``paths.*``, ...)
    change no stage's weights. With no overrides: a large number."""
    first_uses = first_uses or {}
    first = math.inf
    for override in overrides:
        key = _key(override)
        if key in excluded or key.startswith(NEUTRAL):
            continue
        parts = key.split(".")
        stage = stage_number(parts[1]) if parts[0] == "stages" and len(parts) > 2 else None
        first = min(first, stage or first_uses.get(key, 1))
    return int(first) if first != math.inf else 10**6


def stage_batches(jobs: Sequence[Sequence[str]]) -> list[list[int]]:
    """The jobs of one launch (each its overrides) grouped by their ``stage=`` value, lowest stage first, as indices
    into ``jobs`` in their order; jobs that name no stage form one group. A launcher that runs a group's jobs at
    once launches the groups one after another, so every stage-k job starts after every stage k-1 has finished
    (Hydra's basic launcher gets the same by running one job at a time)."""
    groups: dict[str, list[int]] = {}
    for index, job in enumerate(jobs):
        stage = next((o.split("=", 1)[1] for o in job if _key(o) == "stage"), "")
        groups.setdefault(stage, []).append(index)
    return [groups[stage] for stage in sorted(groups, key=_sort_key)]


def write_job_metrics(
    path: str | Path, optimized_metric: str, metrics: Mapping[str, Any], **info: Any
) -> Path:
    """``metrics.json`` of one job: the value of ``optimized_metric``, every final metric, and ``info``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    floats = {k: float(v) for k, v in metrics.items()}
    payload = {
        "optimized_metric": optimized_metric,
        "value": floats.get(optimized_metric),
        "metrics": floats,
        **info,
    }
    path.write_text(json.dumps(payload, indent=1, sort_keys=True))
    return path


def collect(sweep_dir: str | Path, since: float = 0.0) -> list[dict]:
    """Every job's ``metrics.json`` under ``sweep_dir`` written after ``since`` (a time stamp: this sweep's jobs,
    not earlier runs in the same folder), with its folder (relative) as ``job``."""
    sweep_dir = Path(sweep_dir)
    jobs = []
    for path in sorted(sweep_dir.glob(f"**/{METRICS_FILE}")):
        if path.stat().st_mtime < since:
            continue
        job = json.loads(path.read_text())
        job["job"] = str(path.parent.relative_to(sweep_dir))
        jobs.append(job)
    return jobs


def swept(jobs: Sequence[Mapping]) -> dict[str, list[str]]:
    """The parameters that differ between jobs: ``{key: [each job's value]}`` (``-`` where a job lacks it)."""
    values = [dict(o.split("=", 1) for o in job.get("overrides", []) if "=" in o) for job in jobs]
    keys = sorted({k for v in values for k in v})
    columns = {k: [v.get(k, "-") for v in values] for k in keys}
    return {k: c for k, c in columns.items() if len(set(c)) > 1}


def summarise(sweep_dir: str | Path, maximize: bool = True, since: float = 0.0) -> dict[str, Path] | None:
    """Rank the sweep's jobs (see `collect`) by their optimised metric; write ``sweep_summary.{md,csv,png}`` into
    ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    jobs = collect(sweep_dir, since)
    if not jobs:
        log.warning("no %s under %s: nothing to summarise", METRICS_FILE, sweep_dir)
        return None
    missing = -math.inf if maximize else math.inf
    jobs.sort(key=lambda j: missing if j["value"] is None else j["value"], reverse=maximize)
    params = swept(jobs)
    metric = jobs[0]["optimized_metric"]
    header = ["rank", metric, *params, "job"]
    rows = [
        [
            str(i + 1),
            "-" if j["value"] is None else f"{j['value']:.4f}",
            *(params[k][i] for k in params),
            j["job"],
        ]
        for i, j in enumerate(jobs)
    ]
    paths = {suffix: sweep_dir / f"sweep_summary.{suffix}" for suffix in ("md", "csv", "png")}
    with paths["csv"].open("w", newline="") as out:
        csv.writer(out).writerows([header, *rows])
    best = "highest" if maximize else "lowest"
    lines = [
        f"**Sweep {sweep_dir}**: {len(jobs)} jobs ranked by `{metric}` ({best} first).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    paths["md"].write_text("\n".join(lines) + "\n")
    plot(jobs, params, metric, paths["png"])
    log.info("sweep summary: %s", paths["md"])
    return paths


def plot(jobs: Sequence[Mapping], params: Mapping[str, list[str]], metric: str, path: Path) -> None:
    """The optimised metric against each swept parameter (one panel each; values in sorted order). Uses the Agg
    canvas directly, so it never touches the global backend or a display."""
    # matplotlib: heavy, and only the plot needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = params or {"job": [j["job"] for j in jobs]}
    figure = Figure(figsize=(4 * len(panels), 3.2), layout="constrained")
    FigureCanvasAgg(figure)
    for i, (key, values) in enumerate(panels.items()):
        axes = figure.add_subplot(1, len(panels), i + 1)
        order = sorted(set(values), key=_sort_key)
        points = [
            (order.index(v), j["value"]) for v, j in zip(values, jobs, strict=True) if j["value"] is not None
        ]
        axes.scatter([x for x, _ in points], [y for _, y in points])
        axes.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
        axes.set_xlabel(key)
        axes.set_ylabel(metric)
    figure.savefig(path, dpi=100)


def _sort_key(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


class SweepSummary(Callback):
    """Hydra callback (conf/train.yaml ``hydra.callbacks``): at the end of every multirun, `summarise` its folder."""

    def __init__(self, maximize: bool = True) -> None:
        self.maximize = maximize
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        direction = str(config.hydra.sweeper.get("direction", "maximize"))
        summarise(config.hydra.sweep.dir, self.maximize and direction != "minimize", since=self.started)


class OptunaSweeper(Sweeper):
    """``hparams_search=optuna``: an Optuna study (TPE, seeded) over ``params``, ``n_trials`` jobs launched one
    after another through Hydra's launcher, each told the value its job returned (`jasper.training.run.run`:
    ``optimized_metric``; a job that returns None counts as the worst). Writes ``optuna_best.yaml`` to the sweep
    folder; `SweepSummary` ranks every trial. Built on Optuna itself: the hydra-optuna-sweeper plugin pins
    optuna<3.

    ``params``: ``{key: {type: float|int, low, high, log}}`` or ``{key: {type: categorical, choices: [...]}}``.
    Command-line overrides stay fixed for every trial (``stage=1 run_name=...``); sweeping one (``a=1,2``) here is
    refused.
    """

    def __init__(
        self, params: Mapping[str, Mapping], n_trials: int = 20, direction: str = "maximize", seed: int = 0
    ) -> None:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction must be maximize or minimize, got {direction!r}")
        if not params:
            raise ValueError(
                "hydra.sweeper.params is empty: name at least one key to search (hparams_search=optuna)"
            )
        self.params = {k: dict(v) for k, v in params.items()}
        self.n_trials = int(n_trials)
        self.direction = direction
        self.seed = seed
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins  # Hydra's plugin registry: only a running sweeper needs it

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def suggest(self, trial, key: str) -> object:
        spec = self.params[key]
        kind = spec.get("type", "float")
        if kind == "categorical":
            return trial.suggest_categorical(key, list(spec["choices"]))
        if kind not in ("float", "int"):
            raise ValueError(
                f"hydra.sweeper.params.{key}.type must be float, int or categorical, got {kind!r}"
            )
        suggest = trial.suggest_float if kind == "float" else trial.suggest_int
        return suggest(key, spec["low"], spec["high"], log=bool(spec.get("log", False)))

    def sweep(self, arguments: list[str]) -> list:
        import optuna  # heavy (sqlalchemy): only hparams_search=optuna needs it

        swept = [
            a for a in arguments if "," in a.split("=", 1)[-1] and not a.split("=", 1)[-1].startswith("[")
        ]
        if swept:
            raise ValueError(
                f"hparams_search=optuna keeps command-line overrides fixed; not a sweep here: {swept}"
            )
        worst = -math.inf if self.direction == "maximize" else math.inf
        study = optuna.create_study(
            direction=self.direction, sampler=optuna.samplers.TPESampler(seed=self.seed)
        )
        returns = []
        for index in range(self.n_trials):
            trial = study.ask()
            overrides = [*arguments, *(f"{key}={self.suggest(trial, key)!r}" for key in self.params)]
            (job,) = self.launcher.launch([overrides], initial_job_idx=index)
            value = job.return_value  # re-raises a failed job's error
            study.tell(trial, worst if value is None else float(value))
            returns.append(job)
        best = {"value": study.best_value, "params": study.best_params, "trial": study.best_trial.number}
        folder = Path(self.config.hydra.sweep.dir) if self.config is not None else None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "optuna_best.yaml").write_text(OmegaConf.to_yaml(best))
        log.info("optuna best (trial %d): %s = %s", best["trial"], best["params"], best["value"])
        return [returns]
