"""Benchmark configuration: every benchmark runs its named peers on the same inputs in this one
process, records (time, peak memory) through the ``compare`` fixture, and the session ends with a
table of ratios against spiral_fast (also written to benchmarks/.results/ as JSON)."""

import harness  # benchmarks/ is on sys.path through this conftest
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """GPU cases skip without CUDA; ``slow`` cases (minutes each on a 2-core CPU) run only when the
    ``-m`` expression names them (``pytest benchmarks/ -m slow``): a bare ``pytest benchmarks/``
    stays a few minutes."""
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_slow = pytest.mark.skip(reason="minutes on a CPU: run with -m slow")
    slow_selected = "slow" in (config.option.markexpr or "")
    for item in items:
        if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        elif item.get_closest_marker("slow") is not None and not slow_selected:
            item.add_marker(skip_slow)


@pytest.fixture
def compare(benchmark):
    """``compare(group, peer, fn, device=..., rounds=..., values=..., expected=..., rel=..., impl=...,
    **extra)``: time ``fn`` with pytest-benchmark, measure its peak memory once, and record both for
    the final table.

    values / expected: callables returning {name: tensor}, this peer's outputs and spiral_fast's on
    the group's inputs; before anything is timed the peer must match within ``rel`` of spiral_fast's
    largest entry (``harness.check_same_values``), checked after the peak-memory call (the first
    round) and before anything is timed.
    impl: the implementation the peer resolved to (printed in the table)."""

    def run(
        group: str,
        peer: str,
        fn,
        *,
        device="cpu",
        rounds: int = 3,
        warmup: int = 1,
        values=None,
        expected=None,
        rel: float | None = None,
        **extra,
    ):
        peak = harness.peak_memory(fn, device)  # also serves as a warm-up call
        if values is not None and expected is not None and peer != "spiral_fast":
            # after the peak: memory the check frees would otherwise be reused and hide the peer's peak
            extra["max_rel_diff"] = harness.check_same_values(group, peer, values(), expected(), rel)
        benchmark.group = group
        benchmark.extra_info.update(peer=peer, peak_mib=None if peak is None else peak / 2**20, **extra)
        benchmark.pedantic(
            lambda: (fn(), harness.sync()), rounds=rounds, warmup_rounds=max(0, warmup - 1), iterations=1
        )
        stats = getattr(benchmark, "stats", None)
        seconds = stats.stats.min if stats is not None else harness.best_time(fn, rounds=1, warmup=0)
        return harness.record(group, peer, seconds, peak, **extra)

    return run


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not harness.RECORDS:
        return
    terminalreporter.section("spiral_fast: ratios against spiral_fast (x sf = peer / spiral_fast)")
    terminalreporter.write_line(harness.format_table(harness.RECORDS))
    path = harness.dump(harness.RECORDS)
    terminalreporter.write_line(f"(records written to {path})")


@pytest.fixture
def one_cpu_thread():
    """One intra-op thread for the test: on a shared, loaded CPU a thread pool contends for the cores
    (steps measured 15-45x slower with 2 threads under load), which would make side-by-side ratios noise."""
    from spiral_fast._utils import torch_threads

    with torch_threads(1):
        yield
