"""A sentence-transformers folder run with its encoder in ONNX Runtime: what ``SentenceTransformer(path,
backend="onnx")`` does (the transformer's token states from an ``onnx/*.onnx`` graph; pooling, Dense heads, Router
and Normalize as saved), for the places that score or time an ONNX export: evaluate.py, export.py's check of what
it wrote, and benchmarks/serving_bench.py.

Why not ``backend="onnx"`` itself: sentence-transformers loads the graph through optimum-onnx's
``ORTModelForFeatureExtraction``, and the newest optimum-onnx (0.1.0) requires transformers<4.58 while
sentence-transformers 6 requires transformers>=5 (huggingface/optimum-onnx#114), so it cannot be imported next to
them. The graph and its file names are the ones that backend reads (``onnx/model.onnx``,
``onnx/model_qint8_<config>.onnx``), so where optimum-onnx installs the folder loads with it unchanged;
:func:`backend_onnx_available` says whether it does here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

ONNX_DIR = "onnx"
ONNX_FILE = f"{ONNX_DIR}/model.onnx"


def backend_onnx_available() -> bool:
    """Whether ``SentenceTransformer(path, backend="onnx")`` can load here (optimum-onnx imports beside the
    installed transformers)."""
    if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("onnxruntime") is None:
        return False
    try:
        # optimum-onnx: optional, and the import itself is the test (it fails against transformers 5)
        from optimum.onnxruntime import ORTModelForFeatureExtraction  # noqa: F401
    except Exception:  # ImportError, or whatever a version mismatch raises on import
        return False
    return True


class OnnxTokenStates(nn.Module):
    """Stands in for the transformers model inside a sentence-transformers ``Transformer`` module: the same
    inputs, ``last_hidden_state`` from an ONNX Runtime session (CPU). ``threads``: ONNX Runtime's intra-op threads
    (None: its default, every core)."""

    def __init__(self, file: str | Path, config, threads: int | None = None) -> None:
        super().__init__()
        # onnxruntime: heavy, and only ONNX models need it
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.file = Path(file)
        self.session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.config = config

    def forward(self, input_ids, attention_mask, token_type_ids=None, **_) -> dict[str, torch.Tensor]:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if given["token_type_ids"] is None:  # a graph exported with token types, a tokenizer that gives none
            given["token_type_ids"] = torch.zeros_like(input_ids)
        feeds = {name: given[name].cpu().numpy().astype(np.int64) for name in self.input_names}
        (states,) = self.session.run(["last_hidden_state"], feeds)  # (B, L, H)
        return {"last_hidden_state": torch.from_numpy(states)}


def transformer_folder(folder: str | Path) -> Path:
    """Where a sentence-transformers folder keeps its Transformer module (the ``onnx/`` folder goes there)."""
    folder = Path(folder)
    modules = json.loads((folder / "modules.json").read_text())
    first = next(m for m in modules if m["type"].endswith("Transformer"))
    return folder / first["path"]


def load_onnx(folder: str | Path, file_name: str = ONNX_FILE, threads: int | None = None, **kwargs):
    """``SentenceTransformer(folder)`` with its encoder run from ``file_name`` (relative to the Transformer
    module's folder, as ``model_kwargs={"file_name": ...}`` is for ``backend="onnx"``)."""
    # sentence-transformers: heavy to import, and only ONNX models need it here
    from sentence_transformers import SentenceTransformer

    graph = transformer_folder(folder) / file_name
    if not graph.is_file():
        raise FileNotFoundError(
            f"{graph} does not exist: export with onnx=true (python export.py ckpt=... out={folder} onnx=true), "
            f"or name one of {sorted(str(p.name) for p in graph.parent.glob('*.onnx'))}"
        )
    model = SentenceTransformer(str(folder), device="cpu", **kwargs)
    transformer = model[0]
    transformer.model = OnnxTokenStates(graph, transformer.model.config, threads)
    return model.eval()
