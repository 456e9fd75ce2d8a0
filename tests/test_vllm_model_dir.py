"""The folder a VLLMSampler writes a model object into is the same path in every process for the
same config (vLLM's compile cache key includes the model path), distinct for samplers alive at the
same time, and reclaimed from a process that died. CPU only: no engine is built."""

import os
import shutil
import subprocess
import sys

from transformers import Qwen2Config

from spiral_fast.rollout.vllm import _OWNER, _claim_model_dir


def config(**kw):
    args = dict(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        vocab_size=50,
    )
    return Qwen2Config(**{**args, **kw})


def test_same_config_same_path_after_release_and_a_new_slot_while_held():
    a = _claim_model_dir(config())
    try:
        assert os.listdir(a) == [_OWNER]
        b = _claim_model_dir(config())  # a is still held: another slot
        assert b != a and b.rsplit("-", 1)[0] == a.rsplit("-", 1)[0]
        other = _claim_model_dir(config(intermediate_size=32))
        assert other.rsplit("-", 1)[0] != a.rsplit("-", 1)[0]
        for d in (b, other):
            shutil.rmtree(d)
    finally:
        shutil.rmtree(a)
    again = _claim_model_dir(config())
    shutil.rmtree(again)
    assert again == a


def test_another_process_gets_the_same_path_and_a_dead_owner_is_reclaimed():
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); from test_vllm_model_dir import "
        "config; from spiral_fast.rollout.vllm import _claim_model_dir; print(_claim_model_dir(config()))"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    # the child exited without releasing its folder: it is orphaned, and this process reclaims it
    try:
        assert open(os.path.join(child, _OWNER)).read() != str(os.getpid())
        mine = _claim_model_dir(config())
        assert mine == child and open(os.path.join(mine, _OWNER)).read() == str(os.getpid())
    finally:
        shutil.rmtree(child, ignore_errors=True)
