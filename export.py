"""Export a student as a sentence-transformers folder with every head: python export.py ckpt=PATH out=DIR
[onnx=true] [query_encoder=true] (docs/export.md)."""

import sys

import hydra
from omegaconf import DictConfig

import jasper.training.resolvers  # noqa: F401  (registers the config resolvers)
from jasper.exporting import ExportRefused, export_checkpoint
from jasper.training.command_line import quote_paths


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        out = export_checkpoint(
            cfg.ckpt,
            cfg.out,
            scores=cfg.scores,
            overwrite=cfg.overwrite,
            onnx=cfg.onnx,
            onnx_quantize=list(cfg.onnx_quantize or []),
            query_encoder=cfg.query_encoder,
        )
        print(out)
    except ExportRefused as error:  # an out folder export will not replace: one line, no traceback
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    sys.argv[1:] = quote_paths(sys.argv[1:])  # a job folder's name holds "=": Hydra needs it quoted
    main()
