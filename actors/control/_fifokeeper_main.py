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

TICK_SECONDS = 1.0
MAX_MESSAGE = 8192
# A keeper nobody connected to yet (its spawner is about to) does not exit before this.
FIRST_CLIENT_SECONDS = 30.0


def _bytes_in(fd: int) -> int:
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])
    except OSError:
        return 0


def _still_needed(path: str, fd: int, identity: tuple[int, int]) -> bool:
    try:
        info = os.stat(path)
    except OSError:
        return False
    if (info.st_dev, info.st_ino) != identity:
        return False
    poller = select.poll()
    poller.register(fd, 0)  # POLLHUP is reported whatever is asked
    hung_up = any(events & (select.POLLHUP | select.POLLERR) for _fd, events in poller.poll(0))
    return not hung_up or _bytes_in(fd) > 0


def serve(listener: socket.socket) -> None:
    held: dict[int, tuple[str, tuple[int, int]]] = {}  # fd -> path, (dev, inode)
    clients: dict[int, socket.socket] = {}
    poller = select.poll()  # not select(): held fds may number past FD_SETSIZE
    poller.register(listener, select.POLLIN)
    patient_until = time.monotonic() + FIRST_CLIENT_SECONDS
    while True:
        for ready, _events in poller.poll(TICK_SECONDS * 1000):
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
                else:
                    os.close(fd)
        for fd, (path, identity) in list(held.items()):
            if not _still_needed(path, fd, identity):
                del held[fd]
                os.close(fd)
        if not held and not clients and time.monotonic() > patient_until:
            return


def main(argv: list[str]) -> int:
    path = argv[1]
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
        serve(listener)
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == bound:  # not a successor's socket
                os.unlink(path)
        listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
