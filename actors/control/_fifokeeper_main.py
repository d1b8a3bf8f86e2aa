"""The FIFO keeper: a tiny process that holds a reader of every FIFO the log drains.

Run as a script (``python _fifokeeper_main.py SOCKET``), never imported: standard library
only, so it starts fast and stays small. Why it exists: a FIFO is a kernel pipe that lives
only while some process has it open. The shim closes its ends when the process's output
ends; if ``serve`` is not running then (killed, or stopped for an upgrade), the bytes still
in the FIFO would be freed with it. Holding a reader that never reads keeps them for the
next ``serve``, which re-opens the FIFO by path and drains them.

``serve`` sends, over a SOCK_SEQPACKET unix socket, ``hold`` messages each carrying the FIFO
path and its fd (SCM_RIGHTS). A held fd is closed once nothing can be lost by closing it: the
path is gone or names another file (the process was deleted; its FIFO removed or re-made),
or no writer is left and the pipe is empty (everything was drained). The keeper exits when
it holds nothing and no ``serve`` is connected. A second keeper for the same socket exits
at once.

Idle, it sleeps: held fds are polled for hang-up only (the writer went away), which is when
a FIFO can become unneeded; one that hangs up with bytes left waits for the next serve, and
is looked at again on the sweep, which also notices FIFOs removed under a live writer. The
sweep runs every ``SWEEP_SECONDS`` (a stat per held FIFO), so a thousand held FIFOs cost
nothing between sweeps (a 1 s stat-and-poll tick cost 0.3 % of a core for 1,000).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import select
import socket
import struct
import sys
import termios
import time

SWEEP_SECONDS = 30.0
MAX_MESSAGE = 8192
# A keeper nobody connected to yet (its spawner is about to) does not exit before this.
FIRST_CLIENT_SECONDS = 30.0


def _bytes_in(fd: int) -> int:
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])
    except OSError:
        return 0


def _same_file(path: str, identity: tuple[int, int]) -> bool:
    try:
        info = os.stat(path)
    except OSError:
        return False
    return (info.st_dev, info.st_ino) == identity


def serve(listener: socket.socket, sweep_seconds: float = SWEEP_SECONDS) -> None:
    held: dict[int, tuple[str, tuple[int, int]]] = {}  # fd -> path, (dev, inode)
    hung: set[int] = set()  # held, writer gone, bytes left: off the poller until a sweep
    clients: dict[int, socket.socket] = {}
    poller = select.poll()  # not select(): held fds may number past FD_SETSIZE
    poller.register(listener, select.POLLIN)
    patient_until = time.monotonic() + FIRST_CLIENT_SECONDS
    next_sweep = time.monotonic() + sweep_seconds

    def let_go(fd: int) -> None:
        if fd not in hung:
            poller.unregister(fd)
        hung.discard(fd)
        del held[fd]
        os.close(fd)

    while True:
        now = time.monotonic()
        if held:
            timeout_ms: float | None = max(0.0, next_sweep - now) * 1000
        elif patient_until > now:
            timeout_ms = (patient_until - now) * 1000
        else:
            timeout_ms = None  # only serve's messages or its leaving can change anything
        for ready, _events in poller.poll(timeout_ms):
            if ready in held:
                # Mask 0: only a hang-up (or error) is reported. Drained: nothing to keep.
                if _bytes_in(ready) == 0:
                    let_go(ready)
                else:
                    poller.unregister(ready)  # level-triggered: it would wake us forever
                    hung.add(ready)
                continue
            if ready == listener.fileno():
                connection, _address = listener.accept()
                clients[connection.fileno()] = connection
                poller.register(connection, select.POLLIN)
                patient_until = 0.0
                continue
            client = clients[ready]
            try:
                message, fds, _flags, _address = socket.recv_fds(client, MAX_MESSAGE, 16)
            except OSError:
                message, fds = b"", []
            if not message:
                poller.unregister(ready)
                del clients[ready]
                client.close()
                for fd in fds:
                    os.close(fd)
                continue
            verb, _, raw_path = message.partition(b"\0")
            for fd in fds:
                if verb == b"hold" and raw_path:
                    info = os.fstat(fd)
                    held[fd] = (os.fsdecode(raw_path), (info.st_dev, info.st_ino))
                    poller.register(fd, 0)
                else:
                    os.close(fd)
        if time.monotonic() >= next_sweep:
            next_sweep = time.monotonic() + sweep_seconds
            for fd, (path, identity) in list(held.items()):
                if not _same_file(path, identity):
                    let_go(fd)  # removed or re-made: its bytes are wanted by nobody
                elif fd in hung and _bytes_in(fd) == 0:
                    let_go(fd)  # the next serve drained it
        if not held and not clients and time.monotonic() >= patient_until:
            return


def main(argv: list[str]) -> int:
    path = argv[1]
    sweep_seconds = float(argv[2]) if len(argv) > 2 else SWEEP_SECONDS
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
        return 0  # another keeper serves this socket
    except OSError:
        pass
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    old_mask = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old_mask)
    bound = os.stat(path).st_ino
    listener.listen(16)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one fd per stream held
    # Detach: the parent returns at once (its spawner reaps it), the child lives on in its
    # own session, out of reach of a terminal's Ctrl-C meant for serve.
    if os.fork():
        return 0
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(devnull, target)
    try:
        serve(listener, sweep_seconds)
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == bound:  # not a successor's socket
                os.unlink(path)
        listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
