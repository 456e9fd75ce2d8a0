"""The C++ layout builder (spiral_fast.packing._native) gives exactly the batches of the Python reference,
and its absence is announced once, at import of spiral_fast.packing."""

import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from packing_cases import CASES, deep_chain, random_forest

import spiral_fast as sf
from spiral_fast.packing import native

needs_native = pytest.mark.skipif(not native.native_available(), reason="spiral_fast.packing._native is not built")


def forests():
    cases = [
        pytest.param(random_forest(seed, **kw), id=f"{name}-seed{seed}")
        for name, kw in CASES.items()
        for seed in range(4)
    ]
    # root fan-out above the C++ hash-index threshold, then splits under an indexed node
    wide = [[t] for t in range(50)] + [[t, 1, 2] for t in range(0, 50, 3)] + [[7, 1, 5], [7, 1]]
    cases.append(pytest.param(wide, id="wide-root"))
    cases.append(pytest.param(deep_chain(80), id="deep-chain-80"))
    cases.append(pytest.param(list(reversed(deep_chain(40))), id="deep-chain-longest-first"))
    cases.append(pytest.param([[2**62, 0, 2**62], [2**62, 0]], id="huge-token-ids"))
    return cases


@needs_native
@pytest.mark.parametrize("seqs", forests())
def test_cpp_equals_python(seqs):
    assert sf.pack_sequences(seqs, builder="cpp") == sf.pack_sequences(seqs, builder="python")


@needs_native
@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=8), min_size=1, max_size=12))
def test_cpp_equals_python_hypothesis(seqs):
    assert sf.pack_sequences(seqs, builder="cpp") == sf.pack_sequences(seqs, builder="python")


@needs_native
def test_cpp_equals_python_spiral_shape():
    # a SPIRAL-like batch: prompt -> traces, aggregation prompts (template + prompt + traces) -> responses
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 50, (16,), generator=g)
    traces = [torch.cat([prompt, torch.randint(0, 50, (32,), generator=g)]) for _ in range(4)]
    aggs = []
    for members in ([0, 1], [1, 2], [1, 2]):
        ctx = torch.cat([torch.tensor([1, 2, 3]), prompt] + [traces[m][16:] for m in members])
        aggs += [torch.cat([ctx, torch.randint(0, 50, (8,), generator=g)]) for _ in range(3)]
    seqs = traces + aggs
    a, b = sf.pack_sequences(seqs, builder="cpp"), sf.pack_sequences(seqs, builder="python")
    assert a == b and a.dedup_ratio > 2


@needs_native
def test_cpp_equals_python_multithreaded_fill():
    # above the C++ builder's threading threshold (2^16 tokens + rows); 1-token sequences at the end
    # have no prediction rows and must still get their seq_segment from the last worker
    g = torch.Generator().manual_seed(1)
    base = [torch.randint(0, 3, (n,), generator=g) for n in torch.randint(1, 3000, (40,), generator=g).tolist()]
    seqs = base + [torch.cat([s, torch.randint(0, 3, (50,), generator=g)]) for s in base[:20]] + [[1], [2], [0]]
    a, b = sf.pack_sequences(seqs, builder="cpp"), sf.pack_sequences(seqs, builder="python")
    assert a.num_tokens + a.prediction_rows.seq.numel() > 2**16
    assert a == b


def test_fallback_without_extension(monkeypatch):
    seqs = random_forest(0, **CASES["shared-small-vocab"])
    expected = sf.pack_sequences(seqs, builder="python")
    monkeypatch.setattr(native, "_native", lambda: None)
    assert sf.pack_sequences(seqs) == expected
    with pytest.raises(ValueError, match="not built"):
        sf.pack_sequences(seqs, builder="cpp")


def test_bad_builder():
    with pytest.raises(ValueError, match="builder"):
        sf.pack_sequences([[1]], builder="rust")


def _run_python(code: str) -> str:
    """stdout of ``code`` in a fresh interpreter (an import-time warning fires once per process)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=pathlib.Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_missing_extension_warns_once_at_import_of_packing():
    # sys.modules[name] = None makes `import name` raise ImportError: the extension as if never built
    out = _run_python("""
        import sys, warnings
        sys.modules["spiral_fast.packing._native"] = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import spiral_fast as sf
            print("after import spiral_fast:", len(caught))
            import spiral_fast.packing
            import spiral_fast.packing.native as native
            a = sf.pack_sequences([[1, 2, 3], [1, 2, 4]])
            b = sf.pack_sequences([[1, 2, 3], [1, 2, 4]], builder="python")
        fallback = [w for w in caught if issubclass(w.category, native.PackingFallbackWarning)]
        print("fallback warnings:", len(fallback), "others:", len(caught) - len(fallback))
        print("same layout:", a == b, "native:", native.native_available())
        print("message:", fallback[0].message)
    """)
    assert "after import spiral_fast: 0" in out  # import spiral_fast itself stays silent (lazy)
    assert "fallback warnings: 1 others: 0" in out  # once, though packing was imported and used twice
    assert "same layout: True native: False" in out
    assert "spiral_fast.packing._native" in out and "pip install -e ." in out  # what is missing, how to fix it


@needs_native
def test_built_extension_is_in_the_packing_package_and_imports_silently():
    assert native._extension.__name__ == "spiral_fast.packing._native"
    root = pathlib.Path(sf.__file__).parent
    assert not list(root.glob("_native*")), "a stale extension at the package root (the old build's name)"
    out = _run_python("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import spiral_fast.packing.native as native
        print("warnings:", [str(w.message) for w in caught if issubclass(w.category, native.PackingFallbackWarning)])
    """)
    assert "warnings: []" in out
