"""Process stdio over FIFOs: moby's DirectIO, in Trio.

For each process we create ``<dir>/<process id>-stdin|stdout|stderr`` before Tasks.Create or
Tasks.Exec (the shim opens them while handling that call and blocks until our end exists).
Output FIFOs are drained into bounded buffers. By default (``OutputMode.BLOCKING``) nothing is
ever dropped: when a buffer is full we stop reading the FIFO until someone reads, so a process
that outruns its reader blocks in write(2), as docker's default blocking log mode does. Who
reads is the embedder's choice (the ``attach_stdio`` callback, or later ``process.io``); output
nobody reads is kept (up to the buffer, then the writer waits) until the process is deleted.
``OutputMode.LOSSY`` is the explicit opt-in for "never block the container": the oldest bytes
are dropped, counted in ``dropped_bytes`` and reported to the reader (``receive_chunk``).
Stdin is opened read-write so the open never blocks; EOF is delivered by closing our end and
then Tasks.CloseIO (the shim holds its own keep-alive writer).

A consumer that must not lose bytes even if this process is SIGKILLed (the control plane's
log) does not read into memory at all: it claims the pipe (:meth:`~OutputPipe.claim`), after which
the pump leaves the FIFO alone and the consumer moves bytes itself (splice(2) into its file;
see ``LogStore.append_from_fifo``). The shim keeps the FIFO (it holds its own reader), so what
was not moved is found there by whoever re-opens it. FIFOs re-opened after a restart are
therefore not read until someone asks: the first receive, ``resume_reading`` or a claim.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import os
import select
import stat
import struct
import termios
from collections.abc import Callable
from pathlib import Path

import msgspec
import trio

__all__ = [
    "DEFAULT_OUTPUT_BUFFER",
    "DirectIO",
    "FifoSet",
    "InputPipe",
    "OutputChunk",
    "OutputMode",
    "OutputPipe",
    "fifo_bytes",
]

log = logging.getLogger("containerd_actors.stdio")

DEFAULT_OUTPUT_BUFFER = 1 << 20
# After the process exited, how often to look for EOF that poll(2) will not report (below).
EXITED_EOF_CHECK_SECONDS = 0.1
_READ_CHUNK = 1 << 16


class FifoSet(msgspec.Struct, frozen=True, kw_only=True):
    """The FIFO paths of one process, as sent to containerd ('' means none)."""

    directory: str
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False

    @classmethod
    def for_process(
        cls, directory: str | os.PathLike[str], process_id: str, *, stdin: bool, terminal: bool
    ) -> FifoSet:
        base = Path(directory)
        return cls(
            directory=str(base),
            stdin=str(base / f"{process_id}-stdin") if stdin else "",
            stdout=str(base / f"{process_id}-stdout"),
            stderr="" if terminal else str(base / f"{process_id}-stderr"),
            terminal=terminal,
        )

    def paths(self) -> list[str]:
        return [p for p in (self.stdin, self.stdout, self.stderr) if p]


def _make_fifo(path: str, *, reopen: bool) -> None:
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        # Re-attaching after a restart finds our own FIFO; anything else is refused.
        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            raise
        if not reopen:
            # A new process never shares a pipe with a predecessor a crash left behind
            # (someone may still hold that one, and what is in it is not this process's).
            os.unlink(path)
            os.mkfifo(path, 0o600)
            return
        os.chmod(path, 0o600)


class OutputMode(enum.StrEnum):
    """What happens when a process writes faster than its output is read.

    BLOCKING (the default): stop reading the FIFO while the buffer is full; the process blocks
    in write(2) until its reader catches up. Nothing is lost.
    LOSSY: keep draining; the oldest unread bytes are dropped and counted (docker's
    ``mode=non-blocking``). The reader is told how much was lost and where.
    """

    BLOCKING = "blocking"
    LOSSY = "lossy"


class OutputChunk(msgspec.Struct, frozen=True):
    """Bytes read from an output pipe; ``dropped_before`` bytes were lost just before them."""

    data: bytes
    dropped_before: int = 0


class OutputPipe(trio.abc.ReceiveStream):
    """A process's stdout or stderr, drained from its FIFO into a bounded buffer.

    ``receive_some`` returns buffered bytes, or b"" once the writer closed and the buffer is
    empty. In BLOCKING mode at most ``limit`` bytes are held and the FIFO is not read while
    they are (``blocked`` is then True). In LOSSY mode ``dropped_bytes`` counts what was
    discarded and ``receive_chunk`` marks the gap in the stream.
    """

    def __init__(
        self,
        path: str,
        fd: int,
        *,
        limit: int = DEFAULT_OUTPUT_BUFFER,
        mode: OutputMode = OutputMode.BLOCKING,
        reopened: bool = False,
    ) -> None:
        self.path = path
        self._fd = fd
        self._limit = _check_limit(limit)
        self._mode = OutputMode(mode)
        self._buffer = bytearray()
        self._eof = False
        self._closed = False
        self._blocked = False
        self._readers = trio.lowlevel.ParkingLot()
        self._room = trio.lowlevel.ParkingLot()
        self._unreported_drop = 0
        self._exited = False
        self._paused = False
        # Re-opened after a restart: read nothing until a consumer decides how (see above).
        self._held = reopened
        self._reopened = reopened
        self._claimed = False
        self._wait_scope: trio.CancelScope | None = None
        self._claim_scope: trio.CancelScope | None = None
        self._on_close: Callable[[], None] | None = None
        self.total_bytes = 0
        self.dropped_bytes = 0

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def mode(self) -> OutputMode:
        return self._mode

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def blocked(self) -> bool:
        """True while the buffer is full and the FIFO is not read (BLOCKING mode)."""
        return self._blocked

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def pause_reading(self) -> None:
        """Leave further output in the FIFO (its consumer is going away; whoever comes next
        re-opens the FIFO and finds it there). ``resume_reading`` undoes it."""
        self._paused = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    @property
    def paused(self) -> bool:
        return self._paused

    def resume_reading(self) -> None:
        self._paused = False
        self._held = False
        self._room.unpark_all()

    # -- a consumer that moves bytes out of the FIFO itself ----------------------------------

    @property
    def claimed(self) -> bool:
        return self._claimed

    def claim(self, on_close: Callable[[], None] | None = None) -> bytes:
        """Take over the FIFO: the pump reads no more; the caller moves bytes itself with
        :meth:`wait_fifo` and :meth:`fileno` (e.g. splice(2) into a file).

        Returns what the pump had already read (exists only in memory; the caller writes it
        first). ``on_close`` runs just before the fd is closed (the process is deleted, and
        containerd's Tasks.Delete returns only after the shim copied everything into the
        FIFO): the last chance to move what is left. Only in BLOCKING mode: LOSSY mode needs
        the pump's ring buffer.
        """
        if self._mode is not OutputMode.BLOCKING:
            raise ValueError("only a blocking output pipe can be claimed")
        if self._claimed:
            raise trio.BusyResourceError("this output pipe is already claimed")
        if self._closed:
            raise trio.ClosedResourceError("output pipe is closed")
        self._claimed = True
        self._on_close = on_close
        self._held = False
        if self._wait_scope is not None:
            self._wait_scope.cancel()  # the pump's wait ends at once (its fd is ours now)
        if self._reopened:
            self._see_writer_close()
        data = bytes(self._buffer)
        self._buffer.clear()
        self._room.unpark_all()
        return data

    def _see_writer_close(self) -> None:
        # A reader opened when the writer was already gone is never told POLLHUP: Linux
        # reports it only if a writer opened after the reader did. Opening (and closing) a
        # writer ourselves makes the eventual close visible. Only for re-opened FIFOs, whose
        # writer is there (or gone) already; on a fresh one this would signal EOF early.
        with contextlib.suppress(OSError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))

    def fileno(self) -> int:
        """The FIFO's fd (non-blocking), for a claimant moving bytes itself."""
        if self._closed:
            raise trio.ClosedResourceError("output pipe is closed")
        return self._fd

    async def wait_fifo(self) -> int:
        """Wait until the FIFO holds bytes (claimants only): how many (FIONREAD), or 0 once
        no writer is left and it is empty (end of stream)."""
        if not self._claimed:
            raise RuntimeError("wait_fifo is for a claimant; call claim() first")
        while True:
            if self._closed:
                raise trio.ClosedResourceError("output pipe is closed")
            available = fifo_bytes(self._fd)
            if available:
                await trio.lowlevel.checkpoint()
                return available
            if _hung_up(self._fd):
                self._eof = True
                await trio.lowlevel.checkpoint()
                return 0
            with trio.CancelScope() as self._claim_scope:
                if self._exited:  # belt and braces: look again now and then
                    self._claim_scope.deadline = trio.current_time() + EXITED_EOF_CHECK_SECONDS
                try:
                    await trio.lowlevel.wait_readable(self._fd)
                finally:
                    self._claim_scope = None

    def mark_exited(self) -> None:
        """The process exited: EOF may now come without poll(2) saying so.

        Linux reports POLLHUP on a FIFO only if a writer opened it after our reader did. A
        FIFO re-opened after a restart (the shim's writer was already there) never gets it,
        so once the process is known to have exited the pump also checks with read(2),
        which returns b"" when no writer is left.
        """
        self._exited = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        if self._claim_scope is not None:
            self._claim_scope.cancel()

    def configure(self, *, mode: OutputMode | None = None, limit: int | None = None) -> None:
        """Change the mode or the buffer bound (e.g. from the ``attach_stdio`` callback)."""
        if limit is not None:
            self._limit = _check_limit(limit)
        if mode is not None:
            self._mode = OutputMode(mode)
        if self._mode is OutputMode.LOSSY:
            self._trim()
        self._room.unpark_all()

    def _trim(self) -> None:
        excess = len(self._buffer) - self._limit
        if excess > 0:
            del self._buffer[:excess]
            self.dropped_bytes += excess
            self._unreported_drop += excess

    async def pump(self) -> None:
        """Copy from the FIFO until the last writer closes (run in the owner's nursery)."""
        try:
            while not self._closed:
                if (
                    self._paused
                    or self._held
                    or self._claimed
                    or (self._mode is OutputMode.BLOCKING and len(self._buffer) >= self._limit)
                ):
                    # Backpressure: leave the bytes in the FIFO; the writer blocks once the
                    # kernel's pipe buffer (and the shim's) is full.
                    self._blocked = True
                    try:
                        await self._room.park()
                    finally:
                        self._blocked = False
                    continue
                # A FIFO that never had a writer raises no POLLHUP, so this waits for the shim.
                try:
                    with trio.CancelScope() as self._wait_scope:
                        if self._exited:
                            self._wait_scope.deadline = (
                                trio.current_time() + EXITED_EOF_CHECK_SECONDS
                            )
                        await trio.lowlevel.wait_readable(self._fd)
                except trio.ClosedResourceError:
                    return
                finally:
                    self._wait_scope = None
                if self._taken_over():  # paused or claimed while we waited
                    continue
                want = _READ_CHUNK
                if self._mode is OutputMode.BLOCKING:
                    want = min(want, self._limit - len(self._buffer))
                try:
                    data = os.read(self._fd, want)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                self.total_bytes += len(data)
                self._buffer += data
                if self._mode is OutputMode.LOSSY:
                    self._trim()
                self._readers.unpark_all()
        finally:
            self._eof = True
            self._readers.unpark_all()

    def _taken_over(self) -> bool:
        return self._paused or self._claimed

    async def receive_chunk(self, max_bytes: int | None = None) -> OutputChunk:
        """The next bytes and how many were dropped right before them.

        An empty ``data`` means end of stream (its ``dropped_before`` may still be non-zero).
        """
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if self._claimed:
            raise trio.BusyResourceError("this output pipe is claimed by another consumer")
        self._release_hold()
        while not self._buffer:
            if self._closed:
                raise trio.ClosedResourceError("output pipe is closed")
            if self._eof:
                await trio.lowlevel.checkpoint()
                return self._take_drop(b"")
            await self._readers.park()
        await trio.lowlevel.checkpoint()
        size = len(self._buffer) if max_bytes is None else min(max_bytes, len(self._buffer))
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._room.unpark_all()
        return self._take_drop(data)

    def receive_nowait(self) -> OutputChunk:
        """Whatever is buffered now, without waiting (e.g. to flush it when shutting down)."""
        self._release_hold()
        data = bytes(self._buffer)
        self._buffer.clear()
        self._room.unpark_all()
        return self._take_drop(data)

    def _release_hold(self) -> None:
        if self._held:
            self._held = False
            self._room.unpark_all()

    def _take_drop(self, data: bytes) -> OutputChunk:
        # Drops only ever remove the oldest buffered bytes, so every drop not reported yet
        # lies between what the reader saw last and the front of the buffer.
        dropped, self._unreported_drop = self._unreported_drop, 0
        return OutputChunk(data, dropped)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return (await self.receive_chunk(max_bytes)).data

    async def read_all(self) -> bytes:
        """Everything until EOF (convenience for short-lived processes)."""
        chunks = []
        while chunk := await self.receive_some():
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self._closed:
            return
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            try:
                on_close()
            except Exception:
                log.exception("the consumer of %s failed to take its last bytes", self.path)
        self._closed = True
        trio.lowlevel.notify_closing(self._fd)
        os.close(self._fd)
        self._readers.unpark_all()
        self._room.unpark_all()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


