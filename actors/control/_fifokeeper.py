"""serve's side of the FIFO keeper (see ``_fifokeeper_main.py``, the keeper program).

The log drain hands the keeper a duplicate of every FIFO reader it claims, so the bytes a
process leaves in its FIFO survive a ``serve`` that is not running when the process ends.
Without a keeper (it could not be started) everything still works; only that case is
unprotected, and the log says so once.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

__all__ = ["FifoKeeper"]

log = logging.getLogger("containerd_actors.logs")

PROGRAM: Final = Path(__file__).with_name("_fifokeeper_main.py")
SEND_TIMEOUT_SECONDS: Final = 2.0
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
            connection.settimeout(SEND_TIMEOUT_SECONDS)
            connection.connect(str(self.socket_path))
        except BaseException:
            connection.close()
            raise
        return connection

    def hold(self, path: str, fd: int) -> bool:
        """Have the keeper hold a duplicate of ``fd`` (the FIFO at ``path``). False (said
        once in the log) if no keeper can be reached."""
        message = b"hold\0" + os.fsencode(path)
        for attempt in (1, 2):
            try:
                if self._socket is None:
                    self.connect()
                assert self._socket is not None
                socket.send_fds(self._socket, [message], [fd])
                self.held += 1
                return True
            except (OSError, subprocess.SubprocessError) as exc:
                self.close()
                if attempt == 2:
                    self._warn(exc)
                else:
                    time.sleep(0.01)
        return False

    def _warn(self, exc: BaseException) -> None:
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
            self._socket.close()
            self._socket = None
