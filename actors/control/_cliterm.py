"""The command line's foreground session: stdio, terminal, signals and detach keys.

While ``run``, ``attach`` or ``exec`` holds the foreground, like docker:

* signals the CLI receives (Ctrl-C, ``kill``, a closed terminal) are sent on to the process
  (``--sig-proxy``, on by default) instead of ending the CLI, so the container's own
  handlers run and its exit code comes back;
* with a terminal, the local one is in raw mode, its size follows the window (SIGWINCH ->
  resize), and the detach keys (Ctrl-P Ctrl-Q by default) leave the process running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Final

import msgspec
import trio

from ..errors import ContainerdActorsError
from ._cliargs import DetachScanner
from ._clibase import EXIT_STREAM_FAILED, say

if TYPE_CHECKING:
    from .gateway_client import GatewayClient, StdioSession

__all__ = ["FORWARDED_SIGNALS", "StreamResult", "forwarded_signals", "raw_terminal", "stream"]

#: What docker's sig-proxy sends on: everything a user or a session manager sends to end or
#: poke a program, but not job control or SIGWINCH/SIGCHLD/SIGPIPE, which are about the CLI.
FORWARDED_SIGNALS: Final = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
)


class StreamResult(msgspec.Struct, kw_only=True):
    code: int | None = None
    detached: bool = False
    failure: str | None = None


@contextlib.contextmanager
def forwarded_signals(enabled: bool) -> Iterator[AsyncIterator[int] | None]:
    """Catch the forwarded signals from now on (so none is lost before the process starts)."""
    if not enabled:
        yield None
        return
    with trio.open_signal_receiver(*FORWARDED_SIGNALS) as receiver:
        yield receiver


@contextlib.contextmanager
def raw_terminal(enabled: bool) -> Iterator[None]:
    """Put our terminal in raw mode (keys go to the container's pty, which echoes them)."""
    if not enabled or not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _terminal_size() -> tuple[int, int] | None:
    for stream in (sys.stdout, sys.stdin, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            if stream.isatty():
                size = os.get_terminal_size(stream.fileno())
                return size.columns, size.lines
    return None


async def stream(
    gw: GatewayClient,
    container_id: str,
    exec_id: str | None,
    *,
    stdin: bool,
    tty: bool,
    signals: AsyncIterator[int] | None = None,
    detach_keys: bytes | None = None,
    ticket: dict[str, str] | None = None,
    allow_dropped: bool = False,
) -> StreamResult:
    """Copy a process's stdio to ours until it exits or we detach.

    Output lost in a lossy log is reported; it fails the command (exit 1) unless
    ``allow_dropped``.
    """
    result = StreamResult()

    async def kill(signum: int) -> None:
        if exec_id:
            params = {"id": container_id, "exec_id": exec_id, "signal": signum}
            await gw.call("process.kill", params)
        else:
            await gw.call("task.kill", {"id": container_id, "signal": signum})

    async def forward(receiver: AsyncIterator[int]) -> None:
        async for signum in receiver:
            # The process may be gone already; its exit status is what counts.
            with contextlib.suppress(ContainerdActorsError):
                await kill(signum)

    async def follow_window(session: StdioSession) -> None:
        with trio.open_signal_receiver(signal.SIGWINCH) as winches:
            async for _ in winches:
                size = _terminal_size()
                if size is not None:
                    await session.resize(*size)

    async def pump_stdin(session: StdioSession, cancel: trio.CancelScope) -> None:
        scanner = DetachScanner(detach_keys) if detach_keys else None
        async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as source:
            while data := await source.receive_some(1 << 16):
                if scanner is not None:
                    data, detach = scanner.feed(data)
                    if data:
                        await session.send_stdin(data)
                    if detach:
                        result.detached = True
                        cancel.cancel()
                        return
                else:
                    await session.send_stdin(data)
        await session.close_stdin()

    async with (
        gw.attach(container_id, exec_id, ticket=ticket) as session,
        trio.open_nursery() as nursery,
    ):
        if tty:
            size = _terminal_size()
            if size is not None:
                await session.resize(*size)
                nursery.start_soon(follow_window, session)
        if signals is not None:
            nursery.start_soon(forward, signals)
        if stdin:
            nursery.start_soon(pump_stdin, session, nursery.cancel_scope)
        async for channel, data in session.output_views():
            _write_all(sys.stdout.fileno() if channel == 1 else sys.stderr.fileno(), data)
        nursery.cancel_scope.cancel()
    result.code = session.exit_code
    result.failure = session.failure
    if session.dropped:
        say(
            f"warning: {session.dropped} bytes of output were dropped (lossy log mode; "
            f"{len(session.drop_reports)} gap(s))"
        )
        if not allow_dropped and not result.code:
            result.code = EXIT_STREAM_FAILED
    return result


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def describe_signal(signum: int) -> str:
    with contextlib.suppress(ValueError):
        return signal.Signals(signum).name
    return str(signum)
