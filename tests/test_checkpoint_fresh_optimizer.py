"""A checkpoint saved before the optimizer's first step (every problem of the steps so far dropped by
dynamic sampling) changes nothing: torch's get_state_dict initialises an empty optimizer by a
zero-gradient step, which would start AdamW's step count at 1; save and load undo it."""

from types import SimpleNamespace

import torch

from spiral_fast.recipe import checkpoint
from spiral_fast.recipe.tiny_model import tiny_qwen2


def _setup():
    model = tiny_qwen2(16, seed=0, hidden_size=16, num_layers=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return model, optimizer, scheduler


def _one_step(model, optimizer):
    ids = torch.arange(8)[None]
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def test_save_and_load_before_the_first_step_leave_the_optimizer_fresh(tmp_path):
    model, optimizer, scheduler = _setup()
    expected = _one_step(model, optimizer)  # no checkpoint

    model, optimizer, scheduler = _setup()
    kw = dict(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        data_position=0,
        tokenizer=SimpleNamespace(save_pretrained=lambda path: None),
        rank=0,
        world=1,
    )
    path = checkpoint.save(str(tmp_path), 1, **kw)
    assert not optimizer.state  # the save left it as it was
    after_save = _one_step(model, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(after_save, expected))
    assert optimizer.state[next(model.parameters())]["step"] == 1

    model, optimizer, scheduler = _setup()
    state = checkpoint.load(path, model=model, optimizer=optimizer, scheduler=scheduler, rank=0)
    assert state["optimizer_fresh"] is True and not optimizer.state
    resumed = _one_step(model, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(resumed, expected))
