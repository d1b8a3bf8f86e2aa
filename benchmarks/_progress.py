"""One line per step on stderr: elapsed time, the step, and an ETA from the plan's weights."""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Steps are planned with a weight (expected seconds); the ETA rescales the rest of the plan
    by how fast the finished part went, so a slow machine gets an honest estimate."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._planned = 0.0
        self._done = 0.0

    def plan(self, weight: float) -> None:
        self._planned += weight

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def done(self, weight: float, message: str) -> None:
        self._done += weight
        elapsed = self.elapsed()
        remaining = max(0.0, self._planned - self._done)
        eta = remaining * (elapsed / self._done) if self._done > 0 else remaining
        self.say(f"{message}  (ETA {_clock(eta)})")

    def say(self, message: str) -> None:
        print(f"[{_clock(self.elapsed())}] {message}", file=sys.stderr, flush=True)
