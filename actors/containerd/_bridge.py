"""Run asyncio coroutines (grpclib) from Trio through one dedicated asyncio thread.

grpclib only runs on asyncio, the rest of the project is Trio. Each client owns one
:class:`AsyncioBridge`: a daemon thread running an asyncio loop that owns every asyncio object
(channel, streams, tasks). Trio tasks hand work to it with ``loop.call_soon_threadsafe`` and park
with :func:`trio.lowlevel.wait_task_rescheduled`; the loop wakes them through the
:class:`trio.lowlevel.TrioToken` captured by :meth:`AsyncioBridge.start`. The asyncio side never
blocks on Trio, so a slow or cancelled Trio task can't stall the loop.

A bridge belongs to the Trio run that started it. Using it from another run (or from a plain
thread) raises :exc:`RuntimeError`, because completions are delivered through that run's token.
Always ``await bridge.aclose()`` before the Trio run ends; otherwise the daemon thread and its
sockets live until the process exits.

Cancellation of :meth:`AsyncioBridge.run`: a Trio cancel asks the loop to cancel the asyncio
task and then waits for its verdict. If the task ended because of that cancel, the Trio caller
gets :exc:`trio.Cancelled`; if it completed or failed first, the caller gets that result or error
(and its next checkpoint raises Cancelled). ``asyncio.CancelledError`` never crosses over: a task
cancelled by :meth:`AsyncioBridge.aclose` yields :exc:`trio.ClosedResourceError`.

Cancellation of :meth:`BridgedStream.receive`: the Trio wait is abandoned at once, but the pull
already requested from the asyncio side stays outstanding and the item it produces is kept for
the next ``receive``. Cancelling the pull itself would throw ``CancelledError`` into the async
generator and tear down the whole gRPC stream, which would make the common "receive with a
timeout" loop destroy the subscription. At most one item is ever fetched ahead, so backpressure
is preserved.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import importlib
import os
import threading
import warnings
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

import msgspec
import outcome
import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

__all__ = ["AsyncioBridge", "BridgeStatistics", "BridgedStream"]

T = TypeVar("T")

_UVLOOP_ENV = "CONTAINERD_ACTORS_UVLOOP"


class BridgeStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of one :class:`AsyncioBridge`, read from the Trio thread."""

    calls_started: int
    calls_finished: int
    calls_cancelled: int
    """Calls that ended with ``trio.Cancelled`` because a Trio cancel reached the asyncio task."""
    streams_open: int
    tasks_in_flight: int
    """Asyncio tasks started by the bridge (calls and stream drivers) not yet reported finished."""
    closed: bool


def _new_event_loop() -> asyncio.AbstractEventLoop:
    if os.environ.get(_UVLOOP_ENV) == "1":
        try:
            # Imported by name so uvloop stays an optional, undeclared speed-up.
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            pass
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


class _Entry:
    """Something parked on the Trio side that the loop thread must eventually answer."""

    __slots__ = ("_atask",)

    # Any here and in _Call: an entry serves a call of any result type; the public
    # run()/open_stream() are generic in it, so callers get their T back.
    _atask: asyncio.Task[Any] | None

    def _fail_closed(self) -> None:
        """Answer with "bridge closed"; called when the loop thread is gone (Trio thread)."""
        raise NotImplementedError


