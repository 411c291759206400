"""Evaluate any mix of models on any mix of evaluation sets: what ``python evaluate.py`` runs.

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

import hashlib
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from jasper.evaluation.encoder import Encoder
from jasper.evaluation.fidelity import teacher_fidelity
from jasper.evaluation.loaders import BeirData, EvaluationDataError, StsPair, load_beir, load_sts_tsv
from jasper.evaluation.report import ResultRow, markdown_table, write_report
from jasper.evaluation.retrieval import evaluate_retrieval
from jasper.evaluation.sts import evaluate_sts

log = logging.getLogger(__name__)


# Models: every head of a model from one encoding of each text.
class StudentHeads:
    """A jasper Student: tokenize -> pooled once per text -> project to every head."""

    def __init__(self, student, name: str, pooled_cache: dict | None = None) -> None:
        self.student = student.eval()
        self.name = name
        self.heads = {h: student.head_dim(h) for h in student.head_names}
        self.pooled_cache = {} if pooled_cache is None else pooled_cache
        self.key = _fingerprint(student)

    @torch.inference_mode()
    def encode_batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        missing = [t for t in dict.fromkeys(texts) if (self.key, t) not in self.pooled_cache]
        if missing:
            batch = self.student.tokenize(missing)
            pooled = self.student.pooled(batch["input_ids"], batch["attention_mask"])  # (B, H)
            self.pooled_cache.update({(self.key, t): row for t, row in zip(missing, pooled, strict=True)})
        pooled = torch.stack([self.pooled_cache[(self.key, t)] for t in texts])
        return {h: v.cpu() for h, v in self.student.project(pooled).items()}


def _fingerprint(student) -> str:
    """Encoder weights + tokenisation settings: students with equal fingerprints give equal pooled states."""
    digest = hashlib.sha1(f"{student.model_name_or_path}|{student.max_length}|{student.prompt}".encode())
    for name, tensor in student.encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class SentenceTransformerHeads:
    """A sentence-transformers model. With a Router (a jasper export), the modules before it run once and every
    route is applied to their output; ``jasper_export.json`` truncate_dim heads are prefixes, renormalised."""

    def __init__(self, model, name: str, folder: str | Path | None = None) -> None:
        from sentence_transformers.sentence_transformer.modules import Router

        self.model = model.eval()
        self.name = name
        modules = list(model)
        self.router_at = next((i for i, m in enumerate(modules) if isinstance(m, Router)), None)
        dim = model.get_embedding_dimension()
        if self.router_at is not None:
            router = modules[self.router_at]
            self.routes = list(router.sub_modules)
            self.heads = {r: _route_dim(router.sub_modules[r]) for r in self.routes}
        else:
            self.routes = []
            self.heads = {"": dim}
        self.truncations: dict[str, int] = {}
        info = _export_info(folder)
        if info is not None:
            for head, spec in info["heads"].items():
                if "truncate_dim" in spec:
                    self.truncations[head] = int(spec["truncate_dim"])
            if self.router_at is None:  # a prefix-mode export: name the full output after FC1
                self.heads = {"fc1": dim}
            self.heads.update(self.truncations)
        name_prompt = model.default_prompt_name
        self.prompt = model.prompts.get(name_prompt) if name_prompt else None

    @torch.inference_mode()
    def encode_batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        features = self.model.preprocess(list(texts), prompt=self.prompt or None)
        features = {k: v.to(self.model.device) if torch.is_tensor(v) else v for k, v in features.items()}
        modules = list(self.model)
        if self.router_at is None:
            for module in modules:
                features = module(features)
            outputs = {next(iter(self.heads)): features["sentence_embedding"]}
        else:
            for module in modules[: self.router_at]:
                features = module(features)
            outputs = {}
            for route in self.routes:
                out = dict(features)
                for module in modules[self.router_at].sub_modules[route]:
                    out = module(out)
                for module in modules[self.router_at + 1 :]:
                    out = module(out)
                outputs[route] = out["sentence_embedding"]
        full = next(iter(outputs.values()))
        for head, d in self.truncations.items():
            outputs[head] = full[:, :d]
        return {h: F.normalize(v.float(), dim=-1).cpu() for h, v in outputs.items()}


def _route_dim(sequential) -> int:
    for module in reversed(list(sequential)):
        if hasattr(module, "get_embedding_dimension"):
            return int(module.get_embedding_dimension())
    raise ValueError("cannot tell a Router route's output dimension")


def _export_info(folder: str | Path | None) -> dict | None:
    from jasper.export import EXPORT_FILE

    path = Path(folder) / EXPORT_FILE if folder else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


class VectorCache:
    """Encodes each distinct text once (for every head) and serves one `Encoder` per head from the cache.

    ``progress``: a progress bar of the texts encoded so far (out of ``total`` distinct texts, when known).
    """

    def __init__(self, model, batch_size: int = 64, progress: bool = False, total: int | None = None) -> None:
        self.model = model
        self.batch_size = batch_size
        self.index: dict[str, int] = {}
        self.rows: dict[str, list[torch.Tensor]] = {h: [] for h in model.heads}
        self.seconds = 0.0
        self.bar = tqdm(total=total, desc=f"encoding {model.name}", unit="text", disable=not progress)

    def encoder(self, head: str) -> Encoder:
        def encode(texts: list[str]) -> torch.Tensor:
            missing = [t for t in dict.fromkeys(texts) if t not in self.index]
            start = time.perf_counter()
            for i in range(0, len(missing), self.batch_size):
                chunk = missing[i : i + self.batch_size]
                out = self.model.encode_batch(chunk)
                for j, text in enumerate(chunk):
                    self.index[text] = len(self.index)
                    for h, rows in self.rows.items():
                        rows.append(out[h][j])
                self.bar.update(len(chunk))
            self.seconds += time.perf_counter() - start
            return torch.stack([self.rows[head][self.index[t]] for t in texts])

        return encode

    def close(self) -> None:
        self.bar.close()


def load_model(
    spec: str | Mapping,
    name: str,
    repo: Path,
    max_length: int | None = None,
    seed: int = 0,
    pooled_cache: dict | None = None,
):
    """`StudentHeads` or `SentenceTransformerHeads` from a path (relative paths: to the repo root) or a
    ``{path, init}`` mapping (``init: true``: a fresh student built from the checkpoint's config, weights not
    loaded, seeded with ``seed``)."""
    from jasper.export import is_deepspeed_dir, load_student

    spec = {"path": spec} if isinstance(spec, str) else dict(spec)
    raw = str(spec["path"])
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else repo / path
    overrides = {"max_length": max_length} if max_length else {}
    is_student = path.is_file() or is_deepspeed_dir(path)
    if spec.get("init"):
        if not is_student:
            raise ValueError(f"model {name}: init=true needs a student checkpoint, got {path}")
        torch.manual_seed(seed)
        student, _ = load_student(path, weights=False, **overrides)
        return StudentHeads(student, name, pooled_cache)
    if is_student:
        student, _ = load_student(path, **overrides)
        return StudentHeads(student, name, pooled_cache)
    from sentence_transformers import SentenceTransformer

    folder = None
    if path.is_dir():
        folder = path
        model = SentenceTransformer(str(path), device="cpu")
    elif raw.startswith(("/", "./", "../", "~")) or Path(raw).suffix in (".pt", ".ckpt"):
        raise FileNotFoundError(f"model {name}: {path} does not exist")
    else:  # a hub id (offline: must be in the local cache)
        model = SentenceTransformer(raw, device="cpu")
    if max_length:
        model.max_seq_length = max_length
    return SentenceTransformerHeads(model, name, folder)


# Evaluation sets.
@dataclass
class EvalSets:
    sts: dict[str, list[StsPair]] = field(default_factory=dict)
    retrieval: dict[str, BeirData] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # how each set was subsetted: the report's caption

    def count(self, extra: Sequence[str] | None = None) -> int:
        """Distinct texts in every set (plus ``extra``): what one model encodes, robustness prompts aside."""
        texts = {s for pairs in self.sts.values() for p in pairs for s in (p[0], p[1])}
        for data in self.retrieval.values():
            texts.update(data.corpus.values())
            texts.update(data.queries.values())
        return len(texts | set(extra or ()))


def resolve(path: str | Path, base: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else base / path


def subset_pairs(pairs: list[StsPair], max_pairs: int | None, seed: int) -> list[StsPair]:
    """A fixed random subset of ``max_pairs`` pairs (in file order), or all of them."""
    if not max_pairs or max_pairs >= len(pairs):
        return pairs
    keep = sorted(random.Random(seed).sample(range(len(pairs)), max_pairs))
    return [pairs[i] for i in keep]


def subset_beir(data: BeirData, max_docs: int | None, seed: int, max_queries: int | None = None) -> BeirData:
    """Whole queries, in a fixed random order, with ALL their judged documents, while those fit in ``max_docs``
    (and ``max_queries``); then random unjudged-by-them documents up to ``max_docs``."""
    if not max_docs and not max_queries:
        return data
    max_docs = max_docs or len(data.corpus)
    order = sorted(data.qrels)
    random.Random(seed).shuffle(order)
    queries, docs = [], set()
    for qid in order:
        judged = set(data.qrels[qid])
        if len(docs | judged) > max_docs or (max_queries and len(queries) >= max_queries):
            continue
        queries.append(qid)
        docs |= judged
    if not queries:
        raise EvaluationDataError(f"max_docs={max_docs} is smaller than every query's judged documents")
    others = sorted(set(data.corpus) - docs)
    fill = random.Random(seed + 1).sample(others, min(max_docs - len(docs), len(others)))
    keep = docs | set(fill)
    corpus = {d: t for d, t in data.corpus.items() if d in keep}
    qrels = {q: data.qrels[q] for q in sorted(queries)}
    return BeirData(corpus, {q: data.queries[q] for q in qrels}, qrels)


def set_specs(sets: Mapping | Sequence | None, kind: str) -> dict[str, dict]:
    """``eval.sts`` / ``eval.retrieval`` as ``{name: spec}``. Either form works: a mapping ``{name: PATH or
    {path, ...}}``, or a list of paths and ``{path, name, ...}`` entries, each named by ``name`` or else by its file
    (STS: ``my_pairs.tsv`` -> ``my_pairs``) or folder name (retrieval)."""
    if not sets:
        return {}
    if isinstance(sets, Mapping):
        items = [
            ({"path": spec} if isinstance(spec, str) else dict(spec), name) for name, spec in sets.items()
        ]
    else:
        items = [({"path": spec} if isinstance(spec, str) else dict(spec), None) for spec in sets]
    specs: dict[str, dict] = {}
    for spec, name in items:
        if "path" not in spec:
            raise ValueError(f"eval.{kind}: every set needs a path, got {spec}")
        spec.setdefault("name", name or _set_name(spec["path"], kind))
        if spec["name"] in specs:
            raise ValueError(f"eval.{kind}: two sets named {spec['name']!r}; give one a name: {{path, name}}")
        specs[spec["name"]] = spec
    return specs


def _set_name(path: str, kind: str) -> str:
    path = Path(str(path).rstrip("/"))
    return path.stem if kind == "sts" else path.name


def with_set_specs(ecfg: Mapping) -> dict:
    """The eval config with ``sts`` and ``retrieval`` in the ``{name: spec}`` form (see `set_specs`)."""
    return {
        **ecfg,
        "sts": set_specs(ecfg.get("sts"), "sts"),
        "retrieval": set_specs(ecfg.get("retrieval"), "retrieval"),
    }


def find_set(path: str | Path, data_dir: Path, repo: Path) -> Path:
    """A set's file or folder: absolute as given; relative, under ``data_dir``, else under the repository root."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    for base in (data_dir, repo):
        if (base / path).exists():
            return base / path
    if not data_dir.exists():
        raise EvaluationDataError(
            f"evaluation data folder {data_dir} does not exist (eval.data_dir, relative to the repository root), "
            f"and {path} is not under {repo} either: put the dev sets there or pass eval.data_dir=PATH"
        )
    return data_dir / path  # the loader fails naming it


