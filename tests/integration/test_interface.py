"""The whole libcontainerd interface against the real containerd, each op at its RPC count."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import trio

from actors import (
    Client,
    Container,
    EventType,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutputMode,
    OutputPipe,
    Task,
    TaskStatus,
    build_spec,
    open_client,
)
from actors.containerd._embedded import PrivateContainerd
from actors.core._container import criu_problem

from ..conftest import NAMESPACE, unique_id
from ..helpers import Recorder

pytestmark = pytest.mark.integration


@asynccontextmanager
async def recorded_client(
    containerd: PrivateContainerd, io_dir: Path
) -> AsyncIterator[tuple[Client, Recorder]]:
    recorder = Recorder()
    async with open_client(
        containerd.address, NAMESPACE, recorder, state_dir=str(io_dir)
    ) as client:
        yield client, recorder


@contextmanager
def rpcs(client: Client) -> Iterator[dict[str, int]]:
    """Collect the RPCs made inside the block (method -> count)."""
    made: dict[str, int] = {}
    before = client.statistics().rpc.calls
    yield made
    after = client.statistics().rpc.calls
    made.update({k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)})


async def running(
    client: Client, rootfs: Path, prefix: str, **spec: object
) -> tuple[Container, Task]:
    container = await client.new_container(
        unique_id(prefix),
        build_spec(rootfs, ["sleep", "300"], **spec),  # type: ignore[arg-type]
    )
    task = await container.start()
    return container, task


async def cleanup(container: Container, task: Task) -> None:
    with trio.fail_after(20):
        await task.force_delete()
    await container.delete()


async def test_exec_with_stdin_round_trip_through_cat(client: Client, rootfs: Path) -> None:
    container, task = await running(client, rootfs, "cat")
    with rpcs(client) as made:
        proc = await task.exec("cat1", container.exec_spec(["cat"]), with_stdin=True)
    assert made == {"Tasks.Exec": 1, "Tasks.Start": 1}
    assert proc.pid > 0
    assert proc.io is not None and proc.io.stdin is not None and proc.io.stdout is not None
    with trio.fail_after(10):
        await proc.io.stdin.send_all(b"ping\npong\n")
        with rpcs(client) as made:
            await proc.close_stdin()
        assert made == {"Tasks.CloseIO": 1}
        assert await proc.io.stdout.read_all() == b"ping\npong\n"
        assert (await proc.wait()).code == 0
    with rpcs(client) as made:
        status = await proc.delete()
    assert made == {"Tasks.DeleteProcess": 1}
    assert status.code == 0
    await cleanup(container, task)


async def test_init_stdin_eof_with_bytes_still_buffered_sends_close_io(
    client: Client, rootfs: Path
) -> None:
    """Close stdin while our bytes still sit in the FIFO: the shim holds the FIFO open too,
    so only Tasks.CloseIO gives cat its EOF, after it has read every byte."""
    container = await client.new_container(unique_id("eof"), build_spec(rootfs, ["cat"]))
    data = bytes(range(256)) * 64  # 16 KiB: still in the pipe when we close
    task = await container.start(with_stdin=True)
    assert task.io is not None and task.io.stdin is not None and task.io.stdout is not None
    with trio.fail_after(20):
        await task.io.stdin.send_all(data)
        with rpcs(client) as made:
            await task.close_stdin()
        assert made == {"Tasks.CloseIO": 1}
        assert await task.io.stdout.read_all() == data
        assert (await task.wait()).code == 0
    await task.delete()
    await container.delete()


async def test_exec_exit_code_and_wait_is_free(client: Client, rootfs: Path) -> None:
    container, task = await running(client, rootfs, "execrc")
    proc = await task.exec("e1", container.exec_spec(["sh", "-c", "exit 5"]))
    with rpcs(client) as made, trio.fail_after(10):
        status = await proc.wait()
    assert made == {}
    assert status.code == 5
    await proc.delete()
    await cleanup(container, task)


async def test_terminal_exec_with_resize(client: Client, rootfs: Path) -> None:
    container, task = await running(client, rootfs, "tty")
    proc = await task.exec("tty1", container.exec_spec(["sh"], terminal=True), with_stdin=True)
    assert proc.io is not None and proc.io.stderr is None  # a terminal has no stderr FIFO
    assert proc.io.stdin is not None and proc.io.stdout is not None
    with rpcs(client) as made:
        await proc.resize(100, 30)
    assert made == {"Tasks.ResizePty": 1}
    with trio.fail_after(10):
        await proc.io.stdin.send_all(b"stty size; exit 0\n")
        output = await proc.io.stdout.read_all()
        assert (await proc.wait()).code == 0
    assert b"30 100" in output
    await proc.delete()
    await cleanup(container, task)


async def test_pause_resume_in_status_and_events(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path
) -> None:
    async with recorded_client(containerd, io_dir) as (client, recorder):
        container, task = await running(client, rootfs, "pause")
        with rpcs(client) as made:
            await task.pause()
        assert made == {"Tasks.Pause": 1}
        await recorder.wait_for(
            lambda: any(t is EventType.PAUSED for t, _ in recorder.of(container.id))
        )
        with rpcs(client) as made:
            assert (await task.status()).status is TaskStatus.PAUSED
        assert made == {}
        with rpcs(client) as made:
            assert (await task.status(refresh=True)).status is TaskStatus.PAUSED
        assert made == {"Tasks.Get": 1}
        with rpcs(client) as made:
            await task.resume()
        assert made == {"Tasks.Resume": 1}
        await recorder.wait_for(
            lambda: any(t is EventType.RESUMED for t, _ in recorder.of(container.id))
        )
        assert (await task.status()).status is TaskStatus.RUNNING
        await cleanup(container, task)
        kinds = [t for t, _ in recorder.of(container.id)]
        assert kinds == [
            EventType.CREATE,
            EventType.START,
            EventType.PAUSED,
            EventType.RESUMED,
            EventType.EXIT,
        ]
        create, start, exit_ = (recorder.of(container.id)[i][1] for i in (0, 1, 4))
        assert create.pid == start.pid == task.pid
        assert exit_.process_id == container.id and exit_.exit_code == 137
        assert exit_.exited_at is not None


async def test_exec_events_carry_moby_fields(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path
) -> None:
    async with recorded_client(containerd, io_dir) as (client, recorder):
        container, task = await running(client, rootfs, "execev")
        proc = await task.exec("x1", container.exec_spec(["sh", "-c", "exit 4"]))
        await proc.wait()
        await proc.delete()
        await cleanup(container, task)
        events = recorder.of(container.id)
        exec_events = [(t, i) for t, i in events if i.process_id == "x1"]
        assert [t for t, _ in exec_events] == [
            EventType.EXEC_ADDED,
            EventType.EXEC_STARTED,
            EventType.EXIT,
        ]
        assert exec_events[1][1].pid == proc.pid
        assert exec_events[2][1].exit_code == 4 and exec_events[2][1].pid == proc.pid


async def test_oom_event_from_a_small_memory_limit(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path
) -> None:
    async with recorded_client(containerd, io_dir) as (client, recorder):
        spec = build_spec(
            rootfs,
            # The shim watches for OOM only once the task started: give it a moment first.
            ["sh", "-c", "sleep 1; x=a; while :; do x=$x$x$x$x; done"],
            memory_limit=16 * 1024 * 1024,
        )
        container = await client.new_container(unique_id("oom"), spec)
        task = await container.start()
        with trio.fail_after(60):
            status = await task.wait()
        assert status.code == 137
        await recorder.wait_for(
            lambda: any(t is EventType.OOM for t, _ in recorder.of(container.id))
        )
        await task.delete()
        await container.delete()


async def _until_blocked(pipe: OutputPipe) -> None:
    with trio.fail_after(60):
        while not pipe.blocked:
            await trio.sleep(0.02)


async def test_output_nobody_reads_blocks_the_writer_and_a_late_reader_gets_every_byte(
    client: Client, rootfs: Path
) -> None:
    size = 10 * 1024 * 1024
    spec = build_spec(rootfs, ["sh", "-c", f"yes | head -c {size}; echo done"])
    container = await client.new_container(unique_id("spew"), spec)
    task = await container.start()
    assert task.io is not None and task.io.stdout is not None
    stdout = task.io.stdout
    assert stdout.mode is OutputMode.BLOCKING  # lossless is the default
    await _until_blocked(stdout)
    # Backpressure: we hold exactly one buffer and stopped reading the FIFO, so the writer
    # (10 MiB to go) cannot have finished.
    assert stdout.buffered == stdout.total_bytes == stdout.limit
    assert (await task.status(refresh=True)).status is TaskStatus.RUNNING
    with trio.fail_after(60):
        output = await stdout.read_all()
        status = await task.wait()
    assert status.code == 0
    assert output == b"y\n" * (size // 2) + b"done\n"  # every byte, in order
    assert stdout.dropped_bytes == 0
    await task.delete()
    await container.delete()


async def test_output_nobody_reads_kill_and_delete_still_work_and_nothing_leaks(
    client: Client, rootfs: Path, io_dir: Path
) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    spec = build_spec(rootfs, ["sh", "-c", "yes"])
    container = await client.new_container(unique_id("stuck"), spec)
    task = await container.start()
    assert task.io is not None and task.io.stdout is not None
    await _until_blocked(task.io.stdout)
    await task.kill(signal.SIGKILL)
    with trio.fail_after(30):
        assert (await task.wait()).code == 137
        await task.delete()  # the unread output goes with the task
    await container.delete()
    assert not [p for p in (io_dir / container.id).rglob("*") if p.is_fifo()]
    assert len(os.listdir("/proc/self/fd")) == fds_before


async def test_lossy_output_is_an_explicit_opt_in_and_reports_what_it_dropped(
    client: Client, rootfs: Path
) -> None:
    size = 10 * 1024 * 1024
    spec = build_spec(rootfs, ["sh", "-c", f"yes | head -c {size}; echo done"])
    container = await client.new_container(unique_id("lossy"), spec)
    limit = 256 * 1024
    task = await container.start(
        attach_stdio=lambda io: io.configure_output(mode=OutputMode.LOSSY, limit=limit)
    )
    with trio.fail_after(60):
        status = await task.wait()  # nobody reads, yet the writer finishes
    assert status.code == 0
    assert task.io is not None and task.io.stdout is not None
    stdout = task.io.stdout
    with trio.fail_after(10):
        first = await stdout.receive_chunk()
        rest = await stdout.read_all()
    assert stdout.total_bytes == size + len(b"done\n")
    assert stdout.dropped_bytes > 0
    # The reader is told where the gap is and how big: what it got plus what was dropped
    # is everything the process wrote.
    assert first.dropped_before == stdout.dropped_bytes
    assert len(first.data) + len(rest) + stdout.dropped_bytes == stdout.total_bytes
    assert len(first.data) + len(rest) <= limit
    assert (first.data + rest).endswith(b"y\ndone\n")
    await task.delete()
    await container.delete()


async def test_single_rpc_operations(client: Client, rootfs: Path) -> None:
    container, task = await running(client, rootfs, "ops")
    with rpcs(client) as made:
        pids = await task.pids()
    assert made == {"Tasks.ListPids": 1}
    assert task.pid in pids
    with rpcs(client) as made:
        await task.kill(signal.SIGUSR1)  # sleep has no handler for USR1... but PID 1 ignores it
    assert made == {"Tasks.Kill": 1}
    from actors.core.spec import LinuxPids, LinuxResources

    with rpcs(client) as made:
        await task.update_resources(LinuxResources(pids=LinuxPids(limit=64)))
    assert made == {"Tasks.Update": 1}
    await cleanup(container, task)


async def test_stats_of_a_busy_container(client: Client, rootfs: Path) -> None:
    spec = build_spec(
        rootfs, ["sh", "-c", "x=$(head -c 4000000 /dev/zero | tr '\\0' a); while :; do :; done"]
    )
    container = await client.new_container(unique_id("busy"), spec)
    task = await container.start()
    await trio.sleep(0.5)
    with rpcs(client) as made:
        stats = await task.stats()
    assert made == {"Tasks.Metrics": 1}
    assert stats.cgroup_version in (1, 2)
    assert stats.cpu.usage_total_ns > 10_000_000  # it has burnt well over 10 ms of CPU
    assert stats.memory.usage_bytes > 1_000_000
    assert stats.pids.current >= 1
    assert stats.read is not None
    with rpcs(client) as made:
        summary = await task.summary()
    assert made == {"Tasks.ListPids": 1}
    assert task.pid in [p.pid for p in summary]
    await cleanup(container, task)


async def test_summary_names_exec_processes(client: Client, rootfs: Path) -> None:
    container, task = await running(client, rootfs, "summ")
    proc = await task.exec("sleeper", container.exec_spec(["sleep", "30"]))
    summary = {p.pid: p.exec_id for p in await task.summary()}
    assert summary[proc.pid] == "sleeper"
    assert summary[task.pid] == ""
    await proc.kill(signal.SIGKILL)
    with trio.fail_after(10):
        assert (await proc.wait()).code == 137
    await proc.delete()
    await cleanup(container, task)


async def test_error_cases(client: Client, rootfs: Path) -> None:
    container, task = await running(client, rootfs, "errs")
    proc = await task.exec("quick", container.exec_spec(["true"]))
    with trio.fail_after(10):
        await proc.wait()
    with rpcs(client) as made:
        with pytest.raises(NotFound, match="already finished"):
            await proc.kill(signal.SIGKILL)  # kill on an exited process
        with pytest.raises(FailedPrecondition, match="no terminal"):
            await task.resize(80, 24)  # resize of a non-terminal process
        with pytest.raises(FailedPrecondition, match="must be stopped"):
            await task.delete()  # delete of a running task
        with pytest.raises(InvalidArgument):
            await task.kill(0)
        with pytest.raises(InvalidArgument):
            await task.exec("../evil", container.exec_spec(["true"]))
    assert made == {}, "every refusal above is local"
    await proc.delete()
    await task.kill(signal.SIGKILL)
    with trio.fail_after(10):
        await task.wait()
    with pytest.raises(FailedPrecondition, match="not running"):
        await task.exec("late", container.exec_spec(["true"]))  # exec on a stopped task
    await task.delete()
    await container.delete()


async def test_force_delete_of_a_created_task(client: Client, rootfs: Path) -> None:
    container = await client.new_container(
        unique_id("created"), build_spec(rootfs, ["sleep", "60"])
    )
    task = await container.new_task()
    assert (await task.status()).status is TaskStatus.CREATED
    with trio.fail_after(20):
        status = await task.force_delete()
    assert status.code == 137
    await container.delete()


async def test_missing_binary_fails_start_and_leaves_nothing(
    client: Client, rootfs: Path, io_dir: Path
) -> None:
    container = await client.new_container(
        unique_id("nobin"), build_spec(rootfs, ["/no/such/binary"])
    )
    with pytest.raises(Exception, match=r"no such file|not found|executable"):
        await container.start()
    with pytest.raises(NotFound):
        await container.task()
    await container.delete()
    assert not [p for p in io_dir.rglob(f"{container.id}*") if p.is_fifo()]


async def test_load_container_task_and_attach_from_a_second_client(
    client: Client, containerd: PrivateContainerd, io_dir: Path, rootfs: Path
) -> None:
    spec = build_spec(rootfs, ["sh", "-c", "while :; do echo tick; sleep 0.2; done"])
    container = await client.new_container(unique_id("load"), spec)
    task = await container.start()
    async with open_client(
        containerd.address, NAMESPACE, state_dir=str(io_dir), restore=False
    ) as other:
        with rpcs(other) as made:
            loaded = await other.load_container(container.id)
        assert made == {"Containers.Get": 1}
        with rpcs(other) as made:
            bare = await loaded.task()
        assert made == {"Tasks.Get": 1}
        assert bare.io is None  # task() attaches no stdio
        with rpcs(other) as made:
            attached = await loaded.attach_task()
        assert made == {"Tasks.Get": 1}  # the FIFO paths come from containerd
        assert attached.pid == task.pid
        assert attached.io is not None and attached.io.stdout is not None
        with trio.fail_after(10):
            assert b"tick" in await attached.io.stdout.receive_some()
        empty = await other.load_container((await other.new_container(unique_id("empty"), spec)).id)
        with rpcs(other) as made, pytest.raises(NotFound):
            await empty.attach_task()
        assert made == {"Tasks.Get": 1}
        await empty.delete()
    await cleanup(container, task)


async def test_checkpoint_and_restore_or_a_clear_error(
    client: Client, rootfs: Path, tmp_path: Path
) -> None:
    problem = await criu_problem()
    counter = "i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done"
    container = await client.new_container(
        unique_id("ckpt"), build_spec(rootfs, ["sh", "-c", counter])
    )
    task = await container.start()
    image = str(tmp_path / "ckpt")
    if problem is not None:
        # Debian's CRIU 3.17 fails `criu check` on some kernels (a vDSO error here).
        with rpcs(client) as made, pytest.raises(FailedPrecondition, match="criu check"):
            await task.create_checkpoint(image)
        assert made == {}
        await cleanup(container, task)
        return
    assert task.io is not None
    assert task.io.stdout is not None
    with trio.fail_after(30):
        while task.io.stdout.total_bytes < 20:
            await trio.sleep(0.05)
        with rpcs(client) as made:
            await task.create_checkpoint(image, exit=True)
        assert made == {"Tasks.Checkpoint": 1}
        await task.wait()
        await task.delete()
        restored = await container.start(checkpoint_dir=image)
        assert restored.io is not None
        assert restored.io.stdout is not None
        first = (await restored.io.stdout.receive_some()).split()[0]
    assert int(first) > 0, "the restored counter continues instead of starting over"
    await cleanup(container, restored)
