"""Tasks.Create of a grouped container, retried when it met its group's shim shutting down.

A runc shim exits once its last task is deleted. A container assigned to the group before
that, whose Tasks.Create reaches containerd while the shim is going away, fails with "failed
to start shim ... dial unix ...: no such file" or "ttrpc: closed": containerd found the
group's socket, then lost it. containerd has cleaned up the failed task by then, and the
next attempt starts a fresh shim for the group, so the create is repeated (at most twice,
a few milliseconds apart). Only grouped containers go through this; every other path, and
the success path, costs exactly the RPCs it did before.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import trio

from ..errors import ContainerdError

log = logging.getLogger("containerd_actors.shim_groups")

# What containerd 1.6 says when a group's shim vanished between finding and using it.
_SHIM_GONE: Final = ("failed to start shim", "ttrpc: closed", "ttrpc: client shutting down")
_DELAYS: Final = (0.01, 0.05)


def shim_went_away(exc: ContainerdError) -> bool:
    text = str(exc)
    return any(marker in text for marker in _SHIM_GONE)


class GroupedRemote:
    """``remote`` as a grouped container's actor sees it: Tasks.Create survives a shim handover."""

    def __init__(self, remote: Any) -> None:
        self._remote = remote
        self.retries = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._remote, name)

    async def tasks_create(self, request: Any, *, deadline: float | None = None) -> Any:
        for delay in _DELAYS:
            try:
                return await self._remote.tasks_create(request, deadline=deadline)
            except ContainerdError as exc:
                if not shim_went_away(exc):
                    raise
                log.info("Tasks.Create of %s met its shim exiting; retrying", request.container_id)
                self.retries += 1
            await trio.sleep(delay)
        return await self._remote.tasks_create(request, deadline=deadline)
