"""Who drains a task's output when nobody is attached: the log, at once, for every new stdio.

A restart policy's new task and an actor restarted after a crash re-open (or create) FIFOs;
unless the log drains them straight away, a chatty container blocks on a full FIFO.
"""

from __future__ import annotations

import pytest
import trio

from actors.control.gateway_client import GatewayClient
from actors.testing import crash_actor

from ..conftest import unique_id
from .gateway_support import Served
from .test_gateway import _cli as cli
from .test_logs import _remove as remove

pytestmark = pytest.mark.integration

LINES = 40_000  # ~230 KB per run: far more than a FIFO holds, so an undrained run blocks
RUN_OUTPUT = b"".join(b"%d\n" % i for i in range(1, LINES + 1))


async def test_every_run_of_a_restarted_container_reaches_the_log_with_nobody_attached(
    served: Served, gw: GatewayClient
) -> None:
    name = unique_id("again")
    try:
        with trio.fail_after(120):
            done = await cli(served, "run", "-d", "--restart", "on-failure:3", "--name", name,
                             "busybox", "--", "sh", "-c", f"seq 1 {LINES}; exit 1")  # fmt: skip
            assert done.returncode == 0, done.stderr
            while True:
                state = await cli(served, "inspect", "-f",
                                  "{{.RestartCount}} {{.State.Status}}", name)  # fmt: skip
                if state.stdout == b"3 exited\n":
                    break
                await trio.sleep(0.1)
            logged = await cli(served, "logs", name)
        assert logged.returncode == 0, logged.stderr
        assert logged.stdout == RUN_OUTPUT * 4
    finally:
        await remove(gw, name)


async def test_a_crashed_actor_hands_its_reopened_stdio_back_to_the_log(
    served: Served, gw: GatewayClient
) -> None:
    name = unique_id("crashed")
    script = f"seq 1 {LINES}; sleep 0.5; seq 1 {LINES}; sleep 0.5; seq 1 {LINES}"
    try:
        with trio.fail_after(120):
            done = await cli(served, "run", "-d", "--name", name, "busybox", "--",
                             "sh", "-c", script)  # fmt: skip
            assert done.returncode == 0, done.stderr
            restarts = served.client.statistics().actor_restarts
            await crash_actor(await served.client.load_container(name))
            while served.client.statistics().actor_restarts == restarts:
                await trio.sleep(0.01)
            await gw.call("task.wait", {"id": name})
            logged = await cli(served, "logs", name)
        assert logged.returncode == 0, logged.stderr
        assert logged.stdout == RUN_OUTPUT * 3
    finally:
        await remove(gw, name)
