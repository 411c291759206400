"""Hub replicas: tiny, randomly initialised stand-ins for the paper's teachers, written into a Hugging Face cache
under their exact ids, file layouts and pinned commits, so the configs that name them load them unchanged, offline.

    python -m jasper.data.replicas /tmp/hub     # these, the tower and the datasets; prints replica_env

- ``NovaSearch/stella_en_1.5B_v5``: a 4-layer Qwen2 (hidden size 32) in the real repository's sentence-transformers
  layout: the Transformer at the root, ``1_Pooling`` (mean), ``modules.json`` naming ``2_Dense_1024``, and beside
  it one Dense head per size (``2_Dense_256`` ... ``2_Dense_8192``, the real output sizes, each a
  ``pytorch_model.bin`` as the real ones are); the card's ``s2p_query`` / ``s2s_query`` prompts in
  ``config_sentence_transformers.json``.
- ``nvidia/NV-Embed-v2``: custom code (:mod:`jasper.models.nvembed_replica`, written for jasper) that
  ``AutoModel.from_pretrained(..., trust_remote_code=True)`` loads from the snapshot: ``NVEmbedModel`` with
  ``encode(prompts, instruction=..., max_length=...)``, the EOS token after every input, right padding, the
  instruction left out of the pooling, 4096-d vectors; beside it the sentence-transformers files (``modules.json``,
  ``1_Pooling``) the real repository has.
- ``timm/vit_so400m_patch14_siglip_384.webli``: the stage-4 tower's weights where timm looks for them
  (:func:`build_tower_replica`), at a narrow shape (``SIGLIP_SHAPE``, given to timm as ``vision.timm_kwargs``).

The datasets' replicas, and one command for all of them, are in :mod:`jasper.data.replicas`.
Both tokenizers are the packaged all-MiniLM-L6-v2's (offline), NV-Embed's with an EOS token added (Mistral's has one).
The weights are random, drawn from a fixed seed: the vectors mean nothing, their sizes and the code that makes them
are the real ones. Each file is stored as the hub cache stores a download (:func:`write_snapshot`), so jasper's
own lookups (``local_folder``, the files' digest, ``hub_commit``) see what they would see after ``hf download``.

Run on them with :func:`replica_env`'s variables, ``HF_MODULES_CACHE`` included: transformers copies remote code
into ``HF_MODULES_CACHE`` under the repository's commit and never refreshes a commit it holds, so the stand-in's
code loaded with the default (``~/.cache/huggingface/modules``) would later run in place of the real NV-Embed-v2 at
that commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer, MistralConfig, Qwen2Config

from jasper.models.nvembed_replica.configuration_nvembed import LatentAttentionConfig, NVEmbedConfig
from jasper.models.nvembed_replica.modeling_nvembed import NVEmbedModel
from jasper.models.packaged import packaged_minilm

STELLA = "NovaSearch/stella_en_1.5B_v5"
NV_EMBED = "nvidia/NV-Embed-v2"
# The commits the replicas are written at: those conf/teachers/nvembed_stella.yaml pins (tests/test_replicas.py
# holds them equal), which are the revisions mteb 2.26's model registry evaluates.
REVISIONS = {
    NV_EMBED: "7604d305b621f14095a1aa23d351674c2859553a",
    STELLA: "d03be74b361d4eb24f42a2fe5bd2e29917df4604",
}
STELLA_HEADS = (256, 512, 768, 1024, 2048, 4096, 6144, 8192)  # the real repository's 2_Dense_<size> folders
STELLA_DEFAULT_HEAD = 1024  # the one its modules.json names
STELLA_PROMPTS = {
    "s2p_query": "Instruct: Given a web search query, retrieve relevant passages that answer the query.\nQuery: ",
    "s2s_query": "Instruct: Retrieve semantically similar text.\nQuery: ",
}
NV_EMBED_DIM = 4096
HIDDEN = 32  # both stand-ins' text models
# More than the 3 layers the paper's stage 2 unfreezes in its student (stella itself), so one stays frozen.
STELLA_LAYERS = 4
MARKER = ".jasper-replica"  # in a repository folder this module wrote; any other is never overwritten
# Stored by the hub as LFS files (weights, the datasets' shards), named in the cache by their SHA-256.
LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".gz", ".tar")


def build_teacher_replicas(
    cache_dir: str | Path, revisions: Mapping[str, str] = REVISIONS
) -> dict[str, Path]:
    """Write both stand-ins into the Hugging Face cache ``cache_dir`` (``HF_HUB_CACHE``), each at its commit in
    ``revisions`` (also ``refs/main``); returns ``{hub id: snapshot folder}``. The same files on every call."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    snapshots = {}
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".staging-") as staging:
        for repo_id, write in ((STELLA, write_stella), (NV_EMBED, write_nvembed)):
            folder = Path(staging) / repo_id.replace("/", "--")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                write(folder)
            snapshots[repo_id] = write_snapshot(cache_dir, repo_id, folder, revisions[repo_id])
    return snapshots