@final
class AsyncioBridge:
    """One asyncio event loop in a daemon thread, driven from a single Trio run.

    Create with :meth:`start`, release with :meth:`aclose`.
    """

    __slots__ = (
        "_callback_errors",
        "_callbacks_taken",
        "_calls_cancelled",
        "_calls_finished",
        "_calls_started",
        "_close_requested",
        "_closed",
        "_entries",
        "_finalizing",
        "_inbox",
        "_inbox_scheduled",
        "_loop",
        "_loop_failure",
        "_outbox",
        "_outbox_scheduled",
        "_running",
        "_shutdown_callbacks",
        "_shutdown_timeout",
        "_streams_open",
        "_thread",
        "_thread_done",
        "_token",
    )

    def __init__(
        self,
        token: trio.lowlevel.TrioToken,
        loop: asyncio.AbstractEventLoop,
        *,
        name: str,
        shutdown_timeout: float,
    ) -> None:
        """Internal: use :meth:`start`."""
        self._token = token
        self._loop = loop
        self._shutdown_timeout = shutdown_timeout
        self._thread = threading.Thread(target=self._thread_main, name=name, daemon=True)
        # Trio-thread state.
        self._closed = False
        self._close_requested = False
        self._entries: set[_Entry] = set()
        self._running = trio.Event()
        self._thread_done = trio.Event()
        self._calls_started = 0
        self._calls_finished = 0
        self._calls_cancelled = 0
        self._streams_open = 0
        # Written by the loop thread, read by Trio only after the thread-finished notice.
        self._loop_failure: BaseException | None = None
        self._callback_errors: list[BaseException] = []
        # Appended from either thread (list.append is atomic); read by the loop thread.
        self._shutdown_callbacks: list[Callable[[], Awaitable[None]]] = []
        # Written by the loop thread only.
        self._callbacks_taken = False
        self._finalizing = False
        # Hand-offs between the threads, batched: under load one wakeup carries many calls
        # (deque append/popleft are atomic; the flag is cleared before draining, so a hand-off
        # that sees it set is always drained).
        self._outbox: collections.deque[Callable[[], object]] = collections.deque()
        self._outbox_scheduled = False
        self._inbox: collections.deque[Callable[[], object]] = collections.deque()
        self._inbox_scheduled = False

    @classmethod
    async def start(
        cls,
        *,
        name: str = "containerd-actors-asyncio",
        shutdown_timeout: float = 5.0,
    ) -> AsyncioBridge:
        """Start the thread and its loop; return once the loop is running.

        ``shutdown_timeout`` bounds each phase of closing (cancelled tasks winding down, each
        shutdown callback, leftover cleanup) and the wait when a stream is closed.
        """
        token = trio.lowlevel.current_trio_token()
        loop = _new_event_loop()
        bridge = cls(token, loop, name=name, shutdown_timeout=shutdown_timeout)
        try:
            bridge._thread.start()
        except BaseException:
            loop.close()
            raise
        try:
            await bridge._running.wait()
        except BaseException:
            with trio.CancelScope(shield=True):
                await bridge.aclose()
            raise
        if bridge._thread_done.is_set():
            failure = bridge._loop_failure
            await bridge.aclose()
            raise RuntimeError("the asyncio bridge loop stopped while starting") from failure
        return bridge

    async def run(self, fn: Callable[..., Awaitable[T]], *args: object) -> T:
        """Run ``fn(*args)`` as an asyncio task in the bridge loop and return its result.

        Exceptions raised by ``fn`` arrive unchanged (same object). See the module docstring for
        cancellation.
        """
        # _finalizing: the loop stopped on its own and is shutting down.
        if self._closed or self._finalizing:
            raise trio.ClosedResourceError("bridge closed")
        if trio.lowlevel.current_trio_token() is not self._token:
            raise RuntimeError("AsyncioBridge used outside the Trio run that started it")
        # Don't start an operation whose result nobody would wait for.
        await trio.lowlevel.checkpoint_if_cancelled()
        call = _Call(self, trio.lowlevel.current_task(), fn, args)
        try:
            self._post(call._submit)
        except RuntimeError:
            # The loop died on its own; its thread-finished notice marks us closed.
            raise self._closed_error() from None
        self._entries.add(call)
        self._calls_started += 1
        result: T = await trio.lowlevel.wait_task_rescheduled(call._abort)
        return result

    def open_stream(
        self, fn: Callable[..., AsyncIterator[T]], *args: object
    ) -> AbstractAsyncContextManager[BridgedStream[T]]:
        """Iterate ``fn(*args)`` inside the bridge loop, one item per :meth:`BridgedStream.receive`.

        One asyncio task creates, iterates and closes the iterator, so context managers inside an
        async generator (a grpclib stream) are entered and exited in the same task. Nothing is
        fetched until Trio asks: an async generator's body, including the RPC it opens, first
        runs on the first ``receive``.
        """
        if self._closed:
            raise trio.ClosedResourceError("bridge closed")
        return BridgedStream(self, fn, args)

    def add_shutdown_callback(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Have :meth:`aclose` run ``await fn()`` inside the loop before it stops.

        Callbacks run last-registered first, after the bridge's own tasks were cancelled, each
        bounded by ``shutdown_timeout``. May be called from Trio or from code running in the loop.
        """
        if self._closed or self._callbacks_taken:
            raise trio.ClosedResourceError("bridge closed")
        self._shutdown_callbacks.append(fn)

    def statistics(self) -> BridgeStatistics:
        return BridgeStatistics(
            calls_started=self._calls_started,
            calls_finished=self._calls_finished,
            calls_cancelled=self._calls_cancelled,
            streams_open=self._streams_open,
            tasks_in_flight=len(self._entries),
            closed=self._closed or self._finalizing,
        )

    async def aclose(self) -> None:
        """Cancel outstanding tasks, run shutdown callbacks, stop the loop and join the thread.

        Idempotent. Closing completes even if the caller is cancelled (shielded, bounded by a few
        ``shutdown_timeout`` periods); the cancellation is raised afterwards. If shutdown callbacks
        failed, the first ``aclose`` raises them as an exception group once closing is done.
        """
        if not self._close_requested:
            self._close_requested = True
            self._closed = True
            # If the loop is already closed, its thread-finished notice is on its way.
            with suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._begin_shutdown, tuple(self._entries))
        # Three bounded phases in the loop (cancelled tasks, callbacks, leftovers) plus slack.
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + 3 * self._shutdown_timeout + 1.0
            await self._thread_done.wait()
            # The thread-finished notice is the thread's last act, so this join is brief.
            await trio.to_thread.run_sync(self._thread.join, abandon_on_cancel=False)
        if not self._thread_done.is_set():
            self._on_thread_finished()
            warnings.warn(
                f"asyncio bridge thread {self._thread.name!r} did not stop; abandoning it",
                RuntimeWarning,
                stacklevel=2,
            )
        errors, self._callback_errors = self._callback_errors, []
        if errors:
            raise BaseExceptionGroup("asyncio bridge shutdown callbacks failed", errors)
        await trio.lowlevel.checkpoint()

    # ----------------------------------------------------------------- Trio thread internals

    def _closed_error(self) -> trio.ClosedResourceError:
        error = trio.ClosedResourceError("bridge closed")
        error.__cause__ = self._loop_failure
        return error

    def _on_loop_running(self) -> None:
        self._running.set()

    def _post(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` soon in the loop thread (Trio thread; batched wakeups)."""
        self._outbox.append(fn)
        if not self._outbox_scheduled:
            self._outbox_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain_outbox)
            except RuntimeError:
                self._outbox_scheduled = False
                raise

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False
        inbox = self._inbox
        while inbox:
            inbox.popleft()()

    def _on_thread_finished(self) -> None:
        self._closed = True
        entries = list(self._entries)
        self._entries.clear()
        for entry in entries:
            entry._fail_closed()
        self._running.set()
        self._thread_done.set()

    # ----------------------------------------------------------------- loop thread internals

    def _notify(self, fn: Callable[[], object]) -> None:
        # If the Trio run is gone, nobody is left to wake.
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)

    def _notify_batched(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` soon in the Trio thread (loop thread; batched wakeups, in order)."""
        self._inbox.append(fn)
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            try:
                self._token.run_sync_soon(self._drain_inbox)
            except trio.RunFinishedError:
                pass  # the Trio run is gone; nobody is left to wake

    def _drain_outbox(self) -> None:
        self._outbox_scheduled = False
        outbox = self._outbox
        while outbox:
            outbox.popleft()()

    def _thread_main(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.call_soon(self._notify, self._on_loop_running)
                loop.run_forever()
            except BaseException as exc:  # the loop died; still clean up and report
                self._loop_failure = exc
            self._finalizing = True
            try:
                loop.run_until_complete(self._finalize())
            except BaseException as exc:
                if self._loop_failure is None:
                    self._loop_failure = exc
        finally:
            asyncio.set_event_loop(None)
            loop.close()
            # Last act: after this Trio may join the thread and fail whatever is still parked.
            self._notify(self._on_thread_finished)

    def _begin_shutdown(self, entries: tuple[_Entry, ...]) -> None:
        if not self._finalizing:
            self._loop.create_task(self._shutdown(entries))

    async def _shutdown(self, entries: tuple[_Entry, ...]) -> None:
        try:
            # Bridge tasks first, so nothing uses the channel while callbacks close it.
            tasks = [e._atask for e in entries if e._atask is not None and not e._atask.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=self._shutdown_timeout)
            await self._run_shutdown_callbacks()
        finally:
            self._loop.stop()

    async def _run_shutdown_callbacks(self) -> None:
        if self._callbacks_taken:
            return
        self._callbacks_taken = True
        for callback in reversed(self._shutdown_callbacks):
            try:
                async with asyncio.timeout(self._shutdown_timeout):
                    await callback()
            except BaseException as exc:  # reported by aclose; keep closing
                self._callback_errors.append(exc)

    async def _finalize(self) -> None:
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        # Whatever else still runs (grpclib internals, stray tasks) must not outlive the loop.
        leftovers = [task for task in asyncio.all_tasks(loop) if task is not current]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=self._shutdown_timeout)
        # Only still pending if the loop stopped without aclose (it died or was stopped by
        # bridged code); the channel must be closed either way.
        await self._run_shutdown_callbacks()
        await loop.shutdown_asyncgens()
        # grpclib resolves TCP hosts in the default executor; its threads must go too.
        with suppress(TimeoutError):
            await asyncio.wait_for(loop.shutdown_default_executor(), self._shutdown_timeout)
        # Closed transports release their sockets in call_soon callbacks; let those run.
        for _ in range(2):
            await asyncio.sleep(0)


@final
class _Call(_Entry):
    """One :meth:`AsyncioBridge.run` invocation, shared by both threads."""

    __slots__ = ("_args", "_bridge", "_fn", "_raise_cancel", "_result", "_task")

    def __init__(
        self,
        bridge: AsyncioBridge,
        task: trio.lowlevel.Task,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[object, ...],
    ) -> None:
        self._atask = None
        self._bridge = bridge
        self._task = task
        self._fn = fn
        self._args = args
        self._raise_cancel: trio.lowlevel.RaiseCancelT | None = None
        # None until the asyncio task ends; stays None if it was cancelled before its first step.
        self._result: outcome.Outcome[Any] | None = None

    # Loop thread.

    def _submit(self) -> None:
        # acapture keeps KeyboardInterrupt/SystemExit inside the task instead of letting them
        # escape run_forever and kill the loop.
        atask = self._bridge._loop.create_task(outcome.acapture(self._fn, *self._args))
        atask.add_done_callback(self._done)
        self._atask = atask

    def _cancel(self) -> None:
        if self._atask is not None:
            self._atask.cancel()

    def _done(self, atask: asyncio.Task[outcome.Outcome[Any]]) -> None:
        if not atask.cancelled():
            self._result = atask.result()
        self._atask = None
        self._bridge._notify_batched(self._deliver)

    # Trio thread.

    def _abort(self, raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._raise_cancel = raise_cancel
        # If the loop is closed, the thread-finished notice will wake us instead.
        with suppress(RuntimeError):
            self._bridge._loop.call_soon_threadsafe(self._cancel)
        return trio.lowlevel.Abort.FAILED

    def _deliver(self) -> None:
        bridge = self._bridge
        try:
            bridge._entries.remove(self)
        except KeyError:
            return  # already failed by the thread-finished notice
        result = self._result
        if result is None:
            result = self._cancelled_outcome(None)
        elif isinstance(result, outcome.Error) and isinstance(result.error, asyncio.CancelledError):
            result = self._cancelled_outcome(result.error)
        bridge._calls_finished += 1
        trio.lowlevel.reschedule(self._task, result)

    def _cancelled_outcome(self, cancelled: BaseException | None) -> outcome.Outcome[Any]:
        bridge = self._bridge
        if self._raise_cancel is not None:
            bridge._calls_cancelled += 1
            return outcome.capture(self._raise_cancel)
        # _finalizing is set by the loop thread before it cancels leftovers, and the queue
        # behind run_sync_soon orders that write before this read.
        if bridge._closed or bridge._finalizing:
            return outcome.Error(bridge._closed_error())
        # Cancelled by code inside the loop, not by Trio nor aclose: a bug on the asyncio side.
        error = RuntimeError("asyncio task was cancelled from inside the bridge loop")
        error.__cause__ = cancelled
        return outcome.Error(error)

    def _fail_closed(self) -> None:
        # The loop is gone and the task can never finish; let it be collected (and reported
        # by asyncio) now rather than whenever this call's traceback is dropped.
        self._atask = None
        self._bridge._calls_finished += 1
        trio.lowlevel.reschedule(self._task, self._cancelled_outcome(None))


def _uncancel_current_task() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


class _End(enum.Enum):
    EXHAUSTED = enum.auto()
    CANCELLED = enum.auto()


@final
class BridgedStream(_Entry, Generic[T]):
    """An async iterator living in the bridge loop, pulled one item at a time from Trio.

    Obtained from :meth:`AsyncioBridge.open_stream` and usable only inside its ``async with``.
    ``receive`` raises :exc:`trio.EndOfChannel` once the iterator is exhausted; an exception
    from the iterator is raised once, later receives raise :exc:`trio.BrokenResourceError`.
    After the context exits, or the bridge closes, receives raise
    :exc:`trio.ClosedResourceError`. A cancelled ``receive`` leaves the stream usable (see the
    module docstring). Errors the iterator raises after the consumer left are dropped.
    """

    __slots__ = (
        "_args",
        "_bridge",
        "_buffered",
        "_cancel_requested",
        "_end",
        "_entered",
        "_error_delivered",
        "_exited",
        "_final",
        "_finished",
        "_fn",
        "_pending_pull",
        "_pull",
        "_waiter",
    )

    def __init__(
        self,
        bridge: AsyncioBridge,
        fn: Callable[..., AsyncIterator[T]],
        args: tuple[object, ...],
    ) -> None:
        """Internal: use :meth:`AsyncioBridge.open_stream`."""
        self._atask = None
        self._bridge = bridge
        self._fn = fn
        self._args = args
        # Loop-thread state.
        self._pull: asyncio.Future[None] | None = None
        self._cancel_requested = False
        # How the iterator ended; stays CANCELLED if the task never got to run.
        self._end: _End | BaseException = _End.CANCELLED
        # Trio-thread state.
        self._entered = False
        self._exited = False
        self._waiter: trio.lowlevel.Task | None = None
        self._pending_pull = False
        self._buffered: outcome.Value[T] | None = None
        self._final: _End | BaseException | None = None
        self._error_delivered = False
        self._finished = trio.Event()

    async def __aenter__(self) -> BridgedStream[T]:
        if self._entered:
            raise RuntimeError("a BridgedStream can be entered only once")
        bridge = self._bridge
        if bridge._closed:
            raise trio.ClosedResourceError("bridge closed")
        if trio.lowlevel.current_trio_token() is not bridge._token:
            raise RuntimeError("AsyncioBridge used outside the Trio run that started it")
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            bridge._loop.call_soon_threadsafe(self._start)
        except RuntimeError:
            raise bridge._closed_error() from None
        self._entered = True
        bridge._entries.add(self)
        bridge._streams_open += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._exited or not self._entered:
            await trio.lowlevel.checkpoint()
            return
        self._exited = True
        bridge = self._bridge
        bridge._streams_open -= 1
        self._buffered = None
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            closed = trio.ClosedResourceError("stream closed")
            trio.lowlevel.reschedule(waiter, outcome.Error(closed))
        if self._final is None:
            # If the loop is closed, the thread-finished notice marks us finished instead.
            with suppress(RuntimeError):
                bridge._loop.call_soon_threadsafe(self._cancel)
        # Wait for the iterator's cleanup (grpclib stream exit) so nothing outlives the block.
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + bridge._shutdown_timeout
            await self._finished.wait()
        if not self._finished.is_set():
            warnings.warn(
                "bridged async iterator did not finish after being cancelled",
                RuntimeWarning,
                stacklevel=2,
            )

    def __aiter__(self) -> BridgedStream[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def receive(self) -> T:
        """Return the next item; raise :exc:`trio.EndOfChannel` when the iterator is exhausted."""
        if not self._entered:
            raise RuntimeError("use 'async with bridge.open_stream(...)' before receiving")
        if self._waiter is not None:
            raise trio.BusyResourceError("another task is already receiving from this stream")
        await trio.lowlevel.checkpoint_if_cancelled()
        buffered = self._buffered
        if buffered is not None:
            self._buffered = None
            await trio.lowlevel.cancel_shielded_checkpoint()
            return buffered.unwrap()
        error = self._terminal_error()
        if error is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise error
        if not self._pending_pull:
            # After a cancelled receive the earlier pull is still outstanding; reuse it.
            try:
                self._bridge._loop.call_soon_threadsafe(self._request_next)
            except RuntimeError:
                raise self._bridge._closed_error() from None
            self._pending_pull = True
        self._waiter = trio.lowlevel.current_task()
        item: T = await trio.lowlevel.wait_task_rescheduled(self._abort)
        return item

    def prefetch(self) -> None:
        """Ask for the next item now without waiting for it; a later :meth:`receive` gets it.

        For a producer whose work should overlap the caller's (a request sent while the next
        one is being prepared). Does nothing when an item is buffered or asked for already, or
        when the stream has ended.
        """
        if not self._entered:
            raise RuntimeError("use 'async with bridge.open_stream(...)' before prefetching")
        if self._pending_pull or self._buffered is not None:
            return
        if self._exited or self._final is not None:
            return
        try:
            self._bridge._loop.call_soon_threadsafe(self._request_next)
        except RuntimeError:
            return  # the loop is gone: the next receive reports it
        self._pending_pull = True

    # Trio thread.

    def _abort(self, raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _terminal_error(self) -> BaseException | None:
        if self._exited:
            return trio.ClosedResourceError("stream closed")
        final = self._final
        if final is None:
            return None
        if final is _End.EXHAUSTED:
            return trio.EndOfChannel()
        if final is _End.CANCELLED:
            return self._bridge._closed_error()
        if not self._error_delivered:
            self._error_delivered = True
            return final
        broken = trio.BrokenResourceError("the bridged iterator failed earlier")
        broken.__cause__ = final
        return broken

    def _on_item(self, item: T) -> None:
        self._pending_pull = False
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter, outcome.Value(item))
        elif not self._exited:
            self._buffered = outcome.Value(item)

    def _on_finished(self, result: _End | BaseException) -> None:
        try:
            self._bridge._entries.remove(self)
        except KeyError:
            return  # already failed by the thread-finished notice
        self._finish(result)

    def _fail_closed(self) -> None:
        self._finish(_End.CANCELLED)

    def _finish(self, result: _End | BaseException) -> None:
        self._pending_pull = False
        if self._final is None:
            self._final = result
        self._finished.set()
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            error = self._terminal_error()
            assert error is not None
            trio.lowlevel.reschedule(waiter, outcome.Error(error))

    # Loop thread.

    def _start(self) -> None:
        loop = self._bridge._loop
        self._pull = loop.create_future()
        atask = loop.create_task(self._drive())
        atask.add_done_callback(self._driver_done)
        self._atask = atask

    def _request_next(self) -> None:
        pull = self._pull
        if pull is not None and not pull.done():
            pull.set_result(None)

    def _cancel(self) -> None:
        self._cancel_requested = True
        if self._atask is not None:
            self._atask.cancel()

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        token = self._bridge._token
        iterator: AsyncIterator[T] | None = None
        try:
            iterator = aiter(self._fn(*self._args))
            while True:
                pull = self._pull
                assert pull is not None
                await pull
                self._pull = loop.create_future()
                try:
                    item = await anext(iterator)
                except StopAsyncIteration:
                    self._end = _End.EXHAUSTED
                    return
                if self._cancel_requested:
                    return  # the iterator swallowed our cancel; nobody wants the item
                token.run_sync_soon(self._on_item, item)
        except asyncio.CancelledError:
            # Swallowed so the iterator's cleanup below can still await; uncancel keeps
            # asyncio.timeout() inside that cleanup working.
            _uncancel_current_task()
        except BaseException as exc:  # delivered to Trio, including KeyboardInterrupt
            self._end = exc
        finally:
            await self._close_iterator(iterator)

    def _driver_done(self, atask: asyncio.Task[None]) -> None:
        # A done callback rather than a finally in _drive: a task cancelled before its first
        # step never runs its body.
        with suppress(trio.RunFinishedError):
            self._bridge._token.run_sync_soon(self._on_finished, self._end)

    @staticmethod
    async def _close_iterator(iterator: AsyncIterator[Any] | None) -> None:
        # An async generator parked at a yield only runs its finally when closed explicitly.
        aclose: Callable[[], Awaitable[object]] | None = getattr(iterator, "aclose", None)
        if aclose is None:
            return
        try:
            await aclose()
        except asyncio.CancelledError:
            _uncancel_current_task()
        except Exception:
            pass  # errors during cleanup after cancel/exhaustion have no consumer left
