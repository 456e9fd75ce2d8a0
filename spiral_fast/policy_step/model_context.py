"""Context managers that set the model up for the step's forward and backward and restore it after."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def activation_checkpointing(model, enabled: bool):
    """Turn on the HF model's activation (gradient) checkpointing for the step, restore it after.

    transformers 5 names it ``activation_checkpointing_*`` (``gradient_checkpointing_*`` are
    deprecated aliases); older versions only have the latter. HF checkpoints in train mode only.
    """
    new_api = hasattr(model, "activation_checkpointing_enable")
    was_on = bool(getattr(model, "is_activation_checkpointing" if new_api else "is_gradient_checkpointing", False))
    if enabled and not was_on:
        kwargs = {"use_reentrant": False}
        if new_api:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    try:
        yield
    finally:
        if enabled and not was_on:
            (model.activation_checkpointing_disable if new_api else model.gradient_checkpointing_disable)()


@contextlib.contextmanager
def attention_implementation(model, name: str | None):
    """Keep ``model.config._attn_implementation = name`` until the backward is done: layers
    recomputed by activation checkpointing read it again, and must run the attention of the
    original forward (``packed_hidden_states`` alone restores it as soon as its forward returns).
    name None: leave the model as it is."""
    if name is None:
        yield
        return
    previous = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = previous
