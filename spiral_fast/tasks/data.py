"""Problems of the training command: JSONL files (checked line by line) and a seeded, resumable stream
over them."""

from __future__ import annotations

import json
import os

import torch

_SHOWN = 3  # bad lines named in one error; the rest are counted


def _row_problem(row) -> str | None:
    """Why a parsed JSONL value is not a ``{"problem": str, "answer": str | number}`` row, or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    if "problem" not in row:
        return 'no "problem" key'
    if "answer" not in row:
        return 'no "answer" key'
    if not isinstance(row["problem"], str) or not row["problem"].strip():
        return '"problem" must be a non-empty string'
    answer = row["answer"]
    # a number is accepted (written as str); bool/None/list would compare as "True"/"None"/"[...]"
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        return f'"answer" must be a string or a number, got {type(answer).__name__}'
    return None


def check_jsonl(path: str, key: str | None = None) -> list[dict]:
    """Read and check a problems file; its rows ``[{"problem": str, "answer": str}]`` (blank lines
    skipped; a numeric answer becomes its string).

    Every line is checked before returning, so a bad file fails before any model loads. Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` otherwise, the message starting with
    ``key`` (the config key that named the file, e.g. ``"data.train"``) when given, then
    ``path:line:`` for each bad line (up to three, the rest counted): not JSON, not UTF-8, not an
    object, no ``"problem"`` or ``"answer"``; or ``path: no problems`` for an empty file."""
    where = f"{key}: " if key else ""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}{path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{where}{path}: is a directory, expected a JSONL file")
    rows, bad = [], []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad.append(f"{path}:{n}: not UTF-8 ({err.reason} at byte {err.start})")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                bad.append(f"{path}:{n}: not JSON ({err.msg} at column {err.colno})")
                continue
            why = _row_problem(row)
            if why is not None:
                bad.append(f"{path}:{n}: {why} in {line.strip()[:80]!r}")
                continue
            rows.append({"problem": row["problem"], "answer": str(row["answer"])})
    if bad:
        more = f" (and {len(bad) - _SHOWN} more bad lines)" if len(bad) > _SHOWN else ""
        raise ValueError(
            where + "; ".join(bad[:_SHOWN]) + more + '; expected one {"problem": str, "answer": str} object per line'
        )
    if not rows:
        raise ValueError(f"{where}{path}: no problems (the file is empty)")
    return rows


def load_jsonl(path: str, key: str | None = None) -> list[dict]:
    """Rows ``{"problem": str, "answer": str}`` of a JSONL file, every line checked first
    (``check_jsonl``: FileNotFoundError / ValueError naming the file and line of a bad row)."""
    return check_jsonl(path, key)


class ProblemStream:
    """An endless stream of problem indices: epoch e is ``randperm(len, seed + e)``.

    ``position`` (problems taken so far) is the whole state: a stream at a saved position continues
    exactly where the saved one stopped.
    """

    def __init__(self, size: int, seed: int, position: int = 0):
        self.size, self.seed, self.position = size, seed, position
        self._epoch, self._order = -1, None

    def take(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            epoch, offset = divmod(self.position, self.size)
            if epoch != self._epoch:
                self._epoch = epoch
                self._order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            out.append(int(self._order[offset]))
            self.position += 1
        return out
