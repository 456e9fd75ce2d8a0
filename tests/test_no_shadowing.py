"""Nothing at the repository root shadows another installed distribution's import name (issue 16).

`python -m pytest`, `python -m spiral_fast.train` and `torchrun -m spiral_fast.train` put the
repository root first on ``sys.path``. A top-level ``kernels/`` package once answered
transformers' ``from kernels import ...`` (Hugging Face's ``kernels``, which transformers 5.25 needs)
and broke every import of transformers' hub-kernel integration. The Triton kernels now live in
``spiral_fast/kernels/``. These tests run the real commands from the root, in subprocesses.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_from_root(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _root_import_names() -> set[str]:
    """Names the repository root answers as regular modules or packages (a folder without an
    ``__init__.py`` is only a namespace portion: a regular package found later on sys.path wins)."""
    names = {p.stem for p in ROOT.glob("*.py")}
    names |= {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    return names


def test_root_holds_no_import_name_of_another_distribution():
    owners = importlib.metadata.packages_distributions()
    clashes = {
        name: owners[name]
        for name in _root_import_names()
        if name in owners and set(owners[name]) - {"spiral_fast", "spiral-fast"}
    }
    assert not clashes, f"the repository root shadows installed distributions' import names: {clashes}"
    assert not (ROOT / "kernels").exists(), "a top-level kernels/ shadows Hugging Face's `kernels` package"


@pytest.mark.skipif(importlib.util.find_spec("kernels") is None, reason="Hugging Face's `kernels` is not installed")
def test_transformers_hub_kernels_imports_from_the_root():
    pytest.importorskip("transformers")
    res = _run_from_root("-c", "import kernels, transformers.integrations.hub_kernels; print(kernels.__file__)")
    assert res.returncode == 0, res.stderr[-2000:]
    assert not Path(res.stdout.strip()).resolve().is_relative_to(ROOT), f"`kernels` came from the repo: {res.stdout}"


def test_training_command_starts_from_the_root():
    res = _run_from_root("-m", "spiral_fast.train", "--help")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "--config" in res.stdout


def test_spiral_fast_kernels_still_importable():
    res = _run_from_root("-c", "import spiral_fast.kernels as k, spiral_fast.kernels.logprobs; print(k.__name__)")
    if res.returncode != 0 and "triton" in res.stderr.lower() and importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "spiral_fast.kernels"
