"""Print the table of the newest benchmark records (benchmarks/.results/*.json) — used last by
gpu_check.sh so the short table is the final thing a GPU run prints."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402


def main() -> int:
    files = sorted(harness.RESULTS_DIR.glob("results-*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        print("no benchmark records found in", harness.RESULTS_DIR)
        return 1
    records = [harness.Record(**r) for r in json.loads(files[-1].read_text())]
    print(harness.format_table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
