"""Container restart policies (docker's ``--restart``): the decisions, with no I/O.

The container's actor owns the policy: when the task's init process exits, it asks
:func:`should_restart`, waits :func:`backoff` and starts a new task under the same id (its
labels and logs stay). The policy, the restart count and whether the user stopped the
container live in internal labels, so a new actor (after ``serve`` restarts) decides the
same way:

==============  =============================  =========================================
policy          after an exit                  when a supervisor starts (restore)
==============  =============================  =========================================
no              never                          never
on-failure[:N]  exit code != 0, < N restarts,  the same (a missed exit counts)
                not stopped by the user
always          unless the user stopped it     yes, even if the user stopped it
unless-stopped  unless the user stopped it     unless the user stopped it
==============  =============================  =========================================

A user's kill or stop (through the actor) marks the container stopped; a user's start
clears the mark. The count is never reset by a restart, as in docker's ``RestartCount``.
"""

from __future__ import annotations

import re
from typing import Final, Literal

import msgspec

__all__ = [
    "MANUALLY_STOPPED_LABEL",
    "RESTART_COUNT_LABEL",
    "RESTART_POLICY_LABEL",
    "ContainerRestartPolicy",
    "backoff",
    "should_restart",
]

# Under the project's internal prefix, which control-plane clients can neither set nor see.
RESTART_POLICY_LABEL: Final = "io.containerd-actors.restart-policy"
RESTART_COUNT_LABEL: Final = "io.containerd-actors.restart-count"
MANUALLY_STOPPED_LABEL: Final = "io.containerd-actors.manually-stopped"

FIRST_DELAY: Final = 0.1
MAX_DELAY: Final = 10.0
_TEXT: Final = re.compile(r"\A(no|always|unless-stopped|on-failure)(?::([0-9]{1,9}))?\Z")

Mode = Literal["no", "always", "on-failure", "unless-stopped"]


class ContainerRestartPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What to do when a container's task exits.

    Attributes:
        mode: ``no``, ``always``, ``on-failure`` or ``unless-stopped``.
        max_retries: for ``on-failure``, how many restarts at most (0: no limit).
    """

    mode: Mode = "no"
    max_retries: int = 0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be 0 (no limit) or more")
        if self.max_retries and self.mode != "on-failure":
            raise ValueError("max_retries applies to on-failure only")

    @classmethod
    def parse(cls, text: str) -> ContainerRestartPolicy:
        """Docker's syntax: ``no``, ``always``, ``unless-stopped``, ``on-failure[:N]``."""
        match = _TEXT.match(text)
        if match is None or (match[2] is not None and match[1] != "on-failure"):
            raise ValueError(
                f"invalid restart policy {text!r}: use no, always, unless-stopped or on-failure[:N]"
            )
        mode: Mode = match[1]  # type: ignore[assignment]  # the pattern allows only these
        return cls(mode=mode, max_retries=int(match[2] or 0))

    def __str__(self) -> str:
        if self.mode == "on-failure" and self.max_retries:
            return f"on-failure:{self.max_retries}"
        return self.mode


def should_restart(
    policy: ContainerRestartPolicy,
    exit_code: int,
    restart_count: int,
    *,
    manually_stopped: bool,
    restoring: bool = False,
) -> bool:
    """Whether an exit leads to a restart (see the table in the module docstring)."""
    if policy.mode == "no":
        return False
    if policy.mode == "on-failure":
        if manually_stopped:
            return False
        under_limit = policy.max_retries == 0 or restart_count < policy.max_retries
        return exit_code != 0 and under_limit
    if policy.mode == "always" and restoring:
        return True
    return not manually_stopped


def backoff(restart_count: int) -> float:
    """Seconds to wait before restart number ``restart_count + 1`` (doubling, capped)."""
    return float(min(MAX_DELAY, FIRST_DELAY * 2 ** min(restart_count, 16)))


def policy_from_labels(labels: dict[str, str]) -> ContainerRestartPolicy:
    try:
        return ContainerRestartPolicy.parse(labels.get(RESTART_POLICY_LABEL, "no"))
    except ValueError:
        return ContainerRestartPolicy()


def count_from_labels(labels: dict[str, str]) -> int:
    value = labels.get(RESTART_COUNT_LABEL, "0")
    return int(value) if value.isdigit() else 0
