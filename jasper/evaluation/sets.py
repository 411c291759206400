"""Evaluation sets as an eval config names them: STS TSV files and BEIR folders, found under ``data_dir`` or the
repository, each optionally a fixed subset (``max_pairs``; ``max_docs``/``max_queries``: whole queries with all their
judged documents, filled up with random other documents), described for the report's caption."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jasper.evaluation.hub_sets import HubSetUnavailable, fetch, label, load_hub_beir, load_hub_sts
from jasper.evaluation.loaders import BeirData, EvaluationDataError, StsPair, load_beir, load_sts_tsv


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


def local_set(path: str | Path, data_dir: Path, repo: Path) -> Path | None:
    """A set's file or folder on this machine: absolute as given; relative, under ``data_dir``, else under the
    repository root; None when it is in none of them."""
    path = Path(path).expanduser()
    bases = [Path("/")] if path.is_absolute() else [data_dir, repo]
    return next((base / path for base in bases if (base / path).exists()), None)


def find_set(path: str | Path, data_dir: Path, repo: Path) -> Path:
    """`local_set`, or (missing) the path the loader then fails naming; a missing ``data_dir`` fails here."""
    found = local_set(path, data_dir, repo)
    if found is not None or Path(path).expanduser().is_absolute():
        return found or Path(path).expanduser()
    if not data_dir.exists():
        raise EvaluationDataError(
            f"evaluation data folder {data_dir} does not exist (eval.data_dir, relative to the repository root), "
            f"and {path} is not under {repo} either: put the dev sets there or pass eval.data_dir=PATH"
        )
    return data_dir / path  # the loader fails naming it


HOW_TO_GET = (
    "either put the dev sets there (or pass eval.data_dir=PATH), or evaluate once where the hub can be reached, "
    "with HF_HUB_OFFLINE=0 set (make demo sets it for its evaluation), which keeps the hub copies in the Hugging "
    "Face cache for every later run, offline too"
)


def _from_hub(load, name: str, spec: Mapping, hub: Mapping, data_dir: Path):
    """``load(hub)`` for a set missing under ``data_dir``; unavailable, an error naming both ways to get it."""
    try:
        return load(hub)
    except HubSetUnavailable as err:
        raise HubSetUnavailable(
            f"{name}: {spec['path']} is not under {data_dir} and {err}: {HOW_TO_GET}"
        ) from err


def _hub_note(hub: Mapping, spec: Mapping, data_dir: Path, reduced: str = "") -> str:
    """The caption's warning on a set read from the hub: where from, and (``hub.note``) how it differs."""
    said = f": {hub['note']}" if hub.get("note") else ""
    return f". Read from the hub, {label(hub)}{reduced} ({spec['path']} is not in {data_dir}){said}"


def unavailable_note(cfg: Mapping, repo: Path) -> str | None:
    """What ``eval.skip_if_missing`` prints instead of a table: None when every set is on this machine or its hub
    copy (``eval.hub.<name>``) is in the Hugging Face cache or can be downloaded now (it then is, once)."""
    data_dir = resolve(cfg.get("data_dir") or ".", repo)
    hubs = cfg.get("hub") or {}
    lacking, hub_down = [], False
    for kind in ("sts", "retrieval"):
        for name, spec in set_specs(cfg.get(kind), kind).items():
            if local_set(spec["path"], data_dir, repo) is not None:
                continue
            if name not in hubs:
                lacking.append((name, f"{name} ({spec['path']}; no hub copy: eval.hub.{name} is not set)"))
                continue
            try:
                fetch(hubs[name], cached_only=hub_down)
            except HubSetUnavailable as err:
                lacking.append((name, f"{name} ({err})"))
                hub_down = True
    if not lacking:
        return None
    how = (
        HOW_TO_GET
        if any(name in hubs for name, _ in lacking)
        else "put the dev sets there or pass eval.data_dir=PATH"
    )
    sets = "; ".join(why for _, why in lacking)
    return f"note: evaluation skipped: not under {data_dir} (eval.data_dir): {sets}. To get them, {how}"


def load_sets(cfg: Mapping, repo: Path) -> EvalSets:
    """Read the STS and BEIR sets an eval config names (paths relative to ``data_dir``, itself relative to the
    repo root, or to the repo root); a set on neither with a hub copy in ``eval.hub`` is read from the hub (its
    caption note says so and how it differs); fail naming the missing path."""
    data_dir = resolve(cfg.get("data_dir") or ".", repo)
    seed = int(cfg.get("seed", 0))
    hubs = cfg.get("hub") or {}
    sets = EvalSets()
    for name, spec in set_specs(cfg.get("sts"), "sts").items():
        hub = hubs.get(name) if local_set(spec["path"], data_dir, repo) is None else None
        if hub:
            pairs = _from_hub(load_hub_sts, name, spec, hub, data_dir)
        else:
            pairs = load_sts_tsv(find_set(spec["path"], data_dir, repo))
        kept = subset_pairs(pairs, spec.get("max_pairs"), seed)
        sets.sts[name] = kept
        how = "all" if len(kept) == len(pairs) else f"a fixed random subset (seed {seed}) of"
        where = _hub_note(hub, spec, data_dir) if hub else ""
        sets.notes.append(f"{name}: {how} {len(kept)} of {len(pairs)} pairs, Spearman{where}")
    for name, spec in set_specs(cfg.get("retrieval"), "retrieval").items():
        hub = hubs.get(name) if local_set(spec["path"], data_dir, repo) is None else None
        where = ""
        if hub:
            full = _from_hub(load_hub_beir, name, spec, hub, data_dir)
            data = subset_beir(full, hub.get("max_docs"), seed, hub.get("max_queries"))
            reduced = ""
            if (len(data.qrels), len(data.corpus)) != (len(full.qrels), len(full.corpus)):
                reduced = (
                    f", its {len(full.qrels)} judged queries and {len(full.corpus)} docs reduced (seed {seed}) to "
                    f"{len(data.qrels)} queries with all their judged docs + random others = {len(data.corpus)} docs"
                )
            where = _hub_note(hub, spec, data_dir, reduced)
        else:
            data = load_beir(find_set(spec["path"], data_dir, repo), split=spec.get("split", "test"))
        kept = subset_beir(data, spec.get("max_docs"), seed, spec.get("max_queries"))
        sets.retrieval[name] = kept
        judged = len({d for q in kept.qrels.values() for d in q})
        if len(kept.corpus) == len(data.corpus) and len(kept.qrels) == len(data.qrels):
            sets.notes.append(f"{name}: all {len(data.corpus)} docs, {len(data.qrels)} queries{where}")
        else:
            sets.notes.append(
                f"{name}: {len(kept.qrels)} of {len(data.qrels)} queries (fixed random choice, seed {seed}: "
                f"{', '.join(kept.qrels)}) with all {judged} of their judged docs + {len(kept.corpus) - judged} "
                f"random other docs = {len(kept.corpus)} of {len(data.corpus)} docs{where}"
            )
    return sets


def read_texts(path: Path, max_texts: int | None) -> list[str]:
    """Held-out texts: a .jsonl with a "text" field per line, or plain lines."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [json.loads(line)["text"] for line in lines] if path.suffix == ".jsonl" else lines
    return texts[:max_texts] if max_texts else texts
