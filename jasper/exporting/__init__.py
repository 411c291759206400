"""Export a student as a sentence-transformers folder that plain ``SentenceTransformer(path)`` loads, every head
kept, optionally with ONNX graphs (float32 and int8) or as a query encoder for the teachers' document vectors.

- :mod:`jasper.exporting.folder`: the folder, its safe replacement, the vision tower (``export_checkpoint``)
- :mod:`jasper.exporting.onnx`: the ONNX graphs and their check against PyTorch
- :mod:`jasper.exporting.card`: the model card (README.md) and how models are named in it

See docs/export.md.
"""

from jasper.exporting.card import display_name, model_card, public_config, student_scores
from jasper.exporting.folder import (
    EXPORT_MARKER,
    ExportRefused,
    build_sentence_transformer,
    check_out,
    export_checkpoint,
    export_info,
    export_student,
    export_vision,
    load_multimodal,
)

__all__ = [
    "EXPORT_MARKER",
    "ExportRefused",
    "build_sentence_transformer",
    "check_out",
    "display_name",
    "export_checkpoint",
    "export_info",
    "export_student",
    "export_vision",
    "load_multimodal",
    "model_card",
    "public_config",
    "student_scores",
]
