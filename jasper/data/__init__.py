"""Text sources, augmentation and the distillation DataModule."""

from jasper.data.augment import augment
from jasper.data.corpus import EnglishProse
from jasper.data.files import LocalFiles
from jasper.data.sources import HubDataset, PythonDocstrings, TextFiles

__all__ = [
    "EnglishProse",
    "HubDataset",
    "LocalFiles",
    "PythonDocstrings",
    "TextDistillDataModule",
    "TextFiles",
    "augment",
]


def __getattr__(name: str):
    if name == "TextDistillDataModule":
        # It imports Lightning (seconds on 2 cores): loaded when a config names it
        # (`_target_: jasper.data.TextDistillDataModule`), not whenever evaluation reads a corpus source
        from jasper.data.datamodule import TextDistillDataModule

        return TextDistillDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
