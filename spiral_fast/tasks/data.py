"""Problems of the training command: JSONL files and a seeded, resumable stream over them."""
from __future__ import annotations

import json

import torch


def load_jsonl(path: str) -> list[dict]:
    """Rows ``{"problem": str, "answer": str}`` of a JSONL file (blank lines skipped); ValueError
    naming the file and line of a bad row."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not JSON ({err})") from None
            if not isinstance(row, dict) or not isinstance(row.get("problem"), str) or "answer" not in row:
                raise ValueError(f'{path}:{n}: expected {{"problem": str, "answer": str}}, got {line.strip()[:200]!r}')
            rows.append({"problem": row["problem"], "answer": str(row["answer"])})
    if not rows:
        raise ValueError(f"{path}: no problems")
    return rows


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