def replica_env(cache_dir: str | Path) -> dict[str, str]:
    """The environment that runs jasper on the replicas in ``cache_dir``: its hub cache, offline, and remote code
    copied to a modules folder of its own (never the user's, where it would stand in for the real commit)."""
    cache_dir = Path(cache_dir).resolve()
    return {
        "HF_HUB_CACHE": str(cache_dir),
        "HF_MODULES_CACHE": str(cache_dir / "modules"),
        "HF_HUB_OFFLINE": "1",
    }


def write_snapshot(
    cache_dir: str | Path, repo_id: str, source: Path, commit: str, repo_type: str = "model"
) -> Path:
    """Lay ``source``'s files out as the Hugging Face cache holds ``repo_id`` downloaded at ``commit``: each file's
    bytes in ``blobs/<hash>`` (SHA-256 for weights, as LFS names them; the git blob id for the rest), a relative
    symlink to it at ``snapshots/<commit>/<path>``, and ``refs/main`` holding the commit. A repository folder that
    this module did not write (a real download) is refused, never overwritten. Returns the snapshot folder."""
    repo = Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    if repo.exists():
        if not (repo / MARKER).exists():
            raise FileExistsError(
                f"{repo} holds a real download of {repo_id}, not a replica: point the replica builder at a cache "
                "folder of its own"
            )
        shutil.rmtree(repo)
    snapshot = repo / "snapshots" / commit
    for path in sorted(p for p in Path(source).rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix in LFS_SUFFIXES:
            name = hashlib.sha256(data).hexdigest()
        else:
            name = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 (git's blob id)
        blob = repo / "blobs" / name
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / MARKER).write_text(json.dumps({"repo_id": repo_id, "commit": commit}))
    return snapshot


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _tokenizer(folder: Path, eos: str | None = None) -> int:
    """The packaged MiniLM tokenizer saved into ``folder`` (with an ``eos`` token added); returns its size."""
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm())
    if eos is not None:
        tokenizer.add_special_tokens({"eos_token": eos})
    tokenizer.save_pretrained(folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["model_input_names"] = ["input_ids", "attention_mask"]  # as Qwen2's and Mistral's: no token types
    _write_json(config_file, config)
    return len(tokenizer)


def _pooling(folder: Path, width: int) -> None:
    modes = (
        "cls_token",
        "mean_tokens",
        "max_tokens",
        "mean_sqrt_len_tokens",
        "weightedmean_tokens",
        "lasttoken",
    )
    _write_json(
        folder / "1_Pooling" / "config.json",
        {"word_embedding_dimension": width, **{f"pooling_mode_{m}": m == "mean_tokens" for m in modes}},
    )


def _modules(folder: Path, dense: str | None) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if dense is not None:
        modules.append({"idx": 2, "name": "2", "path": dense, "type": "sentence_transformers.models.Dense"})
    _write_json(folder / "modules.json", modules)


# Both stand-ins' decoders: width HIDDEN, grouped-query attention as the real ones; 2 layers (stella: STELLA_LAYERS).
TINY_DECODER = dict(
    hidden_size=HIDDEN,
    intermediate_size=2 * HIDDEN,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def write_stella(folder: Path) -> None:
    """stella_en_1.5B_v5's layout, with a 4-layer Qwen2 of hidden size 32 and every Dense head at its real size."""
    vocab = _tokenizer(folder)
    config = Qwen2Config(
        vocab_size=vocab,
        **{**TINY_DECODER, "num_hidden_layers": STELLA_LAYERS},
        max_position_embeddings=131072,
    )
    AutoModel.from_config(config).save_pretrained(folder)
    _pooling(folder, HIDDEN)
    _modules(folder, f"2_Dense_{STELLA_DEFAULT_HEAD}")
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": 512, "do_lower_case": False})
    _write_json(
        folder / "config_sentence_transformers.json",
        {"prompts": STELLA_PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )
    for size in STELLA_HEADS:
        head = folder / f"2_Dense_{size}"
        _write_json(
            head / "config.json",
            {
                "in_features": HIDDEN,
                "out_features": size,
                "bias": True,
                "activation_function": "torch.nn.modules.linear.Identity",
            },
        )
        linear = torch.nn.Linear(HIDDEN, size)
        torch.save(
            {"linear.weight": linear.weight.data, "linear.bias": linear.bias.data}, head / "pytorch_model.bin"
        )


def write_nvembed(folder: Path) -> None:
    """NV-Embed-v2's layout: its remote code (the stand-in's), config, weights, tokenizer, sentence-transformers
    files. 4096-d output from a 2-layer Mistral of hidden size 32."""
    vocab = _tokenizer(folder, eos="</s>")
    text = MistralConfig(vocab_size=vocab, **TINY_DECODER, max_position_embeddings=32768, sliding_window=None)
    latent = LatentAttentionConfig(hidden_dim=NV_EMBED_DIM, latent_dim=NV_EMBED_DIM, input_dim=HIDDEN)
    model = NVEmbedModel(NVEmbedConfig(latent_attention_config=latent, text_config=text))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    config = {
        "architectures": ["NVEmbedModel"],
        "auto_map": {
            "AutoConfig": "configuration_nvembed.NVEmbedConfig",
            "AutoModel": "modeling_nvembed.NVEmbedModel",
        },
        "model_type": "nvembed",
        "add_eos": True,
        "add_pad_token": True,
        "is_mask_instruction": True,
        "mask_type": "b",
        "padding_side": "right",
        "latent_attention_config": {k: getattr(latent, k) for k in _LATENT_KEYS},
        "text_config": {**text.to_dict(), "model_type": "mistral"},
        "torch_dtype": "float32",
    }
    config["text_config"].pop("transformers_version", None)
    _write_json(folder / "config.json", config)
    code = Path(__file__).with_name("nvembed_replica")
    for name in ("configuration_nvembed.py", "modeling_nvembed.py"):
        shutil.copyfile(code / name, folder / name)
    _pooling(folder, NV_EMBED_DIM)
    _modules(folder, None)
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": 32768, "do_lower_case": False})


_LATENT_KEYS = (
    "num_latents_value",
    "num_cross_heads",
    "cross_dim_head",
    "hidden_dim",
    "latent_dim",
    "input_dim",
    "output_normalize",
)


# The paper's vision tower (conf/vision/siglip_so400m.yaml): timm names it vit_so400m_patch14_siglip_384, whose
# pretrained config (tag "webli") points at the hub repository below; timm reads model.safetensors from it through
# huggingface_hub, so offline it is read from HF_HUB_CACHE like any download.
SIGLIP = "vit_so400m_patch14_siglip_384"
SIGLIP_REPO = f"timm/{SIGLIP}.webli"
# The stand-in's shape (vision.timm_kwargs): so400m itself (428M parameters, width 1152, 27 layers) took 29 s to
# build and 23 s to encode one 384-px image on one CPU core here, so the stand-in keeps its patch size and resolution
# (a 27x27 grid of 729 patch tokens, what the pooling sees) and shrinks width and depth.
SIGLIP_SHAPE = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def build_tower_replica(cache_dir: str | Path, shape: Mapping[str, int] = SIGLIP_SHAPE) -> Path:
    """Write the SigLIP tower's hub repository (``timm/vit_so400m_patch14_siglip_384.webli``: timm's
    ``config.json`` and ``model.safetensors``, as ``timm.models.push_to_hf_hub`` writes them) with random weights of
    ``shape`` (load it with ``vision.timm_kwargs`` set to the same). Returns the snapshot folder."""
    import timm  # heavy (torchvision); only the tower's replica needs it
    from timm.models import save_for_hf

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(cache_dir), prefix=".staging-") as staging:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = timm.create_model(SIGLIP, pretrained=False, num_classes=0, **shape)
        save_for_hf(model, staging, model_args=dict(shape), safe_serialization=True)
        commit = hashlib.sha1(f"jasper replica of {SIGLIP_REPO}".encode()).hexdigest()  # noqa: S324 (a name)
        return write_snapshot(cache_dir, SIGLIP_REPO, Path(staging), commit)
