"""jasper: distil several text-embedding teachers into one small student (Jasper and Stella recipe)."""

__version__ = "0.1.0"
