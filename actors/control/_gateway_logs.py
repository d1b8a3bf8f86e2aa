"""The control plane's container logs: the one consumer of every init process's output.

For each container the gateway starts, a drain task moves stdout and stderr from the FIFOs
into the container's :class:`~actors._logstore.LogStore` (one directory per container under
``root``). It is the only reader of those FIFOs: ``run``, ``attach`` and ``logs`` read the
store, so any number of them see the same bytes, and a slow websocket never holds back the
container. The drain waits only for the disk: when the disk lags, the FIFO fills and the
container blocks.

By default (blocking mode) the drain never holds output in memory: it claims the FIFO and
the kernel splices each record's bytes from the FIFO into the file, so a SIGKILL of ``serve``
at any moment loses nothing and duplicates nothing. The next ``serve`` re-opens the FIFOs
(the shim kept them) and, before draining on, completes the record the kill interrupted
with the bytes still at the head of that stream's FIFO. A container that opted into lossy
output is drained through the pipe's ring buffer instead; drops are recorded in the log as
gap records and every reader is told (what the ring buffer holds when ``serve`` is killed
is lost, as docker's non-blocking mode loses it).

A FIFO lives only while someone has it open, and the shim closes its ends when the process's
output ends: a process that exits while no ``serve`` runs would take the bytes left in its
FIFO with it. So every claimed FIFO is also held by the FIFO keeper (``_fifokeeper``), a small
process of its own that never reads and lets go once the FIFO is drained or removed.

Per-container settings (rotation, output mode) live in ``<root>/<id>/config.json`` so a
restarted ``serve`` treats the container the same way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeAlias, TypeVar

import msgspec
import trio

from ..core._logformat import LogRecord, LogStream
from ..core._logstore import LogConfig, LogReadOptions, LogStore
from ..core.stdio import DEFAULT_OUTPUT_BUFFER, DirectIO, OutputMode, OutputPipe, fifo_bytes
from ._fifokeeper import FifoKeeper, watch_keeper

__all__ = ["ContainerLogSettings", "LogManager", "timestamp_prefix"]

log = logging.getLogger("containerd_actors.logs")

Buffer: TypeAlias = bytes | memoryview

CONFIG_FILE: Final = "config.json"
DRAIN_CHUNK: Final = 1 << 16
#: The most output bytes one websocket message carries (the client accepts up to 1 MiB).
MESSAGE_LIMIT: Final = 1 << 16
_CHANNEL_BYTE: Final = {int(LogStream.STDOUT): b"\x01", int(LogStream.STDERR): b"\x02"}
WRITE_RETRY_SECONDS: Final = 1.0
_T = TypeVar("_T")


def _fifo_bytes(pipe: OutputPipe) -> int:
    try:
        return fifo_bytes(pipe.fileno())
    except trio.ClosedResourceError:
        return 0


class ContainerLogSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What one container asked for (None: the server's default)."""

    max_size: int | None = None
    max_files: int | None = None
    mode: OutputMode = OutputMode.BLOCKING
    buffer_size: int | None = None
    execs: bool = False  # exec sessions' output goes to the log too


class LogManagerStatistics(msgspec.Struct, frozen=True, kw_only=True):
    stores_open: int
    draining: int
    bytes_written: int
    gaps: int


