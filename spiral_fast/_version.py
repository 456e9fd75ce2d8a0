"""The library version (one place: the package, the training command's records)."""

__version__ = "0.1.0"
