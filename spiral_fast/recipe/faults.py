"""What ``spiral-fast train`` does on a fault other than a crash (a crash mid-save is
``recipe.checkpoint``'s: a checkpoint counts once its state.json exists).

- ``Preemption``: SIGTERM / SIGINT handlers. The first signal sets a flag; after each step the ranks
  agree on it (a max all-reduce, so a signal to any rank stops all of them at the same step), the
  run saves a complete checkpoint at that step and stops. A second signal does what the handler
  before ours would have done (SIGINT: KeyboardInterrupt; SIGTERM: the default, the process ends).
- ``NonFinite``: counts the steps whose loss or gradient norm was inf/NaN (``spiral_fast.step``
  skipped their optimizer step: metric ``nonfinite``) and stops the run after ``limit``
  consecutive ones with ``NonFiniteError``.
"""

from __future__ import annotations

import signal
import sys
import threading

from spiral_fast.distributed import max_int

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
    """A context manager installing the handlers (main thread only: elsewhere signals cannot be
    caught and nothing is installed); the previous handlers come back on exit. ``received``: the
    number of the first signal this process got, else 0."""

    def __init__(self, rank: int = 0):
        self.rank, self.received, self.previous = rank, 0, {}

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def _handle(self, signum, frame) -> None:
        if self.received:  # the second signal: what would have happened without us, now
            self.__exit__()
            signal.raise_signal(signum)
            return
        self.received = signum
        print(
            f"spiral-fast train (rank {self.rank}): received {signal.Signals(signum).name}; finishing the "
            f"current step, then saving a checkpoint and stopping (send it again to stop at once, unsaved)",
            file=sys.stderr,
            flush=True,
        )

    def agreed(self) -> int:
        """The signal any rank received (the largest number), 0 if none: one collective under
        torch.distributed, so every rank calls it after every step."""
        return max_int(self.received)


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps."""


class NonFinite:
    """``total``: non-finite steps of the run so far (the ``nonfinite_steps`` metric: cumulative,
    carried over a resume through state.json); ``streak``: consecutive ones up to the last step
    (0 at every checkpoint: none is written while it is above 0)."""

    def __init__(self, limit: int, total: int = 0):
        self.limit, self.total, self.streak = limit, total, 0

    def count(self, row: dict) -> bool:
        """Count ``row``'s step; sets row["nonfinite_steps"]. A step without an optimizer step (no
        informative problem: no "nonfinite" key) neither adds to nor ends a streak. Returns whether
        the weights are suspect: no finite step since the last non-finite one (no checkpoint then)."""
        if "nonfinite" in row:
            bad = bool(row["nonfinite"])
            self.streak = self.streak + 1 if bad else 0
            self.total += bad
        row["nonfinite_steps"] = float(self.total)
        return self.streak > 0

    def check(self, step: int, last_checkpoint: str | None) -> None:
        """NonFiniteError once ``limit`` consecutive steps were non-finite."""
        if self.streak >= self.limit:
            raise NonFiniteError(
                f"spiral-fast train: {self.streak} consecutive non-finite steps (loss or gradient norm inf or NaN; "
                f"train.max_nonfinite_steps = {self.limit}) ending at step {step}: stopping. Those steps left the "
                f"weights and optimizer state unchanged and no checkpoint was written for them; the last checkpoint "
                f"is {last_checkpoint or 'none'}. Lower optim.lr or optim.max_grad_norm, or check the data."
            )
