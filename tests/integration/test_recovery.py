"""Nothing lost: exits survive a containerd restart, a shim crash and our own restart.

Each test runs its own private containerd, because it kills or restarts it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from actors import (
    ActorCrashed,
    Client,
    Container,
    EventType,
    Task,
    build_spec,
    open_client,
)
from actors.containerd._embedded import PrivateContainerd
from actors.core._supervision import RestartLimitExceeded, RestartPolicy
from actors.testing import crash_actor

from ..conftest import unique_id
from ..helpers import Recorder, start_many, trap_spec, wait_gone, wait_ready

pytestmark = pytest.mark.integration

NS = "ca-recovery"


async def finish(client: Client, tasks: dict[str, Task]) -> None:
    for container_id, task in tasks.items():
        with trio.fail_after(20):
            await task.force_delete()
        container = await client.load_container(container_id)
        await container.delete()


@pytest.mark.parametrize("downtime", [2.0, 35.0], ids=["short", "over-30s"])
async def test_containerd_sigkill_loses_no_exit(
    daemon: PrivateContainerd, rootfs: Path, state: str, downtime: float
) -> None:
    recorder = Recorder()
    async with open_client(daemon.address, NS, recorder, state_dir=state) as client:
        specs = [(unique_id(f"k{i}"), trap_spec(rootfs, 10 + i)) for i in range(20)]
        tasks = await start_many(client, specs)
        for task in tasks.values():
            await wait_ready(task)
        ids = [cid for cid, _ in specs]
        exiting, staying = ids[:10], ids[10:]
        await trio.to_thread.run_sync(daemon.kill)
        for cid in exiting:
            os.kill(tasks[cid].pid, signal.SIGTERM)
        for cid in exiting:
            await wait_gone(tasks[cid].pid)
        await trio.sleep(downtime)
        await trio.to_thread.run_sync(daemon.start)
        await recorder.wait_until(lambda: all(recorder.exits(c) for c in exiting), timeout=60)
        # Let containerd's replays and the shims' publish retries arrive, then count.
        await trio.sleep(8)
        for i, cid in enumerate(exiting):
            assert recorder.exits(cid) == [10 + i], cid
        for cid in staying:
            assert recorder.exits(cid) == [], cid
        for cid in exiting:
            assert (await tasks[cid].delete()).code == 10 + ids.index(cid)
            await (await client.load_container(cid)).delete()
        survivors = {cid: tasks[cid] for cid in staying}
        for task in survivors.values():
            await task.kill(signal.SIGKILL)
        for cid, task in survivors.items():
            with trio.fail_after(20):
                assert (await task.wait()).code == 137
            await task.delete()
            await (await client.load_container(cid)).delete()
        for cid in staying:
            assert recorder.exits(cid) == [137]
        assert client.statistics().router.reconnects >= 1
        assert client.statistics().resyncs >= 1


async def test_shim_sigkill_gives_one_exit(
    daemon: PrivateContainerd, rootfs: Path, state: str
) -> None:
    recorder = Recorder()
    async with open_client(daemon.address, NS, recorder, state_dir=state) as client:
        victim_id, bystander_id = unique_id("shim"), unique_id("calm")
        tasks = await start_many(
            client,
            [
                (victim_id, build_spec(rootfs, ["sleep", "300"])),
                (bystander_id, build_spec(rootfs, ["sleep", "300"])),
            ],
        )
        init_stat = Path(f"/proc/{tasks[victim_id].pid}/stat").read_text()
        shim_pid = int(init_stat.rsplit(")", 1)[1].split()[1])
        os.kill(shim_pid, signal.SIGKILL)
        await recorder.wait_until(lambda: recorder.exits(victim_id))
        await trio.sleep(3)
        assert recorder.exits(victim_id) == [137]
        assert recorder.exits(bystander_id) == []
        victim = await client.load_container(victim_id)
        await tasks[victim_id].delete()
        await victim.delete()
        again = await client.new_container(victim_id, build_spec(rootfs, ["sh", "-c", "exit 4"]))
        task = await again.start()
        with trio.fail_after(20):
            assert (await task.wait()).code == 4
        await task.delete()
        await again.delete()
        await finish(client, {bystander_id: tasks[bystander_id]})


async def test_our_restart_restores_state_exits_and_stdout(
    daemon: PrivateContainerd, rootfs: Path, state: str
) -> None:
    ticker_id, quitter_id = unique_id("tick"), unique_id("quit")
    async with open_client(daemon.address, NS, state_dir=state) as first:
        tasks = await start_many(
            first,
            [
                (
                    ticker_id,
                    build_spec(rootfs, ["sh", "-c", "while :; do echo tick; sleep 0.1; done"]),
                ),
                (quitter_id, trap_spec(rootfs, 3)),
            ],
        )
        await wait_ready(tasks[quitter_id])
    # Our client is gone ("crashed"); the containers are not. One exits meanwhile.
    os.kill(tasks[quitter_id].pid, signal.SIGTERM)
    await wait_gone(tasks[quitter_id].pid)
    recorder = Recorder()
    async with open_client(daemon.address, NS, recorder, state_dir=state) as second:
        restore_rpcs = {
            k: v
            for k, v in second.statistics().rpc.calls.items()
            if not k.startswith(("Events.", "Health."))
        }
        assert restore_rpcs == {"Containers.List": 1, "Tasks.List": 1}
        await recorder.wait_until(lambda: recorder.exits(quitter_id))
        await trio.sleep(1)
        assert recorder.exits(quitter_id) == [3]
        assert recorder.exits(ticker_id) == []
        ticker = await second.load_container(ticker_id)
        task = await ticker.attach_task()
        assert task.io is not None
        assert task.io.stdout is not None
        with trio.fail_after(10):
            assert b"tick" in await task.io.stdout.receive_some()
        quitter = await second.load_container(quitter_id)
        quit_task = await quitter.task()
        assert (await quit_task.delete()).code == 3
        await quitter.delete()
        await finish(second, {ticker_id: task})


async def test_per_container_event_order_under_load(
    daemon: PrivateContainerd, rootfs: Path, state: str
) -> None:
    recorder = Recorder()
    count, execs = 200, 2
    async with open_client(daemon.address, NS, recorder, state_dir=state) as client:
        limiter = trio.CapacityLimiter(64)
        started: dict[str, tuple[Container, Task]] = {}

        async def one(index: int) -> None:
            async with limiter:
                container = await client.new_container(
                    unique_id(f"o{index}"), build_spec(rootfs, ["sleep", "300"])
                )
                task = await container.start()
                for e in range(execs):
                    proc = await task.exec(
                        f"e{e}", container.exec_spec(["sh", "-c", f"exit {e + 1}"])
                    )
                    await proc.wait()
                    await proc.delete()
                await task.kill(signal.SIGKILL)
                await task.wait()
                await task.delete()
                await container.delete()
                started[container.id] = (container, task)

        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(one, i)
        expected: list[tuple[EventType, str | None]] = [
            (EventType.CREATE, None),
            (EventType.START, None),
        ]
        for e in range(execs):
            expected += [
                (EventType.EXEC_ADDED, f"e{e}"),
                (EventType.EXEC_STARTED, f"e{e}"),
                (EventType.EXIT, f"e{e}"),
            ]
        expected.append((EventType.EXIT, None))
        for container_id in started:
            got = [
                (t, None if i.process_id == container_id else i.process_id)
                for c, t, i in recorder.events
                if c == container_id
            ]
            assert got == expected, container_id


async def test_crashed_actor_is_restarted_and_limit_fails_upward(
    daemon: PrivateContainerd, rootfs: Path, state: str
) -> None:
    policy = RestartPolicy(max_restarts=2, within=60, backoff=0.01)
    with pytest.raises(RestartLimitExceeded, match="crashed 3 times"):
        async with open_client(
            daemon.address, NS, state_dir=state, restart_policy=policy
        ) as client:
            victim = await client.new_container(
                unique_id("crash"), build_spec(rootfs, ["sleep", "300"])
            )
            sibling = await client.new_container(
                unique_id("sib"), build_spec(rootfs, ["sleep", "300"])
            )
            victim_task = await victim.start()
            sibling_task = await sibling.start()
            crashed: list[BaseException] = []

            async def waiter() -> None:
                try:
                    await victim_task.wait()
                except ActorCrashed as exc:
                    crashed.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.sleep(0.1)
                await crash_actor(victim)
            assert len(crashed) == 1
            assert "the call can be retried" in str(crashed[0])
            # Restarted from containerd's state: the task is known again and works.
            with trio.fail_after(10):
                while client.statistics().actor_restarts < 1:
                    await trio.sleep(0.01)
            task = await victim.task()
            assert task.pid == victim_task.pid
            assert (await sibling_task.status()).pid == sibling_task.pid
            await sibling_task.kill(signal.SIGKILL)
            with trio.fail_after(10):
                assert (await sibling_task.wait()).code == 137
            await sibling_task.delete()
            await sibling.delete()
            await task.kill(signal.SIGKILL)
            with trio.fail_after(10):
                assert (await task.wait()).code == 137
            await task.delete()
            for _ in range(3):
                await crash_actor(victim)
                await trio.sleep(0.2)
            await trio.sleep_forever()
    # the victim's container record is left; remove it with a fresh client
    async with open_client(daemon.address, NS, state_dir=state) as cleanup:
        for container in [await cleanup.load_container(c.id) for c in [victim]]:
            await container.delete()


async def test_supervisor_restores_and_slow_subscriber_is_dropped(
    daemon: PrivateContainerd, rootfs: Path, state: str
) -> None:
    from actors import EventStreamLagged
    from supervisor import open_supervisor

    async with open_supervisor(daemon.address, NS, state_dir=state) as client:
        async with client.events(buffer=2) as never_reads, client.events() as reader:
            specs = [(unique_id(f"s{i}"), build_spec(rootfs, ["true"])) for i in range(3)]
            tasks = await start_many(client, specs)
            seen: list[EventType] = []
            with trio.fail_after(20):
                async for event in reader:
                    seen.append(event.type)
                    if seen.count(EventType.EXIT) == 3:
                        break
            assert seen.count(EventType.START) == 3
            with pytest.raises(EventStreamLagged, match="fell more than 2 events behind"):
                while True:
                    await never_reads.receive()
        assert client.statistics().subscribers.dropped_subscribers == 1
        for cid, task in tasks.items():
            await task.delete()
            await (await client.load_container(cid)).delete()
