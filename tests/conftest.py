"""Test configuration: markers, GPU auto-skip, and Triton's CPU interpreter.

Without CUDA, Triton kernels run on CPU tensors under TRITON_INTERPRET=1, which must be set before
triton is first imported: hence at the top of this conftest, before any test module loads.
"""

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_vllm = pytest.mark.skip(reason="vLLM is not installed (GPU: pip install vllm; CPU: see docs/vllm.md)")
    for item in items:
        # markers, not keywords: keywords also hold the names of the test's folders (a checkout
        # under a directory named "gpu" would skip every test)
        if item.get_closest_marker("gpu") is not None and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if item.get_closest_marker("vllm") is not None and not HAS_VLLM:
            item.add_marker(skip_vllm)
        if item.get_closest_marker("interpret") is not None:
            try:
                import triton  # noqa: F401
            except ImportError:
                item.add_marker(pytest.mark.skip(reason="triton is not installed"))


@pytest.fixture
def triton_device() -> torch.device:
    """Device on which Triton-backend tests put their tensors: CUDA when present, else the CPU
    (kernels then run under the interpreter)."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# The model of the session's vLLM engine: tests sync their own weights of this shape into it.
# Head size 32 (64 / 2 heads): vLLM's CPU attention supports no smaller one.
VLLM_MODEL = dict(vocab_size=50, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1)


class _SessionSampler:
    """One VLLMSampler per test session (an engine start takes ~40 s on a 2-core CPU); rebuilt only
    if a test closed it."""

    sampler = None

    @classmethod
    def get(cls):
        import spiral_fast
        from spiral_fast.recipe.tiny_model import tiny_qwen2

        if cls.sampler is None or cls.sampler._llm is None:
            model = tiny_qwen2(
                VLLM_MODEL["vocab_size"], seed=0, **{k: v for k, v in VLLM_MODEL.items() if k != "vocab_size"}
            )
            cls.sampler = spiral_fast.VLLMSampler(model, dtype="float32", kv_cache_memory_bytes=64 << 20)
        return cls.sampler


@pytest.fixture
def vllm_sampler():
    """The session's spiral_fast.VLLMSampler over a VLLM_MODEL-shaped tiny Qwen2 (fp32): sync your
    model into it first."""
    return _SessionSampler.get()


@pytest.fixture(scope="session", autouse=True)
def _close_session_sampler():
    yield
    if _SessionSampler.sampler is not None:
        _SessionSampler.sampler.close()
