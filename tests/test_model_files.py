"""A model described from its small files: digests remembered across runs, hub snapshots, dims without weights."""

import json
import os
import shutil

import pytest

import jasper.models.model_files as model_files
from jasper.models.model_files import (
    digested_files,
    file_sha256,
    folder_digest,
    hub_commit,
    local_folder,
    sentence_transformer_dim,
    sentence_transformer_max_length,
)


@pytest.fixture(autouse=True)
def own_cache_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JASPER_CACHE_HOME", str(tmp_path_factory.mktemp("jasper-cache")))


def test_a_file_digest_is_read_once_and_recomputed_when_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights v1")
    first = file_sha256(path)
    reads = []
    real_open = open
    monkeypatch.setattr(
        "builtins.open", lambda p, *a, **k: reads.append(str(p)) or real_open(p, *a, **k), raising=True
    )
    assert file_sha256(path) == first and str(path) not in reads  # remembered: the file was not read again
    path.write_bytes(b"weights v2")  # same size, new contents: mtime/ctime differ
    assert file_sha256(path) != first and str(path) in reads


def test_the_folder_digest_covers_weights_configs_and_tokenizer_not_docs_or_exports(tmp_path):
    for name in ["model.safetensors", "pytorch_model.bin", "config.json", "vocab.txt", "README.md"]:
        (tmp_path / name).write_text(name)
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_text("x")
    (tmp_path / "2_Dense").mkdir()
    (tmp_path / "2_Dense" / "model.safetensors").write_text("dense")
    names = [p.relative_to(tmp_path).as_posix() for p in digested_files(tmp_path)]
    assert names == ["2_Dense/model.safetensors", "config.json", "model.safetensors", "vocab.txt"]
    before = folder_digest(tmp_path)
    (tmp_path / "README.md").write_text("edited docs")
    (tmp_path / "pytorch_model.bin").write_text("not loaded: safetensors sits beside it")
    assert folder_digest(tmp_path) == before
    (tmp_path / "2_Dense" / "model.safetensors").write_text("dense, edited")
    assert folder_digest(tmp_path) != before


def test_a_hub_snapshot_is_digested_from_its_blob_names_without_reading_them(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    repo = hub / "models--org--model"
    commit = "a" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, blob in [("config.json", "c0ffee"), ("model.safetensors", "5afe")]:
        (repo / "blobs" / blob).write_text("{}")
        os.symlink(f"../../blobs/{blob}", snapshot / name)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    folder = local_folder("org/model")
    assert folder == snapshot and hub_commit(folder) == commit
    monkeypatch.setattr(model_files, "file_sha256", lambda path: pytest.fail(f"read {path}"))
    assert folder_digest(folder) is not None
    assert local_folder("org/not-downloaded") is None  # never the network


def test_sentence_transformer_dim_and_length_from_module_configs(tmp_path, minilm_path):
    folder = tmp_path / "st"
    shutil.copytree(minilm_path, folder)
    assert sentence_transformer_dim(folder) == 384
    assert sentence_transformer_max_length(folder) == 256
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "config.json").write_text(json.dumps({"in_features": 384, "out_features": 64}))
    modules.insert(
        2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (folder / "modules.json").write_text(json.dumps(modules))
    assert sentence_transformer_dim(folder) == 64
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "pooling_mode_cls_token": True}))
    (folder / "2_Dense" / "config.json").unlink()
    del modules[2]
    (folder / "modules.json").write_text(json.dumps(modules))
    assert sentence_transformer_dim(folder) == 768  # cls + mean concatenated
    modules.append({"idx": 9, "name": "9", "path": "", "type": "my_code.LatentAttention"})
    (folder / "modules.json").write_text(json.dumps(modules))
    assert sentence_transformer_dim(folder) is None  # unknown module: the teacher loads the model to ask it
    (folder / "sentence_bert_config.json").unlink()
    assert sentence_transformer_max_length(folder) == 512  # min(position embeddings, tokenizer limit)


def test_a_hub_model_not_on_this_machine_gets_the_digest_its_snapshot_will_have(tmp_path, monkeypatch):
    from types import SimpleNamespace

    hub = tmp_path / "hub"
    repo = hub / "models--org--model"
    commit = "b" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    siblings = []
    for name, blob, lfs in [
        ("config.json", "c0ffee", None),
        ("model.safetensors", "5afe", "5afe"),
        ("README.md", "d0c", None),
    ]:
        (repo / "blobs" / blob).write_text("{}")
        os.symlink(f"../../blobs/{blob}", snapshot / name)
        siblings.append(
            SimpleNamespace(rfilename=name, blob_id=blob, lfs=SimpleNamespace(sha256=lfs) if lfs else None)
        )
    info = SimpleNamespace(sha=commit, siblings=siblings)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.HfApi.model_info", lambda self, repo, revision, files_metadata: info)
    assert model_files.hub_listing("org/model") == (commit, folder_digest(snapshot))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert model_files.hub_listing("org/model") is None  # offline: never the network


def test_a_hub_id_that_cannot_load_fails_at_once_naming_it(tmp_path, monkeypatch):
    """A mistyped id: not a valid id at all; offline and not in the local cache; online and unknown to the hub. An id
    with a snapshot in the local cache passes without the network; a hub that cannot be reached passes too."""
    import httpx
    from huggingface_hub.errors import RepositoryNotFoundError

    from jasper.models.encoders import check_model_path

    hub = tmp_path / "hub"
    (hub / "models--org--model" / "snapshots" / ("a" * 40)).mkdir(parents=True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(
        ValueError, match=r"model 'org/my model' is neither a local folder nor a valid hub id"
    ):
        check_model_path("org/my model")
    with pytest.raises(
        FileNotFoundError, match=r"model org/modle is not a local folder .* \(HF_HUB_OFFLINE=1\)"
    ):
        check_model_path("org/modle")
    check_model_path("org/model")  # in the local cache
    check_model_path(str(tmp_path))  # a local folder

    asked = []

    def model_info(self, repo_id, revision=None, timeout=None, **kwargs):
        asked.append((repo_id, timeout))
        if repo_id == "org/modle":
            request = httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
            raise RepositoryNotFoundError("404 Client Error", response=httpx.Response(404, request=request))
        if repo_id == "org/unreachable":
            raise ConnectionError("no network")
        return object()

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.HfApi.model_info", model_info)
    with pytest.raises(FileNotFoundError, match=r"no model org/modle on the Hugging Face hub"):
        check_model_path("org/modle")
    check_model_path("org/on-the-hub")
    check_model_path("org/unreachable")  # the load itself will say what is wrong
    check_model_path("org/model")  # cached: never asked
    assert asked == [("org/modle", 10), ("org/on-the-hub", 10), ("org/unreachable", 10)]
