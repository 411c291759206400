"""The paper's teachers on their hub replicas (jasper.models.replicas): conf/teachers/nvembed_stella.yaml loads them
unchanged from their hub ids at the pinned commits, offline, through jasper's own teacher classes, at the paper's
sizes (4096 + 8192 = 12288), with each card's prompts per role; a wrong head stops the run before anything loads."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import PreTrainedModel

import jasper.training.resolvers  # noqa: F401  (resolvers)
from jasper.models.replicas import (
    NV_EMBED,
    REVISIONS,
    SIGLIP_REPO,
    SIGLIP_SHAPE,
    STELLA,
    STELLA_HEADS,
    build_tower_replica,
    write_snapshot,
)
from jasper.models.teachers import RemoteCodeTeacher, SentenceTransformerTeacher
from jasper.storage.cache import fingerprint

CONF = Path(__file__).resolve().parents[1] / "conf"
TEXTS = ["The cat sat on the mat.", "Stock markets fell sharply today.", "x"]
TOWER = [f"+vision.timm_kwargs.{key}={value}" for key, value in SIGLIP_SHAPE.items()]  # the replica's shape


def paper_teachers(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=jasper_paper", *overrides])
    return cfg.teachers


def never_loaded(monkeypatch) -> None:
    def refuse(self):
        raise AssertionError(f"teacher {self.name} was loaded")

    for kind in (RemoteCodeTeacher, SentenceTransformerTeacher):
        monkeypatch.setattr(kind, "load", refuse)


def test_the_replicas_have_the_hub_layout_at_the_pinned_commits(on_teacher_replicas):
    for repo_id, commit in REVISIONS.items():
        repo = on_teacher_replicas / f"models--{repo_id.replace('/', '--')}"
        assert (repo / "refs" / "main").read_text() == commit
        config = repo / "snapshots" / commit / "config.json"
        assert config.is_symlink() and config.resolve().parent == repo / "blobs"
    stella = on_teacher_replicas / f"models--{STELLA.replace('/', '--')}" / "snapshots" / REVISIONS[STELLA]
    assert json.loads((stella / "modules.json").read_text())[-1]["path"] == "2_Dense_1024"
    for size in STELLA_HEADS:
        head = stella / f"2_Dense_{size}"
        assert json.loads((head / "config.json").read_text())["out_features"] == size
        assert (head / "pytorch_model.bin").is_file()
    nv = on_teacher_replicas / f"models--{NV_EMBED.replace('/', '--')}" / "snapshots" / REVISIONS[NV_EMBED]
    config = json.loads((nv / "config.json").read_text())
    assert (config["add_eos"], config["padding_side"], config["auto_map"]["AutoModel"]) == (
        True,
        "right",
        "modeling_nvembed.NVEmbedModel",
    )
    with pytest.raises(
        FileExistsError, match="real download"
    ):  # a cache folder it did not write is never replaced
        (on_teacher_replicas / "models--someone--real").mkdir()
        write_snapshot(on_teacher_replicas, "someone/real", stella, "0" * 40)


def test_the_config_pins_the_commits_the_replicas_are_written_at():
    teachers = paper_teachers().teachers
    assert {t.model_name_or_path: t.revision for t in teachers} == REVISIONS


def remote_code_without_commit(node: object, where: str = "") -> list[str]:
    """Every mapping under ``node`` with ``trust_remote_code: true`` and no 40-hex commit as its ``revision``."""
    found = []
    if isinstance(node, dict):
        if node.get("trust_remote_code") is True and not re.fullmatch(
            r"[0-9a-f]{40}", str(node.get("revision"))
        ):
            found.append(f"{where} ({node.get('model_name_or_path')}, revision {node.get('revision')!r})")
        for key, value in node.items():
            found += remote_code_without_commit(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += remote_code_without_commit(value, f"{where}[{index}]")
    return found


def test_remote_code_is_pinned_to_a_commit_in_every_config():
    """Remote code runs on this machine: a config that trusts it must name the commit it trusts."""
    checked, unpinned = 0, []
    for path in sorted(CONF.rglob("*.yaml")):
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        checked += json.dumps(config).count('"trust_remote_code": true')
        unpinned += [f"{path.relative_to(CONF)}{w}" for w in remote_code_without_commit(config)]
    assert checked >= 2 and unpinned == []
    unpinned_example = {
        "teachers": [{"model_name_or_path": "a/b", "trust_remote_code": True, "revision": "main"}]
    }
    assert remote_code_without_commit(unpinned_example) == [".teachers[0] (a/b, revision 'main')"]


def test_the_paper_teachers_load_from_the_replicas_and_give_12288_d_targets(on_teacher_replicas):
    ensemble = instantiate(paper_teachers())
    nv, stella = ensemble.teachers
    assert (nv.dim, stella.dim, ensemble.dim, ensemble.target_dim) == (4096, 8192, 12288, 12288)
    assert not nv.loaded and not stella.loaded  # the sizes come from the config and stella's files
    assert [fingerprint(t)["revision"] for t in (nv, stella)] == [REVISIONS[NV_EMBED], REVISIONS[STELLA]]
    vectors = ensemble.encode(TEXTS, show_progress=False)
    assert vectors.shape == (3, 12288) and torch.isfinite(vectors).all()
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(3))
    assert type(nv.model).__name__ == "NVEmbedModel"  # its own remote code, through AutoModel
    assert stella.model[-1].get_embedding_dimension() == 8192  # 2_Dense_8192, not modules.json's 1024


def test_stellas_1024_head_stops_the_run_before_anything_loads(on_teacher_replicas, monkeypatch):
    never_loaded(monkeypatch)
    with pytest.raises(
        InstantiationException, match=r"gives dim: 8192 but its files give a 1024-d output .*2_Dense_1024"
    ):
        instantiate(paper_teachers("teachers.teachers.1.dense_folder=2_Dense_1024"))
    expected = (
        r"the teachers give a 5120-d target \(NV-Embed-v2: 4096, stella_en_1.5B_v5 \(8192-d\): 1024\) but "
        r"teachers.target_dim is 12288: select each teacher's output .* or, if 5120 is what you mean, set "
        r"teachers.target_dim=5120"
    )
    with pytest.raises(InstantiationException, match=expected):  # Hydra's, holding the ValueError
        instantiate(
            paper_teachers("teachers.teachers.1.dense_folder=2_Dense_1024", "teachers.teachers.1.dim=null")
        )


def test_a_loaded_model_of_another_size_than_the_config_says_stops(on_teacher_replicas):
    teacher = RemoteCodeTeacher(NV_EMBED, revision=REVISIONS[NV_EMBED], trust_remote_code=True, dim=1024)
    with pytest.raises(
        ValueError, match="gives a 1024-d output but the loaded model gives 4096-d; set dim: 4096"
    ):
        teacher.encode(["a cat"])


def test_dense_folder_equals_a_copy_whose_modules_json_names_that_head(on_teacher_replicas, tmp_path):
    """Another of stella's heads without dense_folder takes a copy whose modules.json names it; dense_folder gives the
    same vectors, from the hub id and from a local folder."""
    snapshot = on_teacher_replicas / f"models--{STELLA.replace('/', '--')}" / "snapshots" / REVISIONS[STELLA]
    edited = tmp_path / "stella"
    shutil.copytree(snapshot, edited)  # symlinks followed: a plain folder
    modules = json.loads((edited / "modules.json").read_text())
    modules[-1]["path"] = "2_Dense_512"
    (edited / "modules.json").write_text(json.dumps(modules))
    card = SentenceTransformerTeacher(str(edited), device="cpu").encode(TEXTS)
    by_id = SentenceTransformerTeacher(
        STELLA, revision=REVISIONS[STELLA], dense_folder="2_Dense_512", device="cpu"
    )
    local = SentenceTransformerTeacher(str(snapshot), dense_folder="2_Dense_512", device="cpu")
    assert by_id.dim == local.dim == card.shape[-1] == 512
    torch.testing.assert_close(by_id.encode(TEXTS), card)
    torch.testing.assert_close(local.encode(TEXTS), card)
    with pytest.raises(FileNotFoundError, match=r"2_Dense_999 is not a folder of .*'2_Dense_8192'"):
        SentenceTransformerTeacher(str(snapshot), dense_folder="2_Dense_999", dim=999).encode(["a"])


def test_each_teacher_gets_its_cards_prompt_per_role_and_nv_embed_its_eos(on_teacher_replicas):
    cfg = paper_teachers()
    nv, stella = instantiate(cfg).teachers
    prompts = [OmegaConf.to_container(t.prompts) for t in cfg.teachers]
    assert [p["document"] for p in prompts] == ["", ""]
    assert (
        prompts[0]["query"]
        == "Instruct: Given a question, retrieve passages that answer the question\nQuery: "
    )
    assert prompts[1]["query"].startswith("Instruct: Given a web search query, retrieve relevant passages")
    calls, nv_inputs, stella_ids = [], [], []
    model_encode = nv.model.encode
    nv.model.encode = lambda prompts, **kw: calls.append(kw) or model_encode(prompts, **kw)
    nv.model.embedding_model.register_forward_hook(
        lambda m, a, kw, out: nv_inputs.append((kw["input_ids"], kw["attention_mask"])), with_kwargs=True
    )
    stella_model = next(m for m in stella.model.modules() if isinstance(m, PreTrainedModel))
    stella_model.embed_tokens.register_forward_hook(lambda m, args, out: stella_ids.append(args[0].tolist()))
    texts = ["a cat", "a much longer sentence about a cat"]
    vectors = {}
    for role in ("document", "query"):
        nv.role = stella.role = role
        vectors[role] = torch.cat([nv.encode(texts)[:1], stella.encode(texts[:1])], dim=-1)
    assert calls == [
        {"instruction": "", "max_length": 512},
        {"instruction": prompts[0]["query"], "max_length": 512},
    ]
    eos = nv.model.tokenizer.eos_token_id
    for (
        ids,
        mask,
    ) in nv_inputs:  # right padding; every input's EOS token just before the tokenizer's own [SEP]
        lengths = mask.sum(dim=1)
        assert mask[0, : lengths[0]].all() and not mask[0, lengths[0] :].any() and lengths[0] < lengths[1]
        assert [ids[row, n - 2].item() for row, n in enumerate(lengths.tolist())] == [eos, eos]
    assert (
        nv_inputs[1][1].sum() - nv_inputs[0][1].sum() > 20
    )  # the instruction's tokens (twice), before the texts
    tokenizer = stella.model.tokenizer
    assert stella_ids == [[tokenizer(t)["input_ids"]] for t in ("a cat", prompts[1]["query"] + "a cat")]
    assert not torch.allclose(vectors["document"], vectors["query"])


def test_the_siglip_tower_loads_by_its_timm_name_from_its_replica(on_teacher_replicas):
    """conf/vision/siglip_so400m.yaml (pretrained: true) through timm's own hub lookup, offline: the replica's
    weights, not a random tower; without the file, timm cannot build it offline."""
    from safetensors.torch import load_file

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=jasper_paper", *TOWER])
    tower = instantiate(cfg.vision)(embed_dim=32)  # a partial: the student's hidden size completes it
    stored = load_file(hub_file(on_teacher_replicas, SIGLIP_REPO, "model.safetensors"))
    backbone = tower.backbone.state_dict()
    assert set(stored) == set(backbone) and all(torch.equal(stored[k], backbone[k]) for k in stored)
    assert tower(torch.zeros(1, 3, 384, 384)).shape == (
        1,
        300,
        32,
    )  # 729 patch tokens pooled to the released 300
    hub_file(
        on_teacher_replicas, SIGLIP_REPO, "model.safetensors"
    ).unlink()  # the snapshot's link; the blob stays
    try:
        with pytest.raises(
            LocalEntryNotFoundError, match="cannot find the requested files in the local cache"
        ):
            instantiate(cfg.vision)(embed_dim=32)
    finally:
        build_tower_replica(on_teacher_replicas)


def hub_file(cache: Path, repo_id: str, name: str) -> Path:
    (snapshot,) = (cache / f"models--{repo_id.replace('/', '--')}" / "snapshots").iterdir()
    return snapshot / name
