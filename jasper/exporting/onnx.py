"""The ONNX files of an export, in the layout sentence-transformers' ``backend="onnx"`` reads: ``onnx/model.onnx``
(float32) and ``onnx/model_qint8_<config>.onnx`` (dynamically quantised int8, as
``sentence_transformers.export_dynamic_quantized_onnx_model(model, "<config>", path)`` names and configures them).

The graph is the encoder alone (``input_ids``, ``attention_mask``[, ``token_type_ids``] -> ``last_hidden_state``,
batch and sequence dynamic), as optimum exports a feature-extraction model; pooling, heads and normalisation stay
in the folder's PyTorch modules, so every head of the export serves from one graph.

Why not sentence-transformers' own export: it goes through optimum-onnx, which cannot be imported next to
transformers 5 (see :mod:`jasper.evaluation.onnx_model`). So the graph is written with ``torch.onnx.export`` and
quantised with ONNX Runtime's ``quantize_dynamic``, the call optimum's ``ORTQuantizer`` makes, with the settings of
optimum's ``AutoQuantizationConfig.<config>(is_static=False)`` (`QUANTIZATIONS`). Each file is checked before the
export is kept: the sentence vectors through it against PyTorch's on `PROBE` texts (`check_file`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from jasper.evaluation.onnx_model import ONNX_DIR, ONNX_FILE, load_onnx, transformer_folder

log = logging.getLogger(__name__)

OPSET = 17
# optimum's AutoQuantizationConfig.<name>(is_static=False): activations uint8 asymmetric (quantised at run time),
# weights symmetric per channel, no reduced range; only the weight type differs (avx2 has no fast s8 x u8 kernel).
QUANTIZATIONS = {"arm64": "QInt8", "avx2": "QUInt8", "avx512": "QInt8", "avx512_vnni": "QInt8"}
# Texts of several lengths in one padded batch: the graph is traced with padding, and checked on it.
PROBE = [
    "A man is playing a guitar.",
    "The quarterly report shows that revenue grew by twelve percent while operating costs stayed flat, "
    "which the board attributed to the new pricing model introduced in the spring.",
    "cat",
    "Where can I renew my passport?",
]
FLOAT_TOLERANCE = (
    1e-4  # largest |difference| of a float32 graph's unit vectors from PyTorch's (measured ~3e-6)
)
INT8_MIN_COSINE = 0.95  # an int8 graph whose vectors fall below this cosine to PyTorch's is refused


def int8_file(config: str) -> str:
    return f"{ONNX_DIR}/model_qint8_{config}.onnx"


class TokenStates(nn.Module):
    """The encoder with positional inputs (what ``torch.onnx.export`` traces) -> ``(B, L, H)`` token states."""

    def __init__(self, encoder: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.names = list(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.encoder(**dict(zip(self.names, inputs, strict=True))).last_hidden_state


def write_onnx(model, folder: Path, quantize: Sequence[str] = ("avx512_vnni",)) -> dict:
    """Write the ONNX files of ``model`` (the export's in-memory ``SentenceTransformer``, already saved to
    ``folder``) and return what ``jasper_export.json`` records of them: each file, its weights and its check."""
    # onnxruntime's quantiser: heavy, and only export with onnx=true needs it
    from onnxruntime.quantization import QuantType, quantize_dynamic

    unknown = [q for q in quantize if q not in QUANTIZATIONS]
    if unknown:
        raise ValueError(
            f"onnx_quantize: unknown {unknown}; choose from {sorted(QUANTIZATIONS)} (or [] for none)"
        )
    transformer = model[0]
    probe = transformer.tokenizer(PROBE, padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in probe]
    base = transformer_folder(folder)
    (base / ONNX_DIR).mkdir(parents=True, exist_ok=True)
    dynamic = {n: {0: "batch_size", 1: "sequence_length"} for n in [*names, "last_hidden_state"]}
    # dynamo=False: the TorchScript exporter (what optimum uses for these encoders; needs no onnxscript)
    torch.onnx.export(
        TokenStates(transformer.auto_model, names).eval(),
        tuple(probe[n] for n in names),
        str(base / ONNX_FILE),
        input_names=names,
        output_names=["last_hidden_state"],
        dynamic_axes=dynamic,
        opset_version=OPSET,
        dynamo=False,
    )
    files = {ONNX_FILE: {"weights": "float32"}}
    for config in quantize:
        quantize_dynamic(
            str(base / ONNX_FILE),
            str(base / int8_file(config)),
            per_channel=True,
            reduce_range=False,
            weight_type=getattr(QuantType, QUANTIZATIONS[config]),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        files[int8_file(config)] = {"weights": f"int8 (dynamic, {config})"}
    reference = _unit_vectors(model)
    for name, spec in files.items():
        spec.update(check_file(folder, name, reference))
    return {"files": files, "opset": OPSET, "probe_texts": len(PROBE)}


def _unit_vectors(model) -> torch.Tensor:
    return model.encode(PROBE, convert_to_tensor=True, normalize_embeddings=True).float().cpu()


def check_file(folder: Path, name: str, reference: torch.Tensor) -> dict:
    """The probe texts' vectors (the default head) through graph ``name`` against PyTorch's ``reference``: a
    float32 graph must agree within `FLOAT_TOLERANCE`, an int8 one keep a cosine of `INT8_MIN_COSINE`; a graph
    that does not was traced wrong (or quantised too coarsely) and the export stops naming the numbers."""
    vectors = _unit_vectors(load_onnx(folder, name))
    largest = float((vectors - reference).abs().max())
    cosine = float((vectors * reference).sum(-1).min())
    if name == ONNX_FILE and largest > FLOAT_TOLERANCE:
        raise RuntimeError(
            f"{name}: vectors differ from PyTorch's by up to {largest:.2e} (> {FLOAT_TOLERANCE}): the traced graph "
            "is wrong for this encoder; export without onnx=true and report the model type"
        )
    if name != ONNX_FILE and cosine < INT8_MIN_COSINE:
        raise RuntimeError(
            f"{name}: the int8 vectors' cosine to PyTorch's falls to {cosine:.3f} (< {INT8_MIN_COSINE}): ship the "
            "float32 graph only (onnx_quantize=[])"
        )
    log.info("%s: max |diff| %.2e, min cosine %.6f against PyTorch", name, largest, cosine)
    return {
        "max_abs_diff": largest,
        "min_cosine": cosine,
        "check": f"max abs diff {largest:.1e}, min cosine {cosine:.5f}",
    }
