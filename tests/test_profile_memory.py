"""spiral-fast profile-memory: the synthetic long-context batch, the table, and a 2-case sweep."""

import pytest

from spiral_fast import profile_memory as pm
from spiral_fast.cli import main


def test_case_batch_has_the_requested_context_and_sets():
    batch = pm.case_batch(vocab_size=50, context=100, set_size=3, num_sets=2, num_aggregations=4)
    (pr,) = batch.problems
    trace_len = (100 - pm.PROMPT_LEN) // 3
    assert len(pr.traces) == 6 and all(len(y) == trace_len for y in pr.traces)
    assert pr.sets == [(0, 1, 2), (3, 4, 5)]
    assert all(len(a) == pm.PROMPT_LEN + 3 * trace_len for a in pr.agg_prompts)
    assert pr.rewards == [[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="context"):
        pm.case_batch(vocab_size=50, context=pm.PROMPT_LEN + 1, set_size=2, num_sets=1, num_aggregations=1)


def test_table_rows_and_ratio():
    mib = 2**20
    results = [
        {
            "context": 512,
            "set_size": 2,
            "impl": "step",
            "delta_bytes": 10 * mib,
            "baseline_bytes": 100 * mib,
            "metric": "ru_maxrss",
        },
        {
            "context": 512,
            "set_size": 2,
            "impl": "reference",
            "delta_bytes": 40 * mib,
            "baseline_bytes": 101 * mib,
            "metric": "ru_maxrss",
        },
        {
            "context": 128,
            "set_size": 4,
            "impl": "step",
            "delta_bytes": 5 * mib,
            "baseline_bytes": 99 * mib,
            "metric": "ru_maxrss",
        },
    ]
    lines = pm.format_table(results).splitlines()
    assert "ru_maxrss" in lines[0]
    assert lines[3] == "| 128 | 4 | 5.0 (99) | - | - |"
    assert lines[4] == "| 512 | 2 | 10.0 (100) | 40.0 (101) | 0.25 |"


def test_bad_impl_in_a_case_is_rejected():
    with pytest.raises(ValueError, match="impl"):
        pm.run_case(pm.Case(context=64, set_size=2, impl="fast"))


def test_two_case_sweep_prints_table_and_writes_png(tmp_path, capsys):
    out = tmp_path / "mem.png"
    main(
        [
            "profile-memory",
            "--device",
            "cpu",
            "--contexts",
            "48",
            "--set-sizes",
            "2",
            "--layers",
            "1",
            "--sets",
            "1",
            "--aggregations",
            "2",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    row = next(line for line in text.splitlines() if line.startswith("| 48 | 2 |"))
    step_cell, ref_cell = row.split("|")[3:5]
    # both cases measured: a delta and a baseline (MiB) each; the baseline holds torch at least
    for cell in (step_cell, ref_cell):
        delta, baseline = cell.replace("(", " ").replace(")", " ").split()
        assert float(delta) >= 0 and float(baseline) > 50
