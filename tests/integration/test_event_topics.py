"""Only the topics we use cross the wire: /tasks/delete and the like are never sent."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from actors import Client, build_spec

from ..conftest import unique_id

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration


async def test_a_lifecycle_receives_only_the_events_it_uses(client: Client, rootfs: Path) -> None:
    with trio.fail_after(30):
        before = client.statistics().router
        container = await client.new_container(unique_id("topics"), build_spec(rootfs, ["true"]))
        task = await container.start()
        await task.wait()
        await task.delete()  # containerd publishes /tasks/delete: not subscribed
        await container.delete()
        # Let anything containerd would still send arrive (a marker round trip is not
        # available here; the event stream is ordered, so a later event proves arrival).
        second = await client.new_container(unique_id("topics"), build_spec(rootfs, ["true"]))
        task = await second.start()
        await task.wait()
        after = client.statistics().router
        await task.delete()
        await second.delete()
    # create, start, exit of the first; create, start, exit of the second; and the first's
    # /containers/delete (subscribed so a delete by another client ends its actor): nothing
    # else.
    assert after.events_in - before.events_in == 7
    assert after.events_routed - before.events_routed == 6
    assert after.events_ignored - before.events_ignored == 1
