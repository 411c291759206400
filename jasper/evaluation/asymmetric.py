"""Asymmetric search: queries encoded by the student's FC1, documents by the teacher ensemble.

FC1 is trained to land on the teachers' target (each teacher's unit vectors, weighted, concatenated, normalised:
:func:`jasper.models.ensemble.ensemble_vectors`), so a query encoded by the small student can be scored by cosine
against documents the big teachers encoded once, with no further training (the teacher-aligned setting of LEAF).
:func:`asymmetric_rows` scores that on the retrieval sets, next to the teachers on both sides (symmetric); the
student on both sides is the table's own FC1 row. The teachers are the ones the student was trained against (its
run's config) unless ``eval.asymmetric.teachers`` gives others; documents get each teacher's ``document`` prompt,
queries its ``query`` prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from jasper.core.tables import ResultRow
from jasper.evaluation.models import StudentHeads, VectorCache
from jasper.evaluation.retrieval import evaluate_retrieval
from jasper.evaluation.run_teachers import check_dims, teacher_ensemble
from jasper.evaluation.sets import EvalSets, resolve
from jasper.models.ensemble import TeacherEnsemble
from jasper.models.student import FC1
from jasper.storage.checkpoints import load_student

log = logging.getLogger(__name__)
ASYMMETRIC_HEAD = "fc1 q -> teachers d"
TEACHERS_MODEL = "teachers"


def _encode_as(ensemble: TeacherEnsemble, role: str, texts: list[str]) -> torch.Tensor:
    for teacher in ensemble.teachers:
        teacher.role = role
    return ensemble.encode(texts, show_progress=False)


def asymmetric_rows(
    acfg: Mapping, ecfg: Mapping, sets: EvalSets, models: Mapping, repo: Path, max_length, batch_size: int
) -> list[ResultRow]:
    """``eval.asymmetric: {student: NAME or PATH, teachers: null or a teachers config, sets: null or [names]}``:
    a row of the teachers on both sides and a row of the student's FC1 queries against the teachers' documents,
    on each retrieval set (the document vectors encoded once per set)."""
    spec = models.get(acfg["student"], acfg["student"])
    path = resolve(spec["path"] if isinstance(spec, Mapping) else spec, repo)
    student, train_config = load_student(path, **({"max_length": max_length} if max_length else {}))
    ensemble = teacher_ensemble(train_config, acfg.get("teachers"), max_length)
    check_dims(ensemble, student.fc1_dim)
    queries_by_student = VectorCache(StudentHeads(student, str(acfg["student"])), batch_size).encoder(FC1)
    names = acfg.get("sets") or list(sets.retrieval)
    teacher_row = ResultRow(model=TEACHERS_MODEL, head="+".join(ensemble.names), dim=ensemble.dim)
    mixed_row = ResultRow(model=str(acfg["student"]), head=ASYMMETRIC_HEAD, dim=student.fc1_dim)
    for name in names:
        corpus, queries, qrels = sets.retrieval[name]
        wanted = list((ecfg.get("retrieval") or {})[name].get("metrics") or ["ndcg@10"])
        ks = sorted({int(m.split("@")[1]) for m in wanted})
        documents = _encode_as(ensemble, "document", list(corpus.values()))  # (N, D), once per set

        def teacher_queries(texts: list[str]) -> torch.Tensor:
            return _encode_as(ensemble, "query", texts)

        for row, encode in ((teacher_row, teacher_queries), (mixed_row, queries_by_student)):
            scores = evaluate_retrieval(
                encode, corpus, queries, qrels, k_values=ks, batch_size=batch_size, doc_vectors=documents
            )
            row.metrics.update({f"{name} {m}": scores[m] for m in wanted})
        log.info("asymmetric %s: %s", name, mixed_row.metrics)
    return [teacher_row, mixed_row]
