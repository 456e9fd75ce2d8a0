"""Test configuration: markers, GPU auto-skip, and Triton's CPU interpreter.

Without CUDA, Triton kernels run on CPU tensors under TRITON_INTERPRET=1, which must be set before
triton is first imported: hence at the top of this conftest, before any test module loads.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        # markers, not keywords: keywords also hold the names of the test's folders (a checkout
        # under a directory named "gpu" would skip every test)
        if item.get_closest_marker("gpu") is not None and not HAS_CUDA:
            item.add_marker(skip_gpu)
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