def load_sets(cfg: Mapping, repo: Path) -> EvalSets:
    """Read the STS and BEIR sets an eval config names (paths relative to ``data_dir``, itself relative to the
    repo root, or to the repo root); fail naming the missing path."""
    data_dir = resolve(cfg.get("data_dir") or ".", repo)
    seed = int(cfg.get("seed", 0))
    sets = EvalSets()
    for name, spec in set_specs(cfg.get("sts"), "sts").items():
        pairs = load_sts_tsv(find_set(spec["path"], data_dir, repo))
        kept = subset_pairs(pairs, spec.get("max_pairs"), seed)
        sets.sts[name] = kept
        how = "all" if len(kept) == len(pairs) else f"a fixed random subset (seed {seed}) of"
        sets.notes.append(f"{name}: {how} {len(kept)} of {len(pairs)} pairs, Spearman")
    for name, spec in set_specs(cfg.get("retrieval"), "retrieval").items():
        data = load_beir(find_set(spec["path"], data_dir, repo), split=spec.get("split", "test"))
        kept = subset_beir(data, spec.get("max_docs"), seed, spec.get("max_queries"))
        sets.retrieval[name] = kept
        judged = len({d for q in kept.qrels.values() for d in q})
        if len(kept.corpus) == len(data.corpus) and len(kept.qrels) == len(data.qrels):
            sets.notes.append(f"{name}: all {len(data.corpus)} docs, {len(data.qrels)} queries")
        else:
            sets.notes.append(
                f"{name}: {len(kept.qrels)} of {len(data.qrels)} queries (fixed random choice, seed {seed}: "
                f"{', '.join(kept.qrels)}) with all {judged} of their judged docs + {len(kept.corpus) - judged} "
                f"random other docs = {len(kept.corpus)} of {len(data.corpus)} docs"
            )
    return sets


