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
from typing import TYPE_CHECKING, Final

import trio

from ..errors import ContainerdError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from grpclib.client import Channel

    from ..containerd._interface import ContainerdRemote
    from ..containerd._mounts import Mount

log = logging.getLogger("containerd_actors.shim_groups")

# What containerd 1.6 says when a group's shim vanished between finding and using it. The
# last one is the shim answering a create while it shuts down (its ttrpc server says
# "shutdown" and runc's log file is already gone): seen once in 320 grouped lifecycles at 16.
_SHIM_GONE: Final = (
    "failed to start shim",
    "ttrpc: closed",
    "ttrpc: client shutting down",
    "): shutdown: unknown",
)
_DELAYS: Final = (0.01, 0.05)


def shim_went_away(exc: ContainerdError) -> bool:
    text = str(exc)
    return any(marker in text for marker in _SHIM_GONE)


class GroupedRemote:
    """``remote`` as a grouped container's actor sees it: Tasks.Create survives a shim handover.

    It is a :class:`ContainerdRemote` itself (mypy checks it where the client hands it to an
    actor): every other call is the wrapped remote's own bound method, typed as that one is.
    """

    def __init__(self, remote: ContainerdRemote) -> None:
        self._remote = remote
        self.retries = 0
        self.statistics = remote.statistics
        self.call = remote.call
        self.open_server_stream = remote.open_server_stream
        self.open_duplex = remote.open_duplex
        self.version = remote.version
        self.health_check = remote.health_check
        self.containers_create = remote.containers_create
        self.containers_get = remote.containers_get
        self.containers_list = remote.containers_list
        self.containers_update = remote.containers_update
        self.containers_delete = remote.containers_delete
        self.tasks_start = remote.tasks_start
        self.tasks_delete = remote.tasks_delete
        self.tasks_delete_process = remote.tasks_delete_process
        self.tasks_get = remote.tasks_get
        self.tasks_list = remote.tasks_list
        self.tasks_kill = remote.tasks_kill
        self.tasks_exec = remote.tasks_exec
        self.tasks_resize_pty = remote.tasks_resize_pty
        self.tasks_close_io = remote.tasks_close_io
        self.tasks_pause = remote.tasks_pause
        self.tasks_resume = remote.tasks_resume
        self.tasks_list_pids = remote.tasks_list_pids
        self.tasks_checkpoint = remote.tasks_checkpoint
        self.tasks_update = remote.tasks_update
        self.tasks_metrics = remote.tasks_metrics
        self.tasks_wait = remote.tasks_wait
        self.events_subscribe = remote.events_subscribe
        self.events_publish = remote.events_publish

    # The remote's attributes, not copies: a deadline changed on it holds here too.
    @property
    def namespace(self) -> str:
        return self._remote.namespace

    @namespace.setter
    def namespace(self, value: str) -> None:
        self._remote.namespace = value

    @property
    def default_deadline(self) -> float:
        return self._remote.default_deadline

    @default_deadline.setter
    def default_deadline(self, value: float) -> None:
        self._remote.default_deadline = value

    @property
    def channel(self) -> Channel:
        return self._remote.channel

    async def tasks_create(
        self,
        container_id: str,
        *,
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
        rootfs: Sequence[Mount] = (),
        checkpoint_path: str | None = None,
        runtime_options: bytes = b"",
        deadline: float | None = None,
    ) -> int:
        async def create() -> int:
            return await self._remote.tasks_create(
                container_id,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                terminal=terminal,
                rootfs=rootfs,
                checkpoint_path=checkpoint_path,
                runtime_options=runtime_options,
                deadline=deadline,
            )

        for delay in _DELAYS:
            try:
                return await create()
            except ContainerdError as exc:
                if not shim_went_away(exc):
                    raise
                log.info("Tasks.Create of %s met its shim exiting; retrying", container_id)
                self.retries += 1
            await trio.sleep(delay)
        return await create()
