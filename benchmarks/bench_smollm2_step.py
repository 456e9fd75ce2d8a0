"""The whole step on the real model (issue 19): SmolLM2-135M-Instruct + LoRA r=16, ``spiral_fast.step``
against TRL's GRPO actor path, a plain transformers forward and ``step_reference``, each case in a
fresh process (``step_case.py``), on presets ``STEP["smollm2"]`` and ``STEP["smollm2-4x"]``.

    pytest benchmarks/bench_smollm2_step.py                  the smoke shape: every case runs, same loss
    pytest benchmarks/bench_smollm2_step.py -m slow          the two real shapes (minutes per case)
    python benchmarks/bench_smollm2_step.py [--shape S] [--cases a,b] [--device cuda] [--json PATH]

Targets (benchmarks/RESULTS.md): at the defaults, step <= 0.5x TRL's time and <= 0.5x its peak
memory, and step's time <= 1.5x the matmul floor measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = [
    "spiral_fast",
    "spiral_fast-8192",
    "spiral_fast-1024",
    "spiral_fast-auto",
    "trl",
    "hf_forward",
    "step_reference",
]


def run_case(case: str, shape: str, device: str = "cpu", threads: int = 1, timeout: float = 1800) -> dict:
    """One case in a fresh Python process; its RESULT line as a dict (raises with its output on failure)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "step_case.py"),
            case,
            "--shape",
            shape,
            "--device",
            device,
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{case} on {shape} failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


def table(results: list[dict]) -> str:
    """One line per case: time, peak RSS, ratios to TRL, ratio to the matmul floor, loss."""
    trl = next((r for r in results if r["case"].split("-")[0] == "trl"), None)
    lines = [
        f"{'case':<18} {'s':>8} {'x trl':>6} {'peak GB':>8} {'x trl':>6} {'added GB':>8} {'x floor':>7} "
        f"{'budget':>7} {'mb':>3}  loss"
    ]
    for r in results:
        t = f"{r['seconds'] / trl['seconds']:6.2f}" if trl else f"{'-':>6}"
        m = f"{r['peak_bytes'] / trl['peak_bytes']:6.2f}" if trl else f"{'-':>6}"
        floor = f"{r['seconds'] / r['floor_seconds']:7.2f}" if r.get("floor_seconds") else f"{'-':>7}"
        lines.append(
            f"{r['case']:<18} {r['seconds']:8.1f} {t} {r['peak_bytes'] / 1e9:8.2f} {m} "
            f"{r['peak_delta_bytes'] / 1e9:8.2f} {floor} {str(r.get('budget', '-')):>7} "
            f"{str(r.get('micro_batches', '-')):>3}  {r['loss']:.8f}"
        )
    return "\n".join(lines)


def _needs():
    import pytest

    pytest.importorskip("trl")
    pytest.importorskip("peft")
    from spiral_fast.models.loading import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except Exception as exc:  # noqa: BLE001 - the package or its GGUF missing
        pytest.skip(f"SmolLM2 GGUF unavailable: {exc}")


def test_smoke_same_loss():
    """Every peer runs on a tiny batch and gives spiral_fast's loss (the ratios compare equal work)."""
    _needs()
    results = [run_case(c, "smoke") for c in ("spiral_fast", "trl", "hf_forward")]
    for r in results[1:]:
        assert abs(r["loss"] - results[0]["loss"]) <= 1e-6 * max(1.0, abs(results[0]["loss"])), table(results)


def _slow_case(case, shape):
    import harness

    _needs()
    r = run_case(case, shape)
    harness.record(
        f"SmolLM2 LoRA step {shape} cpu-fp32 (fresh process per case)",
        case,
        r["seconds"],
        r["peak_bytes"],
        note=f"loss {r['loss']:.8f}, budget {r.get('budget', '-')}",
    )
    if r.get("floor_seconds"):
        harness.record(
            f"SmolLM2 LoRA step {shape} cpu-fp32 (fresh process per case)",
            f"{case} mm floor",
            r["floor_seconds"],
            None,
            flops=r["floor_flops"],
        )


try:
    import pytest

    # loads SmolLM2-135M and runs every peer once: ~90 s on a 2-core CPU
    test_smoke_same_loss = pytest.mark.slow(pytest.mark.real_model(test_smoke_same_loss))

    @pytest.mark.slow
    @pytest.mark.real_model
    @pytest.mark.parametrize("shape", ["smollm2", "smollm2-4x"])
    @pytest.mark.parametrize("case", CASES)
    def test_step_smollm2(case, shape, one_cpu_thread, request):
        if "slow" not in (request.config.option.markexpr or ""):
            pytest.skip("minutes per case: run with -m slow")
        _slow_case(case, shape)
except ImportError:  # run as a script without pytest
    pass


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="smollm2")
    ap.add_argument("--cases", default="spiral_fast,spiral_fast-auto,spiral_fast-1024,trl")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    results = []
    for case in args.cases.split(","):
        try:
            results.append(run_case(case, args.shape, args.device, args.threads))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"{case}: {str(exc)[-1500:]}", flush=True)
            continue
        print(json.dumps(results[-1]), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\n== whole step, {args.shape}, {args.device}, {args.threads} thread(s) ==")
    print(table(results))


if __name__ == "__main__":
    main()
