"""The teachers a student was trained against, rebuilt from its run's config (lazily: no model loads until one
encodes), for what pairs the student with them: asymmetric search (:mod:`jasper.evaluation.asymmetric`), the
query-encoder export's card, and benchmarks/serving_bench.py."""

from __future__ import annotations

from collections.abc import Mapping

from hydra.utils import instantiate
from omegaconf import OmegaConf

import jasper.training.resolvers  # noqa: F401  (the teachers' config uses ${packaged_minilm:} and its kind)
from jasper.models.ensemble import TeacherEnsemble


def teacher_ensemble(
    train_config: Mapping | None, teachers: Mapping | None = None, max_length: int | None = None
) -> TeacherEnsemble:
    """The teachers of a run (``train_config["teachers"]``, interpolations resolved against the whole config) or
    ``teachers`` (a teachers config, as ``conf/teachers/*.yaml``), lazily: no model loads until one encodes.
    ``max_length`` (the evaluation's) truncates every teacher as it does every model of the table."""
    if teachers is None:
        if not train_config or "teachers" not in train_config:
            raise ValueError(
                "the student's training config is not known (a student.pt without its run's .hydra/config.yaml "
                "beside it): name the teachers with eval.asymmetric.teachers (a teachers config, as in "
                "conf/teachers/), or evaluate the student.pt of a run"
            )
        spec = OmegaConf.to_container(OmegaConf.create(dict(train_config)).teachers, resolve=True)
    else:
        spec = OmegaConf.to_container(OmegaConf.create(dict(teachers)), resolve=True)
    if max_length:
        for teacher in spec["teachers"]:
            teacher["max_length"] = int(max_length)
    return instantiate(spec, _convert_="all")


def teacher_pairing(train_config: Mapping | None, dim: int) -> dict:
    """What an exported query encoder's card and ``jasper_export.json`` say about the document side: the teachers
    in order (name, model, dimension, document prompt), their weights, and the target's dimension (FC1's)."""
    ensemble = teacher_ensemble(train_config)
    check_dims(ensemble, dim)
    teachers = []
    for teacher in ensemble.teachers:
        teacher.role = "document"
        teachers.append(
            {
                "name": teacher.name,
                "model": str(teacher.model_name_or_path),
                "dim": int(teacher.dim),
                "prompt": teacher.prompt,
            }
        )
    return {
        "teachers": teachers,
        "weights": list(ensemble.weights),
        "dim": int(dim),
        "formula": "ensemble_vectors",
    }


def check_dims(ensemble: TeacherEnsemble, fc1_dim: int) -> None:
    if ensemble.dim != fc1_dim:
        raise ValueError(
            f"the teachers {ensemble.names} give a {ensemble.dim}-d target but the student's FC1 has {fc1_dim} "
            "dimensions: pair the student with the teachers it was trained against (eval.asymmetric.teachers=null)"
        )
