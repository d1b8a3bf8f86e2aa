"""The restart policy of container actors, as a pure decision over crash history.

One-for-one: a crashed actor is rebuilt from containerd's state and its siblings never
notice. More than ``max_restarts`` crashes of one container within ``within`` seconds means
something is systematically wrong; the supervisor then fails upward instead of looping.
"""

from __future__ import annotations

import collections

import msgspec

from ..errors import ContainerdActorsError


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How crashed actors are restarted.

    Attributes:
        max_restarts: restarts allowed per container within ``within`` seconds.
        within: the sliding window, in seconds.
        backoff: delay before the first restart; doubled per recent crash, capped at
            ``max_backoff``.
    """

    max_restarts: int = 5
    within: float = 60.0
    backoff: float = 0.05
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.within <= 0 or self.backoff < 0:
            raise ValueError("restart policy values must be non-negative (within > 0)")


class RestartLimitExceeded(ContainerdActorsError):
    """An actor crashed more often than its restart policy allows; supervision stopped."""


class CrashHistory:
    """Crash times per container; decides restart-or-escalate and the backoff."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._crashes: dict[str, collections.deque[float]] = {}
        self.restarts = 0

    def record(self, container_id: str, now: float) -> float:
        """Note a crash at ``now``; return the delay before restarting, or raise."""
        window = self._crashes.setdefault(container_id, collections.deque())
        window.append(now)
        while window and now - window[0] > self.policy.within:
            window.popleft()
        if len(window) > self.policy.max_restarts:
            raise RestartLimitExceeded(
                f"the actor of container {container_id} crashed {len(window)} times within "
                f"{self.policy.within:g}s (limit {self.policy.max_restarts}); "
                "supervision stopped, the container itself is untouched"
            )
        self.restarts += 1
        return float(min(self.policy.max_backoff, self.policy.backoff * 2 ** (len(window) - 1)))

    def forget(self, container_id: str) -> None:
        self._crashes.pop(container_id, None)
