"""Evaluate any mix of models on any mix of evaluation sets: what ``python evaluate.py`` runs (the model adapters
are in :mod:`jasper.evaluation.models`, the sets in :mod:`jasper.evaluation.sets`; this module puts them together).

Models: a jasper ``student.pt`` / Lightning ``.ckpt`` / DeepSpeed directory (every head), a fresh student built
from a checkpoint's config (``init: true``: the run's initialisation), an exported folder (every head), or any
sentence-transformers model path. Each text is encoded ONCE per model: a `VectorCache` encodes the texts it has not
seen for every head at once (students: tokenize -> pooled -> project to all heads; exported folders: the modules
before the Router once, then each route), and students sharing an encoder (init and stage 1, whose encoder is
frozen) share the pooled states too.

Sets (config group conf/evaluate/eval/): STS TSV files, BEIR folders, teacher fidelity on held-out texts, MTEB tasks (local
files through `mteb_adapter`, or MTEB's own by name), instruction robustness. Each set may be a fixed subset
(``max_pairs`` for STS; ``max_docs`` for retrieval: whole queries with all their judged documents, filled up with
random other documents), described in the report's caption.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from jasper.core.disk import atomic_write, check_name
from jasper.core.metrics import teacher_fidelity
from jasper.core.tables import ResultRow, markdown_table, write_report
from jasper.evaluation.asymmetric import asymmetric_rows
from jasper.evaluation.encoder import Encoder
from jasper.evaluation.loaders import load_beir, load_sts_tsv
from jasper.evaluation.models import (
    VectorCache,
    load_model,
)
from jasper.evaluation.pareto import plot_tradeoffs
from jasper.evaluation.precision import as_json, calibration_texts, precision_rows, precision_table
from jasper.evaluation.retrieval import evaluate_retrieval
from jasper.evaluation.robustness import instruction_robustness, load_instructions
from jasper.evaluation.sets import (
    EvalSets,
    load_sets,
    read_texts,
    resolve,
    subset_beir,
    subset_pairs,
    unavailable_note,
    with_set_specs,
)
from jasper.evaluation.sts import evaluate_sts
from jasper.storage.checkpoints import stage_students

log = logging.getLogger(__name__)


def evaluate_head(
    encode: Encoder,
    sets: EvalSets,
    cfg: Mapping,
    batch_size: int,
    model_name: str,
    fidelity: tuple[list[str], torch.Tensor] | None = None,
    mteb_tasks: Sequence = (),
) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {}
    for name, pairs in sets.sts.items():
        metrics[name] = evaluate_sts(encode, pairs, batch_size=batch_size)
    for name, data in sets.retrieval.items():
        wanted = list((cfg.get("retrieval") or {})[name].get("metrics") or ["ndcg@10"])
        ks = sorted({int(m.split("@")[1]) for m in wanted})
        scores = evaluate_retrieval(encode, *data, k_values=ks, batch_size=batch_size)
        metrics.update({f"{name} {m}": scores[m] for m in wanted})
    if fidelity is not None:
        texts, teacher = fidelity
        scores = teacher_fidelity(encode(texts), teacher, int(cfg["fidelity"].get("batch_size", 32)))
        metrics["fidelity spearman"] = scores["spearman"]
        metrics["fidelity cos"] = scores["cosine"]
    if mteb_tasks:
        import mteb  # heavy (and so is mteb_adapter, built on it): only an eval with MTEB tasks needs them

        from jasper.evaluation.mteb_adapter import MTEBEncoder  # built on mteb: see above

        model = MTEBEncoder(encode, name=f"jasper/{model_name}", batch_size=batch_size)
        result = mteb.evaluate(model, list(mteb_tasks), cache=None, show_progress_bar=False)
        for task_result in result.task_results:
            metrics[f"mteb {task_result.task_name}"] = task_result.get_score()
    robust = cfg.get("robustness")
    if robust:
        summary = instruction_robustness(
            encode,
            sts_sets={n: sets.sts[n] for n in robust.get("sts") or []},
            retrieval_sets={n: sets.retrieval[n] for n in robust.get("retrieval") or []},
            instructions=load_instructions(robust.get("instructions")),
            batch_size=batch_size,
        )
        for key, s in summary.items():
            metrics[f"robust {key.split('/', 1)[1]} mean"] = s["mean"]
            metrics[f"robust {key.split('/', 1)[1]} worst"] = s["worst"]
    return metrics


def mteb_tasks_from(cfg: Mapping, sets: EvalSets, repo: Path) -> list:
    spec = cfg.get("mteb") or {}
    tasks = []
    if spec.get("local"):
        from jasper.evaluation.mteb_adapter import (  # mteb: see evaluate_head
            local_retrieval_task,
            local_sts_task,
        )

        data_dir = resolve(cfg.get("data_dir") or ".", repo)
        for name, task in spec["local"].items():
            if task["type"] == "sts":
                pairs = subset_pairs(load_sts_tsv(resolve(task["path"], data_dir)), task.get("max_pairs"), 0)
                tasks.append(local_sts_task(name, pairs))
            elif task["type"] == "retrieval":
                data = load_beir(resolve(task["path"], data_dir))
                tasks.append(local_retrieval_task(name, subset_beir(data, task.get("max_docs"), 0)))
            else:
                raise ValueError(
                    f"eval.mteb.local.{name}.type must be sts or retrieval, got {task['type']!r}"
                )
    if spec.get("tasks"):  # MTEB's own tasks: their datasets must already be in the local HF cache
        import mteb  # see evaluate_head

        tasks.extend(mteb.get_tasks(tasks=list(spec["tasks"])))
    return tasks


def run_models(cfg: Mapping, repo: Path) -> dict[str, dict]:
    """Model specs by name: ``models`` + ``model`` + (with ``run_name``) teacher, init and every stage."""
    models: dict[str, dict] = {}
    if cfg.get("run_name"):
        run_dir = resolve(Path(cfg.get("runs_dir") or "outputs") / str(cfg["run_name"]), repo)
        stages = stage_students(run_dir)
        if not stages:
            raise FileNotFoundError(
                f"no stage*/student.pt under {run_dir}: train first (python train.py run_name={cfg['run_name']})"
            )
        if cfg.get("teacher"):
            models["teacher"] = {"path": str(cfg["teacher"])}
        models["init"] = {"path": str(stages[0][1]), "init": True}
        short = [path.parent.name for _, path in stages]  # stage1, ... unless several sweeps share the run
        names = short if len(set(short)) == len(short) else [name for name, _ in stages]
        models.update({name: {"path": str(path)} for name, (_, path) in zip(names, stages, strict=True)})
    if cfg.get("model"):
        path = Path(str(cfg["model"]))
        name = f"{path.parent.name}/{path.name}" if path.suffix in (".pt", ".ckpt") else path.name
        models[name or str(path)] = {"path": str(path)}
    for name, spec in (cfg.get("models") or {}).items():
        models[name] = {"path": spec} if isinstance(spec, str) else dict(spec)
    if not models:
        raise ValueError("nothing to evaluate: give model=PATH, models={name: PATH}, or run_name=NAME")
    return models


def evaluate(cfg: Mapping, repo: str | Path) -> tuple[list[ResultRow], str]:
    """Evaluate every model (every head) on every set; write JSON + markdown + PNG to ``out_dir``.

    Returns the rows and the markdown (caption + table).
    """
    repo = Path(repo)
    ecfg = with_set_specs(cfg["eval"])
    models = run_models(cfg, repo)
    sets = load_sets(ecfg, repo)
    tasks = mteb_tasks_from(ecfg, sets, repo)
    batch_size = int(cfg.get("batch_size", 64))
    max_length = ecfg.get("max_length") or cfg.get("max_length")
    fidelity_texts = None
    if ecfg.get("fidelity"):
        fcfg = ecfg["fidelity"]
        fidelity_texts = read_texts(resolve(fcfg["texts"], repo), fcfg.get("max_texts"))
    calibration, calibration_note = [], None
    if ecfg.get("precision") is not None:  # int8 ranges from their own texts, never from an evaluation set
        calibration, calibration_note = calibration_texts((ecfg["precision"] or {}).get("calibration"), repo)
    precision: list = []
    pooled_cache: dict = {}
    rows: list[ResultRow] = []
    timings = []
    teacher_vectors = None
    for name, spec in models.items():
        start = time.perf_counter()
        model = load_model(spec, name, repo, max_length, int(cfg.get("seed", 0)), pooled_cache)
        cache = VectorCache(
            model,
            batch_size,
            bool(cfg.get("progress", False)),
            total=sets.count([*(fidelity_texts or []), *calibration]),
        )
        fidelity = None
        if fidelity_texts is not None:
            if teacher_vectors is None:
                teacher_vectors = _teacher_vectors(ecfg["fidelity"], models, repo, max_length, fidelity_texts)
            fidelity = (fidelity_texts, teacher_vectors)
        for head, dim in model.heads.items():
            metrics = evaluate_head(
                cache.encoder(head), sets, ecfg, batch_size, f"{name}-{head}", fidelity, tasks
            )
            rows.append(ResultRow(model=name, head=head, dim=dim, metrics=metrics))
            if calibration:
                encode = cache.encoder(head)
                precision += precision_rows(encode, sets, ecfg, calibration, name, head, dim, batch_size)
        cache.close()
        timings.append((name, len(cache.index), cache.seconds, time.perf_counter() - start))
        log.info("%s: %d texts encoded in %.1f s (%.1f s in all)", *timings[-1])
        del model, cache
    if ecfg.get("asymmetric"):
        rows += asymmetric_rows(ecfg["asymmetric"], ecfg, sets, models, repo, max_length, batch_size)
    out_dir = resolve(default_out_dir(cfg), repo)
    paths = write_report(rows, out_dir, stem=str(ecfg.get("stem") or "results"))
    caption = _caption(ecfg, sets, max_length, timings)
    markdown = f"{caption}\n\n{markdown_table(rows)}"
    if precision:
        markdown += (
            f"\n**Precision** (int8 ranges from {calibration_note}; binary: Hamming similarity for STS, Hamming "
            "search + float32 rescoring for retrieval):\n\n" + precision_table(precision)
        )
        paths["precision"] = out_dir / "precision.json"
        text = json.dumps(as_json(precision), indent=2) + "\n"
        atomic_write(paths["precision"], lambda f: f.write(text.encode()))
    if ecfg.get("pareto") is not None:
        if not precision:
            raise ValueError(
                "eval.pareto draws the precision table: set eval.precision too (eval=serving has both)"
            )
        pcfg = ecfg["pareto"] or {}
        paths["tradeoffs"] = plot_tradeoffs(
            precision, rows, out_dir / "tradeoffs.png", pcfg.get("metrics"), pcfg
        )
        markdown += f"\nTrade-offs (quality vs bytes per vector / speed, Pareto front outlined): {paths['tradeoffs']}\n"
    paths["markdown"].write_text(markdown, encoding="utf-8")
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return rows, markdown


def default_out_dir(cfg: Mapping) -> str:
    """``out_dir``, else ``<runs_dir>/<run_name>/eval/<eval name>``, else ``<runs_dir>/eval/<eval name>``."""
    if cfg.get("out_dir"):
        return str(cfg["out_dir"])
    runs = Path(str(cfg.get("runs_dir") or "outputs"))
    owner = runs / check_name(cfg["run_name"], "run_name", subfolders=True) if cfg.get("run_name") else runs
    return str(owner / "eval" / check_name(cfg["eval"].get("name") or "eval", "eval.name"))


def _teacher_vectors(
    fcfg: Mapping, models: Mapping, repo: Path, max_length, texts: list[str]
) -> torch.Tensor:
    """Fidelity target: the vectors of ``fidelity.teacher`` (a model name from the table, or a path)."""
    spec = models.get(fcfg["teacher"], fcfg["teacher"])
    teacher = load_model(spec, "fidelity-teacher", repo, max_length)
    head = next(iter(teacher.heads))
    return VectorCache(teacher).encoder(head)(texts)


def _caption(ecfg: Mapping, sets: EvalSets, max_length, timings) -> str:
    lines = [f"**{ecfg.get('title') or 'Evaluation'}** (max_length {max_length or 'model default'}). Sets:"]
    lines += [f"- {note}" for note in sets.notes]
    if ecfg.get("fidelity"):
        lines.append(
            f"- fidelity: in-batch Spearman to {ecfg['fidelity']['teacher']} on {ecfg['fidelity']['texts']}"
        )
    lines.append(
        "- encoding: "
        + "; ".join(
            f"{n} {count} texts in {enc:.0f} s ({total:.0f} s in all)" for n, count, enc, total in timings
        )
    )
    return "\n".join(lines)


def missing_data_note(cfg: Mapping, repo: str | Path) -> str | None:
    """With ``eval.skip_if_missing``: a note (and nothing is evaluated) when a set is neither on this machine nor
    to be had from the hub (`jasper.evaluation.sets.unavailable_note`)."""
    ecfg = cfg["eval"]
    return unavailable_note(ecfg, Path(repo)) if ecfg.get("skip_if_missing") else None