def read_texts(path: Path, max_texts: int | None) -> list[str]:
    """Held-out texts: a .jsonl with a "text" field per line, or plain lines."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [json.loads(line)["text"] for line in lines] if path.suffix == ".jsonl" else lines
    return texts[:max_texts] if max_texts else texts


# Running.
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
        import mteb

        from jasper.evaluation.mteb_adapter import MTEBEncoder

        model = MTEBEncoder(encode, name=f"jasper/{model_name}", batch_size=batch_size)
        result = mteb.evaluate(model, list(mteb_tasks), cache=None, show_progress_bar=False)
        for task_result in result.task_results:
            metrics[f"mteb {task_result.task_name}"] = task_result.get_score()
    robust = cfg.get("robustness")
    if robust:
        from jasper.evaluation.robustness import instruction_robustness, load_instructions

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
        from jasper.evaluation.mteb_adapter import local_retrieval_task, local_sts_task

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
        import mteb

        tasks.extend(mteb.get_tasks(tasks=list(spec["tasks"])))
    return tasks


def run_models(cfg: Mapping, repo: Path) -> dict[str, dict]:
    """Model specs by name: ``models`` + ``model`` + (with ``run_name``) teacher, init and every stage."""
    from jasper.run_report import stage_students

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
    pooled_cache: dict = {}
    rows: list[ResultRow] = []
    timings = []
    teacher_vectors = None
    for name, spec in models.items():
        start = time.perf_counter()
        model = load_model(spec, name, repo, max_length, int(cfg.get("seed", 0)), pooled_cache)
        cache = VectorCache(
            model, batch_size, bool(cfg.get("progress", False)), total=sets.count(fidelity_texts)
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
        cache.close()
        timings.append((name, len(cache.index), cache.seconds, time.perf_counter() - start))
        log.info("%s: %d texts encoded in %.1f s (%.1f s in all)", *timings[-1])
        del model, cache
    out_dir = resolve(default_out_dir(cfg), repo)
    paths = write_report(rows, out_dir, stem=str(ecfg.get("stem") or "results"))
    caption = _caption(ecfg, sets, max_length, timings)
    markdown = f"{caption}\n\n{markdown_table(rows)}"
    paths["markdown"].write_text(markdown, encoding="utf-8")
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return rows, markdown


def default_out_dir(cfg: Mapping) -> str:
    """``out_dir``, else ``<runs_dir>/<run_name>/eval/<eval name>``, else ``<runs_dir>/eval/<eval name>``."""
    if cfg.get("out_dir"):
        return str(cfg["out_dir"])
    runs = Path(str(cfg.get("runs_dir") or "outputs"))
    owner = runs / str(cfg["run_name"]) if cfg.get("run_name") else runs
    return str(owner / "eval" / str(cfg["eval"].get("name") or "eval"))


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
    """With ``eval.skip_if_missing``: a note (and nothing is evaluated) when ``eval.data_dir`` is absent."""
    ecfg = cfg["eval"]
    data_dir = resolve(ecfg.get("data_dir") or ".", Path(repo))
    if ecfg.get("skip_if_missing") and not data_dir.exists():
        return f"note: evaluation skipped: {data_dir} does not exist (the dev sets live there)"
    return None
