"""jasper/evaluation/fidelity.py (report.py): a run is scored with the config it saved, on its held-out texts
alone, each stage with its own heads."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import jasper.training.resolvers  # noqa: F401  (resolvers)
from jasper.core.tables import load_json
from jasper.evaluation.fidelity import report
from jasper.models.student import Student
from jasper.storage.checkpoints import save_student
from jasper.training.command_line import quote_paths

REPO = Path(__file__).resolve().parents[1]


def compose_train(overrides: list[str]):
    """The config of a command line, as the entry points' __main__ hands it to Hydra (``quote_paths``)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=quote_paths(overrides))


def trained_stage(folder: Path, cfg, mrl_dims: list[int], dim: int) -> None:
    """A stage folder as train.py leaves it: its student.pt and the config Hydra saved (unresolved)."""
    model = cfg.model
    student = Student(model.model_name_or_path, dim, mrl_dims, num_layers=model.num_layers, max_length=32)
    save_student(student, folder / "student.pt")
    (folder / ".hydra").mkdir()
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")


def test_report_uses_the_runs_saved_config_its_held_out_texts_and_each_stages_heads(
    tmp_path, tiny_bert, corpus_file, caplog
):
    """A sweep job's folder (``lr=0.1``, named on the command line as it is: ``run_name=r/lr=0.1``) trained on a
    local file with a tiny teacher (not today's defaults: GCIDE and MiniLM); its stage 2 has heads 16 and 8, a
    stage-3 job below it head 8 alone: that row shows "-" for head 16, not a score of a fresh random head. The
    teachers encode the 12 held-out texts only (no cache of the training texts)."""
    teacher = (
        f"{{_target_:jasper.models.teachers.HuggingFaceTeacher,model_name_or_path:'{tiny_bert}',name:tiny,"
        "max_length:32}"
    )
    run = tmp_path / "outputs" / "r" / "lr=0.1"
    trained = compose_train(
        [
            "run_name=r",
            f"paths.run_dir={run}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "data=local_files",
            f"data.source.paths=[{corpus_file}]",
            "data.val_texts=12",
            "data.max_texts=40",
            f"teachers.teachers=[{teacher}]",
            f"model.model_name_or_path={tiny_bert}",
            "model.num_layers=1",
            "model.layers=null",
            "model.mrl_dims=[16,8]",
            "model.max_length=32",
        ]
    )
    for folder, heads in [("stage2", [16, 8]), ("mrl_dims=8/stage3", [8])]:
        (run / folder).mkdir(parents=True)
        trained_stage(run / folder, trained, heads, dim=32)
    # The command line as report.py's __main__ hands it to Hydra (paths.run_dir: outputs/ under tmp_path).
    today = compose_train(
        quote_paths(["run_name=r/lr=0.1", f"paths.run_dir={run}", "paths.output_dir=unused"])
    )
    assert today.run_name == "r/lr=0.1"
    caplog.set_level("INFO", logger="jasper.evaluation.fidelity")
    table = report(today)
    assert "teacher fidelity on 12 held-out texts" in caplog.text
    assert not (tmp_path / "cache").exists()  # nothing built for the training texts
    rows = {row.model: row.metrics for row in load_json(run / "fidelity.json")}
    assert list(rows) == ["init", "stage2", "mrl_dims=8/stage3"]
    assert set(rows["stage2"]) == {"cos fc1", "spearman fc1", "spearman 16", "spearman 8"}
    assert set(rows["mrl_dims=8/stage3"]) == {"cos fc1", "spearman fc1", "spearman 8"}
    lines = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines()]
    job = dict(zip(lines[0], next(line for line in lines if line[0] == "mrl_dims=8/stage3"), strict=True))
    assert job["spearman 16"] == "-" and job["spearman 8"] != "-"


def test_report_refuses_stages_trained_on_other_held_out_texts(tmp_path, tiny_bert, corpus_file):
    run = tmp_path / "outputs" / "r"
    common = [f"paths.run_dir={run}", "data=local_files", f"model.model_name_or_path={tiny_bert}"]
    for folder, val_texts in [("stage1", 12), ("val_texts=6/stage2", 6)]:
        (run / folder).mkdir(parents=True)
        cfg = compose_train([*common, f"data.source.paths=[{corpus_file}]", f"data.val_texts={val_texts}"])
        trained_stage(run / folder, cfg, [8], dim=32)
    today = compose_train(["run_name=r", f"paths.run_dir={run}", "paths.output_dir=unused"])
    with pytest.raises(ValueError, match=r"val_texts=6/stage2 was trained with other data= than stage1"):
        report(today)
