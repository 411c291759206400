"""The stage-1 feature cache: the student's frozen encoder as a cache encoder (pooled states, not normalised)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from jasper.models.encoders import weights_digest


class PooledFeatures:
    """The student's frozen encoder as a cache encoder: mean-pooled last hidden states, float32, not normalised.

    Stage 1 trains FC1 only, so these features are a fixed function of the text: cached once, FC1 trains on
    them without running the encoder. The folder name carries a hash of the encoder's weights and the max
    length, so a student initialised differently, or one that reads longer texts, never reads another's features.
    """

    normalize = False
    cache_dtype = "float32"
    pooling = "mean"

    def __init__(self, student: torch.nn.Module) -> None:
        self.student = student
        self.weights = weights_digest(student.encoder)
        self.name = f"student-features-{self.weights}-len{student.max_length}"
        self.model_name_or_path = student.model_name_or_path
        self.prompt = student.prompt
        self.max_length = student.max_length
        self.dim = student.encoder.config.hidden_size
        self.fingerprint_extra = {"weights": self.weights, "layers": student.encoder.config.num_hidden_layers}

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Tensor:
        was_training = self.student.encoder.training
        self.student.encoder.eval()  # as stage 1 runs it: dropout off
        device = next(self.student.encoder.parameters()).device
        try:
            chunks = []
            for start in range(0, len(texts), batch_size):
                batch = self.student.tokenize(texts[start : start + batch_size]).to(device)
                chunks.append(self.student.pooled(batch["input_ids"], batch["attention_mask"]).float().cpu())
        finally:
            self.student.encoder.train(was_training)
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim)
