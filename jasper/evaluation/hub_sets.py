"""The development sets from the Hugging Face hub, for a clone without ``eval.data_dir``: each set an eval config
names may have a hub copy (``eval.hub.<set name>: {repo, revision, split, ...}``, conf/evaluate/eval/dev.yaml),
read into the same `StsPair` / `BeirData` as the local files and described in the report's caption.

How a copy is fetched: ``huggingface_hub.snapshot_download`` of the repository at its pinned commit (online: once,
into ``HF_HUB_CACHE``; with ``HF_HUB_OFFLINE=1``: from that cache only), then `datasets` reads the snapshot folder
(its README's ``configs``; the arrow files go to ``HF_DATASETS_CACHE``). Not ``load_dataset(repo_id, revision=...)``
itself: measured with datasets 5.2, offline it never reads the hub cache (a snapshot there fails with "Couldn't
reach ... (OfflineModeIsEnabled)") and falls back to "the latest cached version" in its own arrow cache, whatever
the pinned revision. A snapshot is exact to the commit on- and offline, and a test replays it from a folder laid
out as the hub's (`jasper.models.replicas.write_snapshot`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import LocalEntryNotFoundError

from jasper.evaluation.loaders import BeirData, EvaluationDataError, StsPair

log = logging.getLogger(__name__)


class HubSetUnavailable(EvaluationDataError):
    """A set is neither under ``eval.data_dir`` nor in the Hugging Face cache, and the hub cannot be reached."""


def label(hub: Mapping) -> str:
    """``repo@commit[:7] split``: where a hub copy comes from, as the caption names it."""
    return f"{hub['repo']}@{str(hub['revision'])[:7]} {hub.get('split', 'test')}"


def fetch(hub: Mapping, cached_only: bool = False) -> Path:
    """The snapshot folder of ``hub.repo`` at ``hub.revision``: downloaded once, then read from the cache
    (``cached_only``: the hub is not asked, e.g. once it did not answer: each unanswered call retries for ~30 s)."""
    try:
        folder = huggingface_hub.snapshot_download(
            hub["repo"], repo_type="dataset", revision=str(hub["revision"]), local_files_only=cached_only
        )
    except LocalEntryNotFoundError as err:
        if huggingface_hub.is_offline_mode():
            why = "the hub is off (HF_HUB_OFFLINE=1)"
        elif cached_only:
            why = "the hub, which did not answer for another set, was not asked"
        else:
            why = "the hub cannot be reached"
        raise HubSetUnavailable(
            f"{label(hub)} is not in the Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) and {why}"
        ) from err
    return Path(folder)


def _text(value, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise EvaluationDataError(f"{where}: {what} is empty or not text ({value!r})")
    return value.strip()  # as the local files: leading and trailing spaces stripped


def load_hub_sts(hub: Mapping) -> list[StsPair]:
    """An STS split (columns ``sentence1``, ``sentence2``, ``score``) as `StsPair`s, in the split's order."""
    from datasets import load_dataset  # heavy (pyarrow): only a set read from the hub needs it

    rows = load_dataset(str(fetch(hub)), split=hub.get("split", "test"))
    missing = {"sentence1", "sentence2", "score"} - set(rows.column_names)
    if missing:
        raise EvaluationDataError(f"{label(hub)}: no column {sorted(missing)} (columns: {rows.column_names})")
    pairs = []
    for i, (s1, s2, score) in enumerate(
        zip(rows["sentence1"], rows["sentence2"], rows["score"], strict=True)
    ):
        where = f"{label(hub)} row {i}"
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise EvaluationDataError(f"{where}: score {score!r} is not a finite number")
        pairs.append(StsPair(_text(s1, where, "sentence1"), _text(s2, where, "sentence2"), float(score)))
    if not pairs:
        raise EvaluationDataError(f"{label(hub)}: no pairs")
    return pairs


def load_hub_beir(hub: Mapping) -> BeirData:
    """A retrieval split, read by MTEB's own loader (configs ``corpus``, ``queries``, ``default``/``qrels``) as
    `BeirData`: corpus text = title + " " + text as `load_beir`. Judgements of documents the corpus lacks are
    dropped (logged), and then queries left without any, so every judged document can be retrieved."""
    # mteb (and through it datasets, polars) is heavy: only a retrieval set read from the hub needs it
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalDatasetLoader

    split = RetrievalDatasetLoader(str(fetch(hub)), None, split=hub.get("split", "test")).load()
    corpus_ds, queries_ds = split["corpus"], split["queries"]
    titles = corpus_ds["title"] if "title" in corpus_ds.column_names else [""] * len(corpus_ds)
    corpus: dict[str, str] = {}
    for doc_id, title, text in zip(corpus_ds["id"], titles, corpus_ds["text"], strict=True):
        title, text = (title or "").strip(), (text or "").strip()
        if str(doc_id) in corpus:
            raise EvaluationDataError(f"{label(hub)}: duplicate document id {doc_id!r}")
        full = f"{title} {text}" if title and text else title or text
        corpus[str(doc_id)] = _text(full, label(hub), f"document {doc_id!r}")
    queries = {
        str(q): _text(t, label(hub), f"query {q!r}")
        for q, t in zip(queries_ds["id"], queries_ds["text"], strict=True)
    }
    qrels: dict[str, dict[str, int]] = {}
    dropped = 0
    for qid, judged in split["relevant_docs"].items():
        known = {str(d): int(g) for d, g in judged.items() if str(d) in corpus}
        dropped += len(judged) - len(known)
        if known and str(qid) in queries:
            qrels[str(qid)] = known
    if dropped:
        log.warning("%s: dropped %d judgements of documents not in its corpus", label(hub), dropped)
    if not qrels:
        raise EvaluationDataError(f"{label(hub)}: no judgement of a document in its corpus")
    return BeirData(corpus, {q: queries[q] for q in qrels}, qrels)
