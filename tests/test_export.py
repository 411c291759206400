"""Export: the sentence-transformers folder reproduces the student's own vectors, for every head and source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jasper.exporting import EXPORT_MARKER, ExportRefused, export_checkpoint, export_student
from jasper.models.student import FC1, Student
from jasper.storage.checkpoints import EXPORT_FILE, is_deepspeed_dir, load_student, save_student

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "A cat sits on the mat.",
    "Distillation trains a small student to copy a big teacher.",
    "short",
    "Stocks fell sharply on Monday after the announcement, dragging the index to a three-month low.",
]


def _student(path: str, mode: str, prompt: str = "", fc1_dim: int = 48, dims=(32, 16)) -> Student:
    torch.manual_seed(0)
    student = Student(
        path, fc1_dim=fc1_dim, mrl_dims=dims, mrl_mode=mode, num_layers=2, max_length=32, prompt=prompt
    )
    with torch.no_grad():  # make the heads differ from a fresh init, so loading the wrong weights shows
        for p in [*student.fc1.parameters(), *student.heads.parameters()]:
            p.add_(torch.randn_like(p) * 0.1)
    return student.eval()


def _st(path, **kwargs):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu", **kwargs)


def _check_heads(student: Student, folder, **load) -> None:
    model = _st(folder, **load)
    for head in student.head_names:
        expected = student.encode(TEXTS, head=head)
        if student.mrl_mode == "prefix" and head != FC1:
            got = _st(folder, truncate_dim=int(head)).encode(
                TEXTS, normalize_embeddings=True, convert_to_tensor=True
            )
        elif student.mrl_mode == "separate" and head != FC1:
            got = model.encode(TEXTS, task=head, convert_to_tensor=True)
        else:
            got = model.encode(TEXTS, convert_to_tensor=True)
        assert got.shape == expected.shape, head
        torch.testing.assert_close(got.float(), expected, atol=1e-5, rtol=1e-5, msg=f"head {head}")


@pytest.mark.parametrize("mode", ["separate", "prefix"])
def test_round_trip_tiny_bert(tiny_bert, tmp_path, mode):
    student = _student(tiny_bert, mode, prompt="query: ")
    out = export_student(student, tmp_path / "export")
    _check_heads(student, out)
    query = _st(out).encode_query(TEXTS, convert_to_tensor=True)  # routes to FC1, keeps the prompt
    torch.testing.assert_close(query.float(), student.encode(TEXTS), atol=1e-5, rtol=1e-5)
    info = json.loads((out / EXPORT_FILE).read_text())
    assert list(info["heads"]) == student.head_names
    config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert set(config["prompts"].values()) == {"query: "} and config["default_prompt_name"] == "default"
    assert "modeling" not in " ".join(p.name for p in out.iterdir())  # no custom code in the folder


def test_separate_heads_share_one_encoder(tiny_bert, tmp_path):
    out = export_student(_student(tiny_bert, "separate"), tmp_path / "export")
    weights = list(out.rglob("*.safetensors")) + list(out.rglob("*.bin"))
    encoder_files = [p for p in weights if p.parent == out]
    assert len(encoder_files) == 1  # the encoder once; each head only a small Dense


def test_export_from_student_pt_and_lightning_ckpt(tiny_bert, tmp_path):
    student = _student(tiny_bert, "separate")
    save_student(student, tmp_path / "run" / "stage3" / "student.pt")
    hydra = tmp_path / "run" / "stage3" / ".hydra"
    hydra.mkdir()
    (hydra / "config.yaml").write_text("stage: 3\nmodel:\n  num_layers: 2\n")
    out = export_checkpoint(tmp_path / "run" / "stage3" / "student.pt", tmp_path / "from_pt")
    _check_heads(student, out)
    assert "stage: 3" in (out / "README.md").read_text()

    config = {"model": {**student.describe(), "_target_": "jasper.models.student.Student"}, "stage": 3}
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    state["loss.dummy"] = torch.zeros(1)
    torch.save({"state_dict": state, "hyper_parameters": {"config": config}}, tmp_path / "last.ckpt")
    out = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "from_ckpt")
    _check_heads(student, out)
    assert "_target_: jasper.models.student.Student" in (out / "README.md").read_text()


def test_model_card_lists_scores(tiny_bert, tmp_path):
    from jasper.core.tables import ResultRow, save_json

    scores = save_json([ResultRow("student", FC1, 48, {"stsb-dev": 0.8123})], tmp_path / "scores.json")
    out = export_student(_student(tiny_bert, "prefix"), tmp_path / "export", scores=scores)
    card = (out / "README.md").read_text()
    assert "0.8123" in card and "truncate_dim=32" in card


def test_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no student at"):
        load_student(tmp_path / "missing.pt")
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match="not a DeepSpeed checkpoint"):
        load_student(tmp_path / "dir")
    torch.save({"state_dict": {"student.fc1.weight": torch.zeros(4, 2)}}, tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match="model_name_or_path"):
        load_student(tmp_path / "bare.ckpt")


def test_deepspeed_dir_detection(tmp_path):
    """Detection only (the conversion is test_export_from_deepspeed_zero2_directory): a `latest` pointer or a tag
    folder of model states makes a DeepSpeed directory; a plain folder, a .ckpt file or loose states do not."""
    (tmp_path / "a.ckpt" / "checkpoint").mkdir(parents=True)
    (tmp_path / "a.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt").touch()
    (tmp_path / "a.ckpt" / "latest").write_text("checkpoint")
    assert is_deepspeed_dir(tmp_path / "a.ckpt")
    (tmp_path / "a.ckpt" / "latest").unlink()  # no pointer: the tag folder alone
    assert is_deepspeed_dir(tmp_path / "a.ckpt")
    assert not is_deepspeed_dir(tmp_path)  # its states are two levels down
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "mp_rank_00_model_states.pt").touch()  # states but no tag folder
    (tmp_path / "loose" / "notes.txt").write_text("latest")
    assert not is_deepspeed_dir(tmp_path / "loose")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    assert not is_deepspeed_dir(tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="not a DeepSpeed checkpoint"):
        load_student(tmp_path / "loose")


def test_round_trip_minilm_student(minilm_path, tmp_path):
    """The packaged MiniLM student (3 layers, real weights), separate heads."""
    torch.manual_seed(0)
    student = Student(minilm_path, fc1_dim=768, mrl_dims=[256, 64], num_layers=3, max_length=64).eval()
    _check_heads(student, export_student(student, tmp_path / "export"))


def _fake_zero2_checkpoint(student: Student, folder, hyper_parameters: dict, world_size: int = 2) -> None:
    """A directory in the layout DeepSpeed ZeRO-2 writes (what deepspeed.utils.zero_to_fp32 reads): `latest`,
    and in the tag folder the model states (param shapes, buffers, Lightning's client state) plus one optimizer
    file per rank holding its slice of the flat fp32 parameter group, padded to a multiple of 2 * world_size."""
    from collections import OrderedDict

    tag = folder / "global_step7"
    tag.mkdir(parents=True)
    (folder / "latest").write_text("global_step7")
    params = OrderedDict((f"_forward_module.student.{k}", p.detach()) for k, p in student.named_parameters())
    param_names = {k for k, _ in student.named_parameters()}
    buffers = {
        f"_forward_module.student.{k}": v for k, v in student.state_dict().items() if k not in param_names
    }
    flat = torch.cat([p.reshape(-1).float() for p in params.values()])
    align = 2 * world_size
    flat = torch.cat([flat, torch.zeros(-len(flat) % align)])
    model_states = {
        "module": dict(buffers),
        "buffer_names": list(buffers),
        "param_shapes": [OrderedDict((k, p.shape) for k, p in params.items())],
        "shared_params": {},
        "frozen_param_shapes": None,
        "frozen_param_fragments": None,
        "ds_version": "0.0.0-fake",
        "optimizer": None,
        "global_steps": 7,
        "hyper_parameters": hyper_parameters,  # Lightning's client state rides along
        "epoch": 0,
    }
    torch.save(model_states, tag / "mp_rank_00_model_states.pt")
    for rank, part in enumerate(flat.chunk(world_size)):
        optim = {
            "optimizer_state_dict": {
                "zero_stage": 2,
                "partition_count": world_size,
                "single_partition_of_fp32_groups": [part.clone()],
            }
        }
        torch.save(optim, tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")


def test_export_from_deepspeed_zero2_directory(tiny_bert, tmp_path):
    """The conversion itself (deepspeed's zero_to_fp32 through Lightning: importing it costs ~7 s of CPU): the
    exported heads reproduce the student, with the `latest` pointer and without it (its single tag folder); two tag
    folders and no pointer are refused."""
    pytest.importorskip("deepspeed")
    student = _student(tiny_bert, "separate")
    config = {
        "model": {**student.describe(), "_target_": "jasper.models.student.Student"},
        "trainer": {"strategy": "deepspeed_stage_2"},
    }
    _fake_zero2_checkpoint(student, tmp_path / "last.ckpt", {"config": config})
    assert is_deepspeed_dir(tmp_path / "last.ckpt")
    out = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "export")
    _check_heads(student, out)
    assert "deepspeed_stage_2" in (out / "README.md").read_text()
    (tmp_path / "last.ckpt" / "latest").unlink()
    again, _ = load_student(tmp_path / "last.ckpt")
    assert torch.equal(again.encode(TEXTS, head="16"), student.encode(TEXTS, head="16"))
    (tmp_path / "last.ckpt" / "global_step3").mkdir()
    (tmp_path / "last.ckpt" / "global_step3" / "mp_rank_00_model_states.pt").touch()
    with pytest.raises(ValueError, match="point at one checkpoint"):
        load_student(tmp_path / "last.ckpt")


def test_student_from_a_config_with_another_models_tokenizer(minilm_path, tmp_path):
    """model=qwen2_1_5b_random's kind: a Qwen2 built from its config, MiniLM's tokenizer. transformers 5 would load a
    qwen2 folder's tokenizer as Qwen2Tokenizer whatever tokenizer_config.json says: jasper_export.json and the
    model card name the load_kwargs that keep it a BERT tokenizer, and the vectors round-trip."""
    torch.manual_seed(0)
    config = {"model_type": "qwen2", "vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64}
    config |= {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    student = Student(None, fc1_dim=48, mrl_dims=[16], encoder_config=config, tokenizer=minilm_path).eval()
    out = export_student(student, tmp_path / "export")
    load = json.loads((out / EXPORT_FILE).read_text())["load_kwargs"]
    assert load == {"processor_kwargs": {"tokenizer_type": "bert"}}
    assert "tokenizer_type" in (out / "README.md").read_text()
    _check_heads(student, out, **load)
    save_student(student, tmp_path / "student.pt")
    again, _ = load_student(
        tmp_path / "student.pt"
    )  # rebuilt from encoder_config + tokenizer, then the weights
    assert torch.equal(again.encode(TEXTS), student.encode(TEXTS))


def test_an_ordinary_student_needs_no_load_kwargs(tiny_qwen2, tmp_path):
    out = export_student(_student(tiny_qwen2, "separate"), tmp_path / "export")
    assert "load_kwargs" not in json.loads((out / EXPORT_FILE).read_text())


def test_model_card_names_models_not_paths_and_carries_the_runs_scores(tiny_bert, minilm_path, tmp_path):
    from jasper.core.tables import ResultRow, save_json
    from jasper.exporting import display_name

    assert display_name(minilm_path) == "sentence-transformers/all-MiniLM-L6-v2"
    assert display_name("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    assert (
        display_name("/home/me/.cache/huggingface/hub/models--org--name/snapshots/" + "a" * 40) == "org/name"
    )
    assert display_name("/data/run7/stage3/student.pt") == "run7/stage3"
    run = tmp_path / "machine-specific" / "mine"
    save_student(_student(tiny_bert, "separate"), run / "stage3" / "student.pt")
    (run / "stage3" / ".hydra").mkdir()
    config = {
        "model": {"model_name_or_path": tiny_bert},
        "teachers": {"teachers": [{"model_name_or_path": minilm_path}]},
        "paths": {"run_dir": str(run), "output_dir": str(run / "stage3")},
        "data": {"source": {"paths": [str(tmp_path / "corpus" / "texts.jsonl")]}},
    }
    (run / "stage3" / ".hydra" / "config.yaml").write_text(json.dumps(config))
    (run / "eval" / "demo").mkdir(parents=True)
    rows = [ResultRow(m, "fc1", 48, {"stsb-dev": s}) for m, s in [("init", 0.1), ("stage3", 0.75)]]
    save_json(rows, run / "eval" / "demo" / "results.json")
    card = (export_checkpoint(run / "stage3" / "student.pt", tmp_path / "out") / "README.md").read_text()
    assert str(tmp_path) not in card and "/tmp" not in card  # no path of this machine
    assert "sentence-transformers/all-MiniLM-L6-v2" in card and "exported from `mine/stage3`" in card
    assert "## Scores" in card and "0.75" in card and "| init" not in card  # this student's rows only
    assert "texts.jsonl" in card  # the data file, by name


def _run_with_student(tiny_bert, run) -> Path:
    """A run folder as train.py leaves it: ``<run>/stage3/{student.pt, .hydra/config.yaml}``."""
    student = _student(tiny_bert, "separate")
    save_student(student, run / "stage3" / "student.pt")
    (run / "stage3" / ".hydra").mkdir()
    (run / "stage3" / ".hydra" / "config.yaml").write_text("stage: 3\n")
    return run / "stage3" / "student.pt"


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


def test_export_never_deletes_what_it_did_not_make(tiny_bert, tmp_path, monkeypatch):
    """A non-empty out is replaced only when it is an earlier export (its marker) or with overwrite; the run, the
    checkpoint's folder and the working directory never; a failed export leaves the old one as it was."""
    ckpt = _run_with_student(tiny_bert, tmp_path / "outputs" / "mine")
    run = _tree(tmp_path / "outputs")
    for out in (tmp_path / "outputs", tmp_path / "outputs" / "mine", ckpt.parent):  # the run, or above it
        for overwrite in (False, True):
            with pytest.raises(ExportRefused, match="holds the checkpoint|holds a run"):
                export_checkpoint(ckpt, out, overwrite=overwrite)
    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "code.py").write_text("print('mine')\n")
    monkeypatch.chdir(tree / "src")
    for out in (".", "..", str(tree)):  # the working directory and the folders above it
        with pytest.raises(ExportRefused, match="working directory"):
            export_checkpoint(ckpt, out, overwrite=True)
    other_run = tmp_path / "elsewhere" / "r" / "sweep__x=1" / "stage2"  # a run (sweep) three levels down
    (other_run / ".hydra").mkdir(parents=True)
    with pytest.raises(ExportRefused, match=r"holds a run or a repository \(.*stage2"):
        export_checkpoint(ckpt, tmp_path / "elsewhere", overwrite=True)
    assert _tree(tmp_path / "outputs") == run and (tree / "src" / "code.py").is_file() and other_run.is_dir()

    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("not an export")
    with pytest.raises(ExportRefused, match="not an earlier export .* overwrite=true"):
        export_checkpoint(ckpt, mine)
    assert (mine / "notes.txt").read_text() == "not an export"
    export_checkpoint(ckpt, mine, overwrite=True)  # asked for: replaced whole
    assert not (mine / "notes.txt").exists() and (mine / EXPORT_MARKER).is_file()

    out = export_checkpoint(ckpt, tmp_path / "export")  # new: no marker needed
    (out / "stale_module").mkdir()  # a module an earlier export had and this one does not
    before = _tree(out)
    monkeypatch.setattr("jasper.exporting.folder.model_card", lambda *a, **k: 1 / 0)  # fails midway
    with pytest.raises(ZeroDivisionError):
        export_checkpoint(ckpt, out)
    assert _tree(out) == before  # the old export, untouched
    monkeypatch.undo()
    export_checkpoint(ckpt, out)  # an earlier export: replaced without overwrite
    assert not (out / "stale_module").exists() and (out / EXPORT_MARKER).is_file()
    _check_heads(load_student(ckpt)[0], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "export", "notes", "outputs", "tree"]


def test_export_py_refuses_a_run_and_replaces_a_folder_only_when_told(tiny_bert, tmp_path):
    """The entry point: a refusal is one line and exit status 1, whatever overwrite says; overwrite=true reaches
    export_checkpoint. (A folder refused without overwrite and a damaged checkpoint are the same two paths, checked
    in-process: each export.py start costs seconds.)"""
    ckpt = _run_with_student(tiny_bert, tmp_path / "run")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HYDRA_EXPORT_LOG_DIR": str(tmp_path / "logs"),
    }

    def export(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "export.py", f"ckpt={ckpt}", *args]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    refused = export(f"out={tmp_path / 'run'}", "overwrite=true")
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines() == [
        f"error: out={tmp_path / 'run'} holds the checkpoint being exported ({ckpt}): choose a new folder "
        "(e.g. out=outputs/<run>/export)"
    ]
    assert (tmp_path / "run" / "stage3" / ".hydra" / "config.yaml").is_file() and ckpt.is_file()
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("kept unless overwrite=true")
    with pytest.raises(ExportRefused, match="overwrite=true"):
        export_checkpoint(ckpt, folder)
    assert (folder / "notes.txt").is_file()
    done = export(f"out={folder}", "overwrite=true")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (folder / EXPORT_MARKER).is_file() and not (folder / "notes.txt").exists()
    half = tmp_path / "cut" / "student.pt"  # a truncated student.pt: named, not torch's bare zip error
    half.parent.mkdir()
    half.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"{half} is truncated or damaged"):
        export_checkpoint(half, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_student_is_loaded_without_running_code_and_refused_when_not_finite(tiny_bert, tmp_path):
    student = _student(tiny_bert, "separate")
    save_student(student, tmp_path / "student.pt")
    payload = torch.load(tmp_path / "student.pt", weights_only=True)  # plain types and tensors only
    payload["extra"] = Path("any object")  # a pickle of anything else could run code on load
    torch.save(payload, tmp_path / "shared.pt")
    with pytest.raises(ValueError, match=r"shared\.pt holds objects other than tensors"):
        load_student(tmp_path / "shared.pt")
    payload.pop("extra")
    payload["state_dict"]["fc1.weight"][0, 0] = float("nan")
    torch.save(payload, tmp_path / "diverged.pt")
    with pytest.raises(ValueError, match=r"diverged\.pt holds NaN/inf weights in \['fc1.weight'\]"):
        load_student(tmp_path / "diverged.pt")
    data = (tmp_path / "student.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"cut\.pt is truncated or damaged"):
        load_student(tmp_path / "cut.pt")
    with torch.no_grad():
        student.heads["16"].bias[0] = float("inf")
    with pytest.raises(
        ValueError, match=r"\['heads.16.bias'\] .* hold NaN/inf: .*refused\.pt is not written"
    ):
        save_student(student, tmp_path / "refused.pt")
    assert not (tmp_path / "refused.pt").exists()
