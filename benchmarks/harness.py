"""Shared benchmark machinery: peak memory of a callable, and the table printed at the end.

Peak memory: on CUDA, the caching allocator's peak statistics. On the CPU, the process's peak
resident set (VmHWM), reset before the call by writing 5 to /proc/self/clear_refs (Linux); the
number reported is the peak minus the resident set at the start, i.e. what the call added.
"""

from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).parent / ".results"


@dataclass
class Record:
    group: str  # one comparison: same inputs for every peer
    peer: str  # "spiral_fast", "naive", "liger", ...
    seconds: float  # best (min) wall time of one call
    peak_bytes: int | None
    extra: dict = field(default_factory=dict)  # flops, bytes moved, shape, ...


RECORDS: list[Record] = []


def _read_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _cpu_peak_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _read_status_kib("VmHWM")
        return True
    except OSError:
        return False


def sync(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory(fn, device: torch.device | str = "cpu") -> int | None:
    """Extra memory (bytes) that one call of ``fn`` needs at its peak, or None if unmeasurable."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    if not _cpu_peak_supported():
        return None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = _read_status_kib("VmRSS")
    fn()
    return max(0, (_read_status_kib("VmHWM") - base) * 1024)


def best_time(fn, *, rounds: int = 3, warmup: int = 1) -> float:
    """Best wall time of ``rounds`` calls after ``warmup`` calls (synchronising CUDA)."""
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def check_same_values(group: str, peer: str, got: dict, want: dict, rel: float) -> float:
    """Every output of a peer within ``rel`` times the largest entry of spiral_fast's same output;
    returns the largest such relative error. A ratio between peers that compute different results
    means nothing, so a mismatch fails the benchmark."""
    assert got.keys() == want.keys(), f"{group}: {peer} returns {sorted(got)}, spiral_fast {sorted(want)}"
    worst = 0.0
    for name in want:
        g, w = got[name].detach().double().cpu(), want[name].detach().double().cpu()
        assert g.shape == w.shape, (
            f"{group}: {peer}'s {name} has shape {tuple(g.shape)}, spiral_fast's {tuple(w.shape)}"
        )
        scale = w.abs().max().item() if w.numel() else 0.0
        err = (g - w).abs().max().item() / scale if scale > 0 else float((g != w).any())
        assert err <= rel, (
            f"{group}: {peer} computes other values than spiral_fast: {name} differs by {err:.2e} of "
            f"its largest entry (tolerance {rel:.0e})"
        )
        worst = max(worst, err)
    return worst


def record(group: str, peer: str, seconds: float, peak_bytes: int | None, **extra) -> Record:
    rec = Record(group, peer, seconds, peak_bytes, extra)
    RECORDS.append(rec)
    return rec


def format_table(records: list[Record], reference_peer: str = "spiral_fast") -> str:
    """One line per (group, peer): time, time ratio peer/spiral_fast, peak MiB, memory ratio, rate."""
    lines = [
        f"{'group':<44} {'peer':<22} {'ms':>10} {'x sf time':>9} {'peak MiB':>10} {'x sf mem':>8}  rate",
    ]
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(r.group, []).append(r)
    for g, recs in groups.items():
        ref = next((r for r in recs if r.peer == reference_peer), None)
        for r in recs:
            t_ratio = f"{r.seconds / ref.seconds:9.2f}" if ref and ref.seconds > 0 else f"{'-':>9}"
            mem = f"{r.peak_bytes / 2**20:10.1f}" if r.peak_bytes is not None else f"{'-':>10}"
            if ref and ref.peak_bytes and r.peak_bytes is not None:
                m_ratio = f"{r.peak_bytes / ref.peak_bytes:8.2f}"
            else:
                m_ratio = f"{'-':>8}"
            rate = ""
            if "flops" in r.extra and r.seconds > 0:
                rate = f"{r.extra['flops'] / r.seconds / 1e12:.2f} TFLOP/s"
            elif "bytes" in r.extra and r.seconds > 0:
                rate = f"{r.extra['bytes'] / r.seconds / 1e9:.1f} GB/s"
            if "impl" in r.extra:
                rate = (rate + f" [{r.extra['impl']}]").strip()
            if "note" in r.extra:
                rate = (rate + " " + str(r.extra["note"])).strip()
            if "max_rel_diff" in r.extra:
                rate = (rate + f" (values = sf within {r.extra['max_rel_diff']:.0e})").strip()
            lines.append(f"{g:<44} {r.peer:<22} {r.seconds * 1e3:10.2f} {t_ratio} {mem} {m_ratio}  {rate}")
    return "\n".join(lines)


def dump(records: list[Record]) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"results-{os.getpid()}.json"
    path.write_text(json.dumps([asdict(r) for r in records], indent=1))
    return path
