"""SPIRAL rollouts: sample traces, draw sets, render aggregation prompts, sample and score aggregations.

``spiral_fast.rollout(sampler, task, problems, config)`` returns a :class:`spiral_fast.SpiralBatch`
ready for ``spiral_fast.step``: a :class:`spiral_fast.Task` gives the prompts, aggregation template,
reward, EOS and padding, a :class:`RolloutConfig` the sizes and sampling settings. A :class:`Sampler`
samples: ``HFSampler`` (Hugging Face ``generate``) or, where vLLM is installed,
``spiral_fast.VLLMSampler`` (``vllm.LLM.generate`` with prefix caching). The keyword form of earlier
releases, ``rollout(model, prompts, reward_fn=..., template=..., num_traces=...)``, still works and
emits a ``DeprecationWarning``.

Vocabulary: P problems, N traces per problem, M sets per problem, K traces per set, G aggregation
responses per set. Token ids are plain Python ints throughout.
"""

from __future__ import annotations

import sys
import types

from spiral_fast.rollout.config import RolloutConfig
from spiral_fast.rollout.core import RewardFn, Template, rollout
from spiral_fast.rollout.sampler import ENGINES, HFSampler, Sampler, as_sampler
from spiral_fast.rollout.sets import AggregationTemplate, draw_sets

__all__ = ["AggregationTemplate", "HFSampler", "RolloutConfig", "Sampler", "as_sampler", "draw_sets", "rollout"]


class _CallableModule(types.ModuleType):
    """``spiral_fast.rollout`` is both this module (spiral_fast's lazy __getattr__ returns the
    submodule, and tests import helpers from it) and the function users call:
    ``spiral_fast.rollout(sampler, task, problems, config)`` (or the keyword form) forwards to
    :func:`rollout`."""

    def __call__(self, *args, **kwargs):
        return rollout(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