class LogManager:
    """Log stores of one namespace's containers; run :meth:`run` in a nursery first."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        defaults: LogConfig | None = None,
        *,
        keep_fifos: bool = True,
    ) -> None:
        self.root = Path(root)
        # One keeper per state directory (the parent of the namespaces' log roots).
        self.keeper = FifoKeeper(self.root.parent / "fifokeeper.sock") if keep_fifos else None
        self.defaults = defaults or LogConfig()
        self._stores: dict[str, LogStore] = {}
        self._settings: dict[str, ContainerLogSettings] = {}
        self._draining: dict[str, int] = {}
        self._teeing: dict[str, int] = {}  # exec sessions writing to the log (opt-in)
        # FIFO path -> its reader's fd, for every FIFO drained now: what a new keeper gets.
        self._kept: dict[str, Callable[[], int]] = {}
        self._drain_ended = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self._bytes = 0
        self._gaps = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the drain tasks until cancelled (drains stop; the FIFOs stay with the actors)."""
        try:
            if self.keeper is not None:
                try:
                    await trio.to_thread.run_sync(self.keeper.connect)
                except Exception as exc:  # serve runs on; watch_keeper retries and warns
                    log.warning("cannot start the FIFO keeper yet: %s", exc)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.keeper is not None:
                    nursery.start_soon(watch_keeper, self.keeper, self._kept)
                task_status.started()
                await trio.sleep_forever()
        finally:
            if self.keeper is not None:
                self.keeper.close()

    def statistics(self) -> LogManagerStatistics:
        return LogManagerStatistics(
            stores_open=len(self._stores),
            draining=sum(self._draining.values()),
            bytes_written=self._bytes,
            gaps=self._gaps,
        )

    # -- settings and stores ----------------------------------------------------------------

    def directory(self, container_id: str) -> Path:
        return self.root / container_id

    def configure(self, container_id: str, settings: ContainerLogSettings) -> None:
        """Record a new container's settings (validated first: bad ones change nothing)."""
        self._config_from(settings)
        directory = self.directory(container_id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / CONFIG_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(msgspec.json.encode(settings))
        self._settings[container_id] = settings
        self._stores.pop(container_id, None)

    def settings(self, container_id: str) -> ContainerLogSettings:
        settings = self._settings.get(container_id)
        if settings is None:
            settings = ContainerLogSettings()
            with contextlib.suppress(OSError, msgspec.DecodeError, msgspec.ValidationError):
                raw = (self.directory(container_id) / CONFIG_FILE).read_bytes()
                settings = msgspec.json.decode(raw, type=ContainerLogSettings)
            self._settings[container_id] = settings
        return settings

    def _config_from(self, settings: ContainerLogSettings) -> LogConfig:
        return LogConfig(
            max_size=settings.max_size or self.defaults.max_size,
            max_files=settings.max_files or self.defaults.max_files,
        )

    def store(self, container_id: str) -> LogStore:
        """The container's store (created on first use; reading an absent log gives nothing)."""
        store = self._stores.get(container_id)
        if store is None:
            config = self._config_from(self.settings(container_id))
            store = LogStore(self.directory(container_id), config)
            self._stores[container_id] = store
        return store

    def remove(self, container_id: str) -> None:
        """The container is gone: delete its log (open readers finish what they hold)."""
        store = self._stores.pop(container_id, None) or LogStore(self.directory(container_id))
        store.remove()
        self._settings.pop(container_id, None)
        self._draining.pop(container_id, None)
        self._teeing.pop(container_id, None)
        self._drain_ended.unpark_all()

    def unknown(self, known: set[str]) -> list[str]:
        """Ids of the logs kept here for containers not in ``known`` (candidates for removal:
        the caller checks they are really gone)."""
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name in known or self._draining.get(name) or self._teeing.get(name):
                continue
            path = self.root / name
            if not path.is_symlink() and path.is_dir():  # anything else was never ours
                found.append(name)
        return found

    # -- exec output (opt-in) -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exec_tee(
        self, container_id: str
    ) -> AsyncGenerator[Callable[[int, bytes], Awaitable[None]] | None, None]:
        """While an exec session runs: a function that appends what it forwards to the
        container's log, or None when the container did not ask for that (``execs``).

        The session stays the exec's only reader (nothing else drains an exec's FIFOs), so
        what it forwards and what the log keeps are the same bytes.
        """
        if not self.settings(container_id).execs or self._nursery is None:
            yield None
            return
        store = self.store(container_id)
        store.start_writing()
        self._teeing[container_id] = self._teeing.get(container_id, 0) + 1

        async def append(stream: int, data: bytes) -> None:
            await self._write(functools.partial(store.append, stream, data), store)
            self._bytes += len(data)

        try:
            yield append
        finally:
            self._release(self._teeing, container_id, store)

    def _release(self, counts: dict[str, int], container_id: str, store: LogStore) -> None:
        """One writer of the store is done; the last one (drain or exec tee) finishes it."""
        left = counts.get(container_id, 1) - 1
        if left > 0:
            counts[container_id] = left
            return
        counts.pop(container_id, None)
        if not self._draining.get(container_id) and not self._teeing.get(container_id):
            store.finish()
        self._drain_ended.unpark_all()

    async def settled(self, container_id: str) -> None:
        """Until no drain of the container runs: everything its task wrote is in the log
        (its FIFOs reached end of stream). Bound the wait: a child that inherited the
        output can keep a FIFO open long after the task exited."""
        while self._draining.get(container_id):
            await self._drain_ended.park()

    # -- draining ---------------------------------------------------------------------------

    def stdio_callback(self, container_id: str) -> Callable[[DirectIO], None]:
        """An ``attach_stdio`` callback that makes the log the consumer of the new task."""

        def attach(io: DirectIO) -> None:
            self.drain(container_id, io)

        return attach

    def draining(self, container_id: str) -> bool:
        return self._draining.get(container_id, 0) > 0

    def drain(self, container_id: str, io: DirectIO) -> None:
        """Move ``io``'s output into the store until both streams end."""
        if self._nursery is None:
            raise RuntimeError("LogManager.run is not running")
        settings = self.settings(container_id)
        store = self.store(container_id)
        streams = [
            (pipe, stream)
            for pipe, stream in ((io.stdout, LogStream.STDOUT), (io.stderr, LogStream.STDERR))
            if pipe is not None and not pipe.claimed  # a second hand-over of the same io
        ]
        if not streams:
            return
        if settings.mode is OutputMode.LOSSY:
            io.configure_output(
                mode=settings.mode, limit=settings.buffer_size or DEFAULT_OUTPUT_BUFFER
            )
            store.start_writing()
            copies = [
                functools.partial(self._copy, store, pipe, stream) for pipe, stream in streams
            ]
        else:
            # The same process as before a restart: its FIFOs hold the rest of a record a
            # kill interrupted (unless something read them since, which nothing here does).
            fifos = {
                int(stream): pipe.fileno()
                for pipe, stream in streams
                if io.reopened and not pipe.total_bytes
            }
            store.start_writing(fifos)
            copies = []
            for pipe, stream in streams:
                early = pipe.claim(functools.partial(self._last_bytes, store, pipe, stream))
                if self.keeper is not None:
                    self._kept[pipe.path] = pipe.fileno
                    self.keeper.hold(pipe.path, pipe.fileno())
                copies.append(functools.partial(self._splice, store, pipe, stream, early))
        self._draining[container_id] = self._draining.get(container_id, 0) + 1
        self._nursery.start_soon(self._drain, container_id, store, copies)

    async def _drain(
        self, container_id: str, store: LogStore, copies: Sequence[Callable[[], Awaitable[None]]]
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for copy in copies:
                    nursery.start_soon(copy)
        finally:
            self._release(self._draining, container_id, store)

    async def _splice(
        self, store: LogStore, pipe: OutputPipe, stream: LogStream, early: bytes
    ) -> None:
        """Blocking mode: FIFO -> file by splice(2), never through our memory."""
        try:
            if early:  # read before the log took over (a task started without it)
                await self._write(functools.partial(store.append, stream, early), store)
                self._bytes += len(early)
            while True:
                available = await pipe.wait_fifo()
                if not available or not store.writing:
                    return  # end of stream, or the container was removed under us
                self._bytes += await self._write(
                    functools.partial(self._splice_once, store, pipe, stream, available), store
                )
        except trio.ClosedResourceError:
            return  # the process was deleted (its last bytes went in through on_close)
        finally:
            self._kept.pop(pipe.path, None)

    @staticmethod
    def _splice_once(store: LogStore, pipe: OutputPipe, stream: LogStream, available: int) -> int:
        # The fd is looked up at each try: a retry after the process was deleted must not
        # splice from a closed (or reused) descriptor.
        return store.append_from_fifo(stream, pipe.fileno(), available)

    def _last_bytes(self, store: LogStore, pipe: OutputPipe, stream: LogStream) -> None:
        """The process is being deleted: what is still in its FIFO goes in now (no waiting:
        the shim has written everything by the time Tasks.Delete returns)."""
        if not store.writing:
            return
        try:
            while available := _fifo_bytes(pipe):
                moved = store.append_from_fifo(stream, pipe.fileno(), available)
                if not moved:
                    break
                self._bytes += moved
        except OSError as exc:
            left = _fifo_bytes(pipe)
            log.error(
                "the log of %s lost the last %d bytes of its %s: %s",
                store.directory.name,
                left,
                stream.name.lower(),
                exc,
            )

    async def _copy(self, store: LogStore, pipe: OutputPipe, stream: LogStream) -> None:
        try:
            await self._copy_until_eof(store, pipe, stream)
        finally:
            # Shutting down (serve stops): the pump stops taking from the FIFO (the next
            # serve finds the rest there), and what it already took exists nowhere else, so
            # it goes to the log before this task ends.
            pipe.pause_reading()
            if store.writing:
                with contextlib.suppress(OSError, trio.ClosedResourceError):
                    rest = pipe.receive_nowait()
                    if rest.dropped_before:
                        store.append_gap(stream, rest.dropped_before)
                    store.append(stream, rest.data)

    async def _copy_until_eof(self, store: LogStore, pipe: OutputPipe, stream: LogStream) -> None:
        while True:
            try:
                chunk = await pipe.receive_chunk(DRAIN_CHUNK)
            except trio.ClosedResourceError:
                return  # the process was deleted
            if not store.writing:
                return  # the container was removed under us
            if chunk.dropped_before:
                self._gaps += 1
                await self._write(
                    functools.partial(store.append_gap, stream, chunk.dropped_before), store
                )
            if not chunk.data:
                return
            await self._write(functools.partial(store.append, stream, chunk.data), store)
            self._bytes += len(chunk.data)

    async def _write(self, write: Callable[[], _T], store: LogStore) -> _T | int:
        # A full or failing disk must neither lose output nor kill the drain: hold the chunk
        # (the FIFO then fills and the container waits, as with a slow reader) and retry.
        warned = False
        while store.writing:
            try:
                return write()
            except OSError as exc:
                if not warned:
                    log.error(
                        "cannot write the log of %s (will retry): %s", store.directory.name, exc
                    )
                    warned = True
                await trio.sleep(WRITE_RETRY_SECONDS)
        return 0


# -- reading for the websocket ----------------------------------------------------------------


def timestamp_prefix(nanoseconds: int) -> bytes:
    """RFC 3339 with nanoseconds, UTC, as docker's ``--timestamps`` prints it."""
    seconds, nanos = divmod(nanoseconds, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z ".encode()


class Stamper:
    """Prefixes every line start with its record's timestamp (per stream: a line may span
    records, and stdout's and stderr's partial lines interleave)."""

    def __init__(self) -> None:
        self._at_line_start = {int(LogStream.STDOUT): True, int(LogStream.STDERR): True}

    def apply(self, record: LogRecord) -> bytes:
        pieces = []
        start = self._at_line_start.get(record.stream, True)
        prefix = timestamp_prefix(record.timestamp)
        for line in record.data.splitlines(keepends=True):
            if start:
                pieces.append(prefix)
            pieces.append(line)
            start = line.endswith(b"\n")
        self._at_line_start[record.stream] = start
        return b"".join(pieces)


async def log_chunks(
    store: LogStore, options: LogReadOptions, *, timestamps: bool = False
) -> AsyncGenerator[tuple[int, bytes, int], None]:
    """``(stream, data, dropped)`` for the websocket: data to print, or a gap to report.

    Records of one stream that one read of the file returned together come joined, up to
    :data:`MESSAGE_LIMIT` bytes (never more); nothing waits for more records to come.
    """
    async with contextlib.aclosing(_log_parts(store, options, timestamps)) as pieces:
        async for stream, parts, dropped in pieces:
            yield stream, b"".join(parts), dropped


async def _log_parts(
    store: LogStore, options: LogReadOptions, timestamps: bool
) -> AsyncGenerator[tuple[int, list[Buffer], int], None]:
    # Per message, not per record: a line-oriented process leaves records of a few KiB, and
    # a message per record costs the websocket, the client and its write(2) as much as a
    # full one. The parts are joined once, by whoever frames them.
    stamper = Stamper() if timestamps else None
    async with contextlib.aclosing(store.read_batches(options)) as batches:
        async for batch in batches:
            parts: list[Buffer] = []
            size = stream = 0
            for record in batch:
                if record.dropped:
                    if parts:
                        yield stream, parts, 0
                        parts, size = [], 0
                    yield record.stream, [], record.dropped
                    continue
                data: Buffer = stamper.apply(record) if stamper else record.data
                if parts and (record.stream != stream or size + len(data) > MESSAGE_LIMIT):
                    yield stream, parts, 0
                    parts, size = [], 0
                stream = record.stream
                if len(data) > MESSAGE_LIMIT:  # a stamped record of very short lines
                    view = memoryview(data)
                    while len(view) > MESSAGE_LIMIT:
                        yield stream, [view[:MESSAGE_LIMIT]], 0
                        view = view[MESSAGE_LIMIT:]
                    data = view
                parts.append(data)
                size += len(data)
            if parts:
                yield stream, parts, 0


def dropped_status_message(stream: int, dropped: int) -> bytes:
    """A k8s-shaped Status on the ERROR channel marking where output was dropped (lossy
    mode). It is not the final status: the stream goes on after it."""
    name = "stderr" if stream == LogStream.STDERR else "stdout" if stream else "output"
    return msgspec.json.encode(
        {
            "metadata": {},
            "status": "Failure",
            "reason": "OutputDropped",
            "message": f"{dropped} bytes of {name} were dropped here",
            "details": {"causes": [{"reason": "DroppedBytes", "message": str(dropped)}]},
        }
    )


async def send_log_frames(
    ws: Any, store: LogStore, options: LogReadOptions, *, timestamps: bool = False
) -> None:
    """Send a log read as k8s channel frames (1 stdout, 2 stderr, 3 for a drop marker)."""
    async with contextlib.aclosing(_log_parts(store, options, timestamps)) as pieces:
        async for stream, parts, dropped in pieces:
            if dropped:
                await ws.send_message(bytes((3,)) + dropped_status_message(stream, dropped))
            else:  # the channel byte and the data in one copy
                await ws.send_message(
                    b"".join((_CHANNEL_BYTE.get(stream) or bytes((stream,)), *parts))
                )
