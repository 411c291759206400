"""Text sources, augmentation and the distillation DataModule."""

from jasper.data.augment import augment
from jasper.data.corpus import EnglishProse
from jasper.data.datamodule import TextDistillDataModule
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
