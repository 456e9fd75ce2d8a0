"""The package itself: import has no side effects, every public name resolves, kernels ship inside."""

import subprocess
import sys

import pytest

import spiral_fast


def test_import_pulls_in_neither_triton_nor_transformers():
    code = (
        "import sys, spiral_fast; "
        "heavy = [m for m in ('triton', 'transformers', 'matplotlib') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("name", sorted(spiral_fast._EXPORTS))
def test_public_name_resolves(name):
    assert getattr(spiral_fast, name) is not None
    assert name in dir(spiral_fast)


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        spiral_fast.no_such_thing


def test_kernels_ship_as_a_subpackage():
    import spiral_fast.kernels

    assert spiral_fast.kernels.__name__ == "spiral_fast.kernels"
