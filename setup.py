"""Build script: the Python package (Triton kernels in `spiral_fast/kernels/`) and the optional
C++ extension `spiral_fast.packing._native` (csrc/, pybind11) that builds packed layouts on the host.

The extension is optional: where no compiler is available the build goes on without it and
spiral_fast falls back to its pure-Python layout builder (same results, much slower). A pip build
hides this script's output (`-q`), so `import spiral_fast.packing` warns once when the extension is
missing (spiral_fast/packing/native.py), naming the rebuild command.
"""

import glob

from setuptools import find_packages, setup

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext
except ImportError:  # pybind11 missing in a non-isolated build: ship without the extension
    Pybind11Extension = None
    from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Turns a failed compile into a warning: the pure-Python builder is the fallback."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any toolchain failure
            print(f"warning: spiral_fast.packing._native not built ({exc}); using the Python fallback")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"warning: {ext.name} not built ({exc}); using the Python fallback")


sources = sorted(glob.glob("csrc/*.cpp"))
ext_modules = []
if Pybind11Extension is not None and sources:
    ext_modules.append(
        Pybind11Extension("spiral_fast.packing._native", sources, cxx_std=17, extra_compile_args=["-O3"])
    )

setup(
    packages=find_packages(include=["spiral_fast", "spiral_fast.*"]),
    ext_modules=ext_modules,
    cmdclass={"build_ext": OptionalBuildExt},
)
