"""The SPIRAL clipped policy loss fused over packed token rows (`spiral_fast.policy_loss`): the
reference formulas (`reference.py`) and the op with its Triton path and self-check (`op.py`)."""
