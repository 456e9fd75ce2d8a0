"""The SPIRAL algorithm: set-level advantages (``advantages``) and the fused policy loss
(``policy_loss``), both stated once in plain PyTorch in ``reference``."""
