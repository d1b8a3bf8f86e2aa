"""AsyncioBridge: Trio <-> asyncio calls, streams, cancellation and clean shutdown."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import threading
from typing import TYPE_CHECKING, Any

import pytest
import trio

from actors.containerd._bridge import AsyncioBridge, BridgedStream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

_names = itertools.count()


def _unique_name() -> str:
    return f"test-bridge-{os.getpid()}-{next(_names)}"


def _thread_alive(name: str) -> bool:
    return any(thread.name == name for thread in threading.enumerate())


def _fd_count() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def bridge() -> AsyncIterator[AsyncioBridge]:
    bridge = await AsyncioBridge.start(name=_unique_name())
    try:
        yield bridge
    finally:
        await bridge.aclose()


def _signal_trio(event: trio.Event) -> Callable[[], None]:
    """Return a function that, called from the asyncio thread, sets ``event`` in Trio."""
    token = trio.lowlevel.current_trio_token()
    return lambda: token.run_sync_soon(event.set)


async def _run_cancelled_after_start(
    bridge: AsyncioBridge, make: Callable[[Callable[[], None]], Any]
) -> tuple[trio.CancelScope, list[object]]:
    """Start ``bridge.run(make(started))``, cancel it once the coroutine began, return scope."""
    started = trio.Event()
    results: list[object] = []
    scope = trio.CancelScope()

    async def call() -> None:
        with scope:
            results.append(await bridge.run(make, _signal_trio(started)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await started.wait()
        scope.cancel()
    return scope, results


# ------------------------------------------------------------------------------- unary calls


async def test_run_returns_value_from_loop_thread(bridge: AsyncioBridge) -> None:
    async def add(a: int, b: int) -> tuple[int, str]:
        await asyncio.sleep(0)
        return a + b, threading.current_thread().name

    with trio.fail_after(10):
        total, thread_name = await bridge.run(add, 2, 3)
    assert total == 5
    assert thread_name != threading.current_thread().name
    assert _thread_alive(thread_name)


async def test_exception_arrives_unchanged(bridge: AsyncioBridge) -> None:
    error = LookupError("no such container")

    async def fail() -> None:
        await asyncio.sleep(0)
        raise error

    with trio.fail_after(10), pytest.raises(LookupError, match="no such container") as info:
        await bridge.run(fail)
    assert info.value is error


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
async def test_base_exceptions_are_delivered_and_loop_survives(
    bridge: AsyncioBridge, exc_type: type[BaseException]
) -> None:
    async def fail() -> None:
        raise exc_type("from asyncio")

    async def ok() -> str:
        return "still alive"

    with trio.fail_after(10):
        with pytest.raises(exc_type, match="from asyncio"):
            await bridge.run(fail)
        assert await bridge.run(ok) == "still alive"


async def test_trio_cancel_cancels_asyncio_task(bridge: AsyncioBridge) -> None:
    saw_cancel = threading.Event()

    async def sleeper(started: Callable[[], None]) -> None:
        started()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            saw_cancel.set()
            raise

    with trio.fail_after(10):
        scope, results = await _run_cancelled_after_start(bridge, sleeper)
    assert scope.cancelled_caught
    assert results == []
    assert saw_cancel.is_set()
    stats = bridge.statistics()
    assert stats.calls_cancelled == 1
    assert stats.tasks_in_flight == 0


async def test_move_on_after_cancels_without_leaking_asyncio_cancellation(
    bridge: AsyncioBridge,
) -> None:
    async def forever() -> None:
        await asyncio.sleep(3600)

    with trio.fail_after(10):
        # Whether the deadline hits before or after the task starts, the outcome is the same.
        with trio.move_on_after(0.01) as scope:
            await bridge.run(forever)
    assert scope.cancelled_caught
    assert bridge.statistics().tasks_in_flight == 0


async def test_already_cancelled_call_never_starts(bridge: AsyncioBridge) -> None:
    ran = threading.Event()

    async def mark() -> None:
        ran.set()

    with trio.CancelScope() as scope:
        scope.cancel()
        await bridge.run(mark)
    assert scope.cancelled_caught
    assert not ran.is_set()
    assert bridge.statistics().calls_started == 0


async def test_call_finishing_despite_cancel_returns_its_result(bridge: AsyncioBridge) -> None:
    async def stubborn(started: Callable[[], None]) -> str:
        gate = asyncio.Event()
        inner = asyncio.ensure_future(gate.wait())
        started()
        try:
            await asyncio.shield(inner)
        except asyncio.CancelledError:
            # The operation completes anyway (e.g. the reply was already on the wire).
            gate.set()
            await inner
        return "done anyway"

    with trio.fail_after(10):
        scope, results = await _run_cancelled_after_start(bridge, stubborn)
    assert results == ["done anyway"]
    # No checkpoint followed the call inside the scope, so nothing raised Cancelled.
    assert not scope.cancelled_caught
    assert bridge.statistics().calls_cancelled == 0


async def test_call_failing_despite_cancel_raises_its_error(bridge: AsyncioBridge) -> None:
    async def failing(started: Callable[[], None]) -> None:
        started()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ValueError("failed while cancelling") from None

    with (
        trio.fail_after(10),
        pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="failed while cancelling")),
    ):
        await _run_cancelled_after_start(bridge, failing)


async def test_cancellation_from_inside_the_loop_does_not_leak(bridge: AsyncioBridge) -> None:
    async def cancelled_by_asyncio() -> None:
        raise asyncio.CancelledError

    # asyncio.CancelledError is a BaseException: catch it too, so a regression that lets it
    # escape (instead of the RuntimeError) fails here rather than passing or hanging.
    with trio.fail_after(10), pytest.raises(BaseException) as info:  # noqa: PT011
        await bridge.run(cancelled_by_asyncio)
    assert type(info.value) is RuntimeError, repr(info.value)
    assert "cancelled from inside" in str(info.value)
    stats = bridge.statistics()
    assert stats.calls_started == stats.calls_finished, stats


async def test_many_concurrent_calls(bridge: AsyncioBridge) -> None:
    count = 2000
    results: list[int | None] = [None] * count

    async def double(value: int) -> int:
        await asyncio.sleep(0)
        return 2 * value

    async def one(index: int) -> None:
        results[index] = await bridge.run(double, index)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(one, index)
    assert results == [2 * index for index in range(count)]
    stats = bridge.statistics()
    assert stats.calls_started == stats.calls_finished == count
    assert stats.calls_cancelled == 0
    assert stats.tasks_in_flight == 0


async def test_bridge_is_bound_to_its_trio_run(bridge: AsyncioBridge) -> None:
    async def nothing() -> None:
        pass

    async def from_other_run() -> None:
        await bridge.run(nothing)

    with trio.fail_after(10), pytest.raises(RuntimeError, match="Trio run"):
        await trio.to_thread.run_sync(trio.run, from_other_run)


# ----------------------------------------------------------------------------------- streams


async def test_stream_is_pull_based(bridge: AsyncioBridge) -> None:
    produced: list[int] = []

    async def numbers() -> AsyncIterator[int]:
        for number in range(10):
            produced.append(number)
            yield number

    with trio.fail_after(10):
        async with bridge.open_stream(numbers) as stream:
            assert produced == []
            for received in range(5):
                assert await stream.receive() == received
                # Nothing is fetched ahead of what Trio asked for.
                assert produced == list(range(received + 1))
            await trio.sleep(0.01)
            assert produced == list(range(5))
        assert bridge.statistics().streams_open == 0


async def test_prefetch_asks_for_one_item_ahead(bridge: AsyncioBridge) -> None:
    produced: list[int] = []

    async def numbers() -> AsyncIterator[int]:
        for number in range(2):
            produced.append(number)
            yield number

    with trio.fail_after(10):
        async with bridge.open_stream(numbers) as stream:
            stream.prefetch()
            stream.prefetch()  # one item ahead at most: asked for already
            while not produced:
                await trio.sleep(0.001)
            await trio.sleep(0.01)
            assert produced == [0]
            assert await stream.receive() == 0  # the prefetched item, buffered meanwhile
            stream.prefetch()
            assert await stream.receive() == 1
            stream.prefetch()
            with pytest.raises(trio.EndOfChannel):
                await stream.receive()
            stream.prefetch()  # after the end: nothing to ask for
            with pytest.raises(trio.EndOfChannel):
                await stream.receive()
        assert produced == [0, 1]
        unentered = bridge.open_stream(numbers)
        assert isinstance(unentered, BridgedStream)
        with pytest.raises(RuntimeError, match="before prefetching"):
            unentered.prefetch()


async def test_stream_end_of_channel(bridge: AsyncioBridge) -> None:
    async def two() -> AsyncIterator[str]:
        yield "a"
        yield "b"

    with trio.fail_after(10):
        async with bridge.open_stream(two) as stream:
            assert await stream.receive() == "a"
            assert await stream.receive() == "b"
            with pytest.raises(trio.EndOfChannel):
                await stream.receive()
            with pytest.raises(trio.EndOfChannel):
                await stream.receive()


async def test_stream_async_for_with_args(bridge: AsyncioBridge) -> None:
    async def count_to(limit: int, step: int) -> AsyncIterator[int]:
        for number in range(0, limit, step):
            await asyncio.sleep(0)
            yield number

    with trio.fail_after(10):
        async with bridge.open_stream(count_to, 10, 3) as stream:
            assert [number async for number in stream] == [0, 3, 6, 9]


async def test_stream_error_mid_stream(bridge: AsyncioBridge) -> None:
    error = ConnectionResetError("stream reset")

    async def breaking() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise error

    with trio.fail_after(10):
        async with bridge.open_stream(breaking) as stream:
            assert await stream.receive() == 1
            assert await stream.receive() == 2
            with pytest.raises(ConnectionResetError, match="stream reset") as info:
                await stream.receive()
            assert info.value is error
            with pytest.raises(trio.BrokenResourceError):
                await stream.receive()


async def test_stream_early_exit_runs_finally_in_the_same_asyncio_task(
    bridge: AsyncioBridge,
) -> None:
    record: dict[str, object] = {}

    async def endless() -> AsyncIterator[int]:
        record["task"] = asyncio.current_task()
        try:
            for number in itertools.count():
                yield number
        finally:
            await asyncio.sleep(0)  # cleanup may await, like a grpclib stream exit
            record["finally_task"] = asyncio.current_task()
            record["finally_thread"] = threading.current_thread().name

    with trio.fail_after(10):
        async with bridge.open_stream(endless) as stream:
            assert await stream.receive() == 0
            assert await stream.receive() == 1
        # Leaving the block waited for the generator's cleanup.
        assert record["finally_task"] is record["task"]
        assert record["finally_thread"] != threading.current_thread().name
        with pytest.raises(trio.ClosedResourceError):
            await stream.receive()
    stats = bridge.statistics()
    assert stats.streams_open == 0
    assert stats.tasks_in_flight == 0


async def test_stream_exit_before_first_receive(bridge: AsyncioBridge) -> None:
    started = threading.Event()

    async def never_pulled() -> AsyncIterator[int]:
        started.set()
        yield 1

    with trio.fail_after(10):
        async with bridge.open_stream(never_pulled):
            pass
    assert not started.is_set()
    assert bridge.statistics().tasks_in_flight == 0


async def test_cancelled_receive_keeps_the_stream(bridge: AsyncioBridge) -> None:
    gate = asyncio.Event()

    async def gated() -> AsyncIterator[int]:
        yield 0
        await gate.wait()
        yield 1

    async def open_gate() -> None:
        gate.set()

    with trio.fail_after(10):
        async with bridge.open_stream(gated) as stream:
            assert await stream.receive() == 0
            with trio.move_on_after(0.01) as scope:
                await stream.receive()
            assert scope.cancelled_caught
            await bridge.run(open_gate)
            assert await stream.receive() == 1
            with pytest.raises(trio.EndOfChannel):
                await stream.receive()


async def test_stream_exit_wakes_a_blocked_receiver(bridge: AsyncioBridge) -> None:
    async def silent() -> AsyncIterator[int]:
        await asyncio.sleep(3600)
        yield 0

    errors: list[BaseException] = []

    async def receiver(stream: Any, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await stream.receive()
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, bridge.open_stream(silent) as stream:
            await nursery.start(receiver, stream)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await stream.receive()
    assert len(errors) == 1


# ---------------------------------------------------------------------------------- shutdown


async def test_aclose_joins_thread_and_rejects_new_work() -> None:
    name = _unique_name()

    async def nothing() -> None:
        pass

    async def empty() -> AsyncIterator[int]:
        return
        yield

    with trio.fail_after(10):
        bridge = await AsyncioBridge.start(name=name)
        assert _thread_alive(name)
        await bridge.run(nothing)
        await bridge.aclose()
    assert not _thread_alive(name)
    assert bridge.statistics().closed
    with pytest.raises(trio.ClosedResourceError):
        await bridge.run(nothing)
    with pytest.raises(trio.ClosedResourceError):
        bridge.open_stream(empty)
    with pytest.raises(trio.ClosedResourceError):
        bridge.add_shutdown_callback(nothing)


async def test_aclose_fails_in_flight_calls_and_streams() -> None:
    name = _unique_name()
    outcomes: list[BaseException] = []

    async def forever() -> None:
        await asyncio.sleep(3600)

    async def silent() -> AsyncIterator[int]:
        await asyncio.sleep(3600)
        yield 0

    async def call(bridge: AsyncioBridge) -> None:
        try:
            await bridge.run(forever)
        except trio.ClosedResourceError as exc:
            outcomes.append(exc)

    async def pull(bridge: AsyncioBridge) -> None:
        async with bridge.open_stream(silent) as stream:
            try:
                await stream.receive()
            except trio.ClosedResourceError as exc:
                outcomes.append(exc)

    with trio.fail_after(10):
        bridge = await AsyncioBridge.start(name=name)
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(call, bridge)
            nursery.start_soon(pull, bridge)
            await trio.testing.wait_all_tasks_blocked()
            assert bridge.statistics().tasks_in_flight == 4
            await bridge.aclose()
    assert len(outcomes) == 4
    assert not _thread_alive(name)
    assert bridge.statistics().tasks_in_flight == 0


async def test_shutdown_callbacks_run_in_loop_thread_last_first() -> None:
    name = _unique_name()
    calls: list[tuple[str, str]] = []

    def callback(label: str) -> Callable[[], Any]:
        async def run() -> None:
            await asyncio.sleep(0)
            calls.append((label, threading.current_thread().name))

        return run

    with trio.fail_after(10):
        bridge = await AsyncioBridge.start(name=name)
        bridge.add_shutdown_callback(callback("first"))
        bridge.add_shutdown_callback(callback("second"))
        await bridge.aclose()
    assert calls == [("second", name), ("first", name)]


async def test_shutdown_callback_errors_are_raised_after_closing() -> None:
    name = _unique_name()
    closed = threading.Event()

    async def broken() -> None:
        raise OSError("cannot close")

    async def fine() -> None:
        closed.set()

    with trio.fail_after(10):
        bridge = await AsyncioBridge.start(name=name)
        bridge.add_shutdown_callback(fine)
        bridge.add_shutdown_callback(broken)
        with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="cannot close")):
            await bridge.aclose()
        assert closed.is_set()
        assert not _thread_alive(name)
        await bridge.aclose()  # already closed: no error the second time


async def test_shutdown_callback_closes_sockets_opened_in_the_loop() -> None:
    baseline = _fd_count()

    async def serve_and_connect() -> tuple[asyncio.Server, asyncio.StreamWriter]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.read()
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, client = await asyncio.open_connection("127.0.0.1", port)
        return server, client

    with trio.fail_after(10):
        bridge = await AsyncioBridge.start(name=_unique_name())
        server, client = await bridge.run(serve_and_connect)

        async def close_sockets() -> None:
            client.close()
            await client.wait_closed()
            server.close()
            await server.wait_closed()

        bridge.add_shutdown_callback(close_sockets)
        assert _fd_count() > baseline
        await bridge.aclose()
    assert _fd_count() == baseline


async def test_aclose_is_idempotent_and_concurrent_safe() -> None:
    name = _unique_name()
    with trio.fail_after(10):
        bridge = await AsyncioBridge.start(name=name)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bridge.aclose)
            nursery.start_soon(bridge.aclose)
        await bridge.aclose()
    assert not _thread_alive(name)


async def test_aclose_under_cancelled_scope_still_closes() -> None:
    name = _unique_name()
    with trio.fail_after(10):
        bridge = await AsyncioBridge.start(name=name)
        with trio.CancelScope() as scope:
            scope.cancel()
            await bridge.aclose()
    assert scope.cancelled_caught
    assert not _thread_alive(name)
    assert bridge.statistics().closed


async def test_aclose_does_not_hang_on_a_task_ignoring_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = _unique_name()
    errors: list[BaseException] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    async def call(bridge: AsyncioBridge) -> None:
        try:
            await bridge.run(stubborn)
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    with trio.fail_after(10):
        bridge = await AsyncioBridge.start(name=name, shutdown_timeout=0.1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, bridge)
            await trio.testing.wait_all_tasks_blocked()
            await bridge.aclose()
    assert len(errors) == 1
    assert not _thread_alive(name)
    # asyncio reports the abandoned task once it is collected; collect it here, not at exit.
    gc.collect()
    assert "Task was destroyed but it is pending" in caplog.text


async def test_loop_stopped_by_bridged_code_closes_the_bridge() -> None:
    name = _unique_name()
    callback_ran = threading.Event()
    errors: list[BaseException] = []

    async def forever() -> None:
        await asyncio.sleep(3600)

    async def stop_loop() -> str:
        asyncio.get_running_loop().stop()
        return "stopped"

    async def mark() -> None:
        callback_ran.set()

    async def call(bridge: AsyncioBridge) -> None:
        try:
            await bridge.run(forever)
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    with trio.fail_after(10):
        bridge = await AsyncioBridge.start(name=name)
        bridge.add_shutdown_callback(mark)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, bridge)
            await trio.testing.wait_all_tasks_blocked()
            assert await bridge.run(stop_loop) == "stopped"
        assert len(errors) == 1
        with pytest.raises(trio.ClosedResourceError):
            await bridge.run(forever)
        await bridge.aclose()
    assert not _thread_alive(name)
    # Shutdown callbacks (closing the channel) ran in the loop's own cleanup, not via aclose.
    assert callback_ran.is_set()


# ---------------------------------------------------------------------------------- grpclib


async def test_grpclib_health_over_unix_socket(tmp_path: Path) -> None:
    # grpclib ships grpclib.health, but its health_pb2 registers the same proto symbols as
    # the project's proto.grpc.health, so only one can be imported per process.
    from grpclib.client import Channel
    from grpclib.server import Server, Stream

    from actors.containerd.pb.grpc.health.v1.health_grpc import HealthBase, HealthStub
    from actors.containerd.pb.grpc.health.v1.health_pb2 import (
        HealthCheckRequest,
        HealthCheckResponse,
    )

    serving = HealthCheckResponse(status=HealthCheckResponse.SERVING)

    class Health(HealthBase):
        async def Check(self, stream: Stream[HealthCheckRequest, HealthCheckResponse]) -> None:
            await stream.recv_message()
            await stream.send_message(serving)

        async def Watch(self, stream: Stream[HealthCheckRequest, HealthCheckResponse]) -> None:
            await stream.recv_message()
            await stream.send_message(serving)
            await asyncio.sleep(3600)

    path = str(tmp_path / "health.sock")
    baseline = _fd_count()
    name = _unique_name()

    async def serve() -> Server:
        server = Server([Health()])
        await server.start(path=path)
        return server

    async def connect() -> Channel:
        return Channel(path=path)

    with trio.fail_after(10):
        bridge = await AsyncioBridge.start(name=name)
        try:
            server = await bridge.run(serve)

            async def stop_server() -> None:
                server.close()
                await server.wait_closed()

            bridge.add_shutdown_callback(stop_server)
            channel = await bridge.run(connect)

            async def close_channel() -> None:
                channel.close()

            # Runs before stop_server: callbacks run last-registered first.
            bridge.add_shutdown_callback(close_channel)
            stub = HealthStub(channel)

            reply = await bridge.run(stub.Check, HealthCheckRequest())
            assert reply.status == HealthCheckResponse.SERVING

            watch_exited = threading.Event()

            async def watch() -> AsyncIterator[HealthCheckResponse]:
                try:
                    async with stub.Watch.open() as stream:
                        await stream.send_message(HealthCheckRequest(), end=True)
                        async for message in stream:
                            yield message
                finally:
                    watch_exited.set()

            async with bridge.open_stream(watch) as updates:
                first = await updates.receive()
                assert first.status == HealthCheckResponse.SERVING
            assert watch_exited.is_set()

            # A unary call still works after the server stream was torn down.
            reply = await bridge.run(stub.Check, HealthCheckRequest())
            assert reply.status == HealthCheckResponse.SERVING
        finally:
            await bridge.aclose()
    assert not _thread_alive(name)
    assert _fd_count() == baseline
