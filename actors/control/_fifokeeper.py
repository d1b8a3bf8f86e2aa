"""serve's side of the FIFO keeper (see ``_fifokeeper_main.py``, the keeper program).

The log drain hands the keeper a duplicate of every FIFO reader it claims, so the bytes a
process leaves in its FIFO survive a ``serve`` that is not running when the process ends.
Without a keeper (it could not be started) everything still works; only that case is
unprotected, and the log says so once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, NoReturn

import trio

__all__ = ["FifoKeeper", "watch_keeper"]

log = logging.getLogger("containerd_actors.logs")

PROGRAM: Final = Path(__file__).with_name("_fifokeeper_main.py")
CONNECT_TIMEOUT_SECONDS: Final = 2.0
RETRY_SECONDS: Final = 1.0
START_TIMEOUT_SECONDS: Final = 10.0


class FifoKeeper:
    """A connection to the keeper of ``socket_path``, starting the keeper if none runs."""

    def __init__(
        self, socket_path: str | os.PathLike[str], *, sweep_seconds: float | None = None
    ) -> None:
        self.socket_path = Path(socket_path)
        # How often a keeper this starts re-checks what it holds (its default when None).
        self.sweep_seconds = sweep_seconds
        self._socket: socket.socket | None = None
        self._warned = False
        self.held = 0

    @property
    def connected(self) -> bool:
        return self._socket is not None

    @property
    def connection(self) -> socket.socket | None:
        """The socket to the keeper, for :func:`watch_keeper` to wait on."""
        return self._socket

    def connect(self) -> None:
        """Connect, starting the keeper first if needed (blocking: run it in a thread)."""
        if self._socket is not None:
            return
        try:
            self._socket = self._try_connect()
        except OSError:
            self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            subprocess.run(
                [
                    sys.executable,
                    "-S",
                    str(PROGRAM),
                    str(self.socket_path),
                    *([] if self.sweep_seconds is None else [str(self.sweep_seconds)]),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=START_TIMEOUT_SECONDS,
                check=True,
            )  # returns once the keeper listens (it forks into the background)
            self._socket = self._try_connect()

    def _try_connect(self) -> socket.socket:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            connection.settimeout(CONNECT_TIMEOUT_SECONDS)
            connection.connect(str(self.socket_path))
            # hold() runs on the Trio thread: a keeper that stops taking messages makes it
            # fail (and the watcher reconnect), never wait.
            connection.setblocking(False)
        except BaseException:
            connection.close()
            raise
        return connection

    def hold(self, path: str, fd: int) -> bool:
        """Have the keeper hold a duplicate of ``fd`` (the FIFO at ``path``); never blocks.
        False if no keeper took it: :func:`watch_keeper` then (re)starts one and hands it
        every FIFO still drained, this one included."""
        if self._socket is None:
            return False
        try:
            socket.send_fds(self._socket, [b"hold\0" + os.fsencode(path)], [fd])
        except OSError as exc:
            log.warning("the FIFO keeper did not take %s (%s): reconnecting", path, exc)
            self.close()
            return False
        self.held += 1
        return True

    def warn_unavailable(self, exc: BaseException) -> None:
        """Said once: without a keeper, what a FIFO holds dies with its last opener."""
        if not self._warned:
            self._warned = True
            log.warning(
                "no FIFO keeper (%s): output a process leaves in its FIFO when it exits "
                "while serve is not running is lost",
                exc,
            )

    def close(self) -> None:
        """Disconnect (the keeper goes on holding what it holds, and exits once idle)."""
        if self._socket is not None:
            with contextlib.suppress(RuntimeError):  # outside Trio nobody waits on it
                trio.lowlevel.notify_closing(self._socket)
            self._socket.close()
            self._socket = None


async def watch_keeper(
    keeper: FifoKeeper,
    drained: Mapping[str, Callable[[], int]],
    *,
    retry_seconds: float = RETRY_SECONDS,
) -> NoReturn:
    """Keep a keeper holding every FIFO in ``drained`` (path -> its reader's fd) until
    cancelled: when the keeper goes away (killed: it never sends, so the connection turning
    readable means it ended), start a new one and hand it each FIFO again."""
    while True:
        connection = keeper.connection
        if connection is not None:
            with contextlib.suppress(trio.ClosedResourceError):
                await trio.lowlevel.wait_readable(connection)
            if keeper.connection is connection:
                log.warning("the FIFO keeper went away: starting another")
                keeper.close()
        try:
            await trio.to_thread.run_sync(keeper.connect)
        except (OSError, subprocess.SubprocessError) as exc:
            keeper.warn_unavailable(exc)
            await trio.sleep(retry_seconds)
            continue
        for path, fileno in list(drained.items()):
            with contextlib.suppress(OSError, trio.ClosedResourceError):
                keeper.hold(path, fileno())