def fifo_bytes(fd: int) -> int:
    """How many bytes the pipe holds (FIONREAD)."""
    try:
        raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


def _hung_up(fd: int) -> bool:
    """True once no writer is left (POLLHUP; see ``OutputPipe._see_writer_close``)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(events & (select.POLLHUP | select.POLLERR) for _fd, events in poller.poll(0))


def _check_limit(limit: int) -> int:
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"an output buffer limit must be a positive integer, not {limit!r}")
    return limit


class InputPipe(trio.abc.SendStream):
    """Our writing end of a process's stdin FIFO."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._closed = False
        self._conflict = trio.lowlevel.ParkingLot()
        self._busy = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._busy:
            raise trio.BusyResourceError("another task is writing to this stdin")
        self._busy = True
        try:
            view = memoryview(data)
            await trio.lowlevel.checkpoint_if_cancelled()
            while view:
                if self._closed:
                    raise trio.ClosedResourceError("stdin is closed")
                try:
                    written = os.write(self._fd, view)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._fd)
                    continue
                except BrokenPipeError as exc:
                    raise trio.BrokenResourceError("the process closed its stdin") from exc
                view = view[written:]
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._busy = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stdin is closed")
        await trio.lowlevel.wait_writable(self._fd)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        trio.lowlevel.notify_closing(self._fd)
        os.close(self._fd)

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class DirectIO:
    """The open FIFOs of one process: ``stdin`` (a SendStream or None), ``stdout``, ``stderr``.

    Created by the actor before the RPC that makes the shim open the other ends; passed to the
    ``attach_stdio`` callback; closed and unlinked when the process is deleted.
    """

    def __init__(
        self,
        fifos: FifoSet,
        stdin: InputPipe | None,
        stdout: OutputPipe | None,
        stderr: OutputPipe | None,
    ) -> None:
        self.fifos = fifos
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.reopened = False  # see DirectIO.open
        self._stdin_closed = stdin is None

    @classmethod
    def open(
        cls,
        fifos: FifoSet,
        *,
        buffer_limit: int = DEFAULT_OUTPUT_BUFFER,
        mode: OutputMode = OutputMode.BLOCKING,
        reopened: bool = False,
    ) -> DirectIO:
        """mkfifo and open our ends without blocking; on failure nothing is left behind.

        ``reopened``: the process exists already (a restart re-attaches). Its output pipes
        read nothing until a consumer asks (see the module docstring) and ``reopened`` is
        True, so a log knows the FIFOs still hold what a crash left in them.
        """
        os.makedirs(fifos.directory, mode=0o700, exist_ok=True)
        opened: list[int] = []
        try:
            for path in fifos.paths():
                _make_fifo(path, reopen=reopened)
            flags = os.O_NONBLOCK | os.O_CLOEXEC
            stdin = stdout = stderr = None
            if fifos.stdin:
                # O_RDWR never blocks on Linux and never sees ENXIO without a reader.
                fd = os.open(fifos.stdin, os.O_RDWR | flags)
                opened.append(fd)
                stdin = InputPipe(fifos.stdin, fd)
            if fifos.stdout:
                fd = os.open(fifos.stdout, os.O_RDONLY | flags)
                opened.append(fd)
                stdout = OutputPipe(
                    fifos.stdout, fd, limit=buffer_limit, mode=mode, reopened=reopened
                )
            if fifos.stderr:
                fd = os.open(fifos.stderr, os.O_RDONLY | flags)
                opened.append(fd)
                stderr = OutputPipe(
                    fifos.stderr, fd, limit=buffer_limit, mode=mode, reopened=reopened
                )
        except BaseException:
            for fd in opened:
                os.close(fd)
            _unlink_all(fifos.paths())
            raise
        io = cls(fifos, stdin, stdout, stderr)
        io.reopened = reopened
        return io

    def pipes(self) -> list[OutputPipe]:
        return [p for p in (self.stdout, self.stderr) if p is not None]

    def configure_output(self, *, mode: OutputMode | None = None, limit: int | None = None) -> None:
        """Set the mode / buffer bound of stdout and stderr (see :class:`OutputMode`)."""
        for pipe in self.pipes():
            pipe.configure(mode=mode, limit=limit)

    @property
    def stdin_closed(self) -> bool:
        return self._stdin_closed

    def close_stdin_writer(self) -> bool:
        """Close our stdin end; True if it was open (the caller then sends Tasks.CloseIO)."""
        if self._stdin_closed or self.stdin is None:
            return False
        self._stdin_closed = True
        self.stdin.close()
        return True

    def close(self, *, unlink: bool = True) -> None:
        """Close every fd we hold and (by default) remove the FIFO files.

        Without ``unlink`` (we stop supervising; the process lives on) the FIFOs stay for
        whoever re-opens them, but bytes already read into our buffers and not consumed go
        away with us: that is said in the log, never silently.
        """
        self.close_stdin_writer()
        for pipe in self.pipes():
            if not unlink and pipe.buffered:
                log.warning(
                    "%d bytes of %s read but not consumed are discarded",
                    pipe.buffered,
                    os.path.basename(pipe.path),
                )
            pipe.close()
        if unlink:
            _unlink_all(self.fifos.paths())


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
