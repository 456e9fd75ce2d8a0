"""The SPIRAL training step: batch containers, configuration, the fast ``step`` and its naive twin
``step_reference``. Public names are re-exported lazily by ``spiral_fast``."""
