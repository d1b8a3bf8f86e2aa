# mypy: disable-error-code="unreachable, comparison-overlap"
# (mypy keeps an attribute narrowed across the state-changing calls these tests make.)
"""The actor's inbox and the subscriber hub, exactly (written against mutmut survivors)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors import EventInfo, EventStreamLagged, EventType, TaskEvent
from actors.core._mailbox import Mailbox, MailboxStatistics
from actors.core._subscribers import SubscriberHub, Subscription


def ev(container_id: str = "c", kind: EventType = EventType.START, code: int = 0) -> TaskEvent:
    info = EventInfo(container_id=container_id, exit_code=code)
    return TaskEvent(type=kind, info=info, topic=f"/tasks/{kind}")


# -- mailbox --------------------------------------------------------------------------------


@pytest.mark.parametrize(("commands", "events"), [(0, 5), (5, 0), (0, 0)])
def test_mailbox_capacities_must_be_positive(commands: int, events: int) -> None:
    with pytest.raises(ValueError, match="mailbox capacities must be at least 1"):
        Mailbox[int](command_capacity=commands, event_capacity=events)


async def test_mailbox_statistics_are_exact() -> None:
    box = Mailbox[str](command_capacity=1, event_capacity=1)
    assert box.needs_resync is False
    assert box.statistics() == MailboxStatistics(
        depth=0,
        commands_queued=0,
        events_queued=0,
        senders_waiting=0,
        events_dropped=0,
        closed=False,
    )
    assert box.post_event("e1")
    assert not box.post_event("e2")
    assert not box.post_event("e3")
    await box.send_command("c1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.send_command, "c2")
        await trio.testing.wait_all_tasks_blocked()
        assert box.statistics() == MailboxStatistics(
            depth=2,
            commands_queued=1,
            events_queued=1,
            senders_waiting=1,
            events_dropped=2,
            closed=False,
        )
        assert box.needs_resync is True
        with trio.fail_after(5):
            assert await box.receive() == "e1"
            assert box.statistics().events_queued == 0
            assert await box.receive() == "c1"
    assert box.statistics().commands_queued == 1
    left = box.close()
    assert left == ["c2"]
    stats = box.statistics()
    assert (stats.closed, stats.depth, stats.events_queued) == (True, 0, 0)


async def test_an_event_does_not_take_a_command_slot() -> None:
    box = Mailbox[str](command_capacity=1)
    box.post_event("e")
    with trio.fail_after(5):
        assert await box.receive() == "e"
    await box.send_command("c1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.send_command, "c2")
        await trio.testing.wait_all_tasks_blocked()
        assert box.statistics().senders_waiting == 1, "still one command slot, not two"
        nursery.cancel_scope.cancel()


async def test_close_forgets_the_queued_events() -> None:
    box = Mailbox[str]()
    box.post_event("e1")
    box.post_event("e2")
    assert box.close() == ["e1", "e2"]
    assert box.statistics().events_queued == 0
    assert not box.post_event("e3")
    assert box.statistics().events_dropped == 0, "a closed inbox is not an overflow"
    with pytest.raises(trio.ClosedResourceError, match="closed"):
        await box.send_command("c")


async def test_receive_is_a_checkpoint_even_when_an_item_waits() -> None:
    box = Mailbox[str]()
    box.post_event("e")
    with trio.testing.assert_checkpoints():
        assert await box.receive() == "e"


# -- subscribers -------------------------------------------------------------------------------


def test_subscriber_buffer_must_be_positive() -> None:
    with pytest.raises(ValueError, match="subscriber buffer must be at least 1"):
        SubscriberHub().subscribe(buffer=0)


async def test_filters_by_container_and_type_and_the_rest_still_get_theirs() -> None:
    hub = SubscriberHub()
    only_b = hub.subscribe(container_ids=["b"])
    only_exits = hub.subscribe(types=[EventType.EXIT])
    everything = hub.subscribe()
    hub.publish(ev("a"))
    hub.publish(ev("b"))
    hub.publish(ev("a", EventType.EXIT))
    with trio.fail_after(5):
        assert (await only_b.receive()).info.container_id == "b"
        assert (await only_exits.receive()).type is EventType.EXIT
        assert [(await everything.receive()).info.container_id for _ in range(3)] == [
            "a",
            "b",
            "a",
        ]
    assert (only_b.received, only_exits.received, everything.received) == (1, 1, 3)
    assert hub.statistics().delivered == 5


async def test_the_default_buffer_holds_256_events() -> None:
    hub = SubscriberHub()
    dropped: list[Subscription] = []
    hub.on_drop = dropped.append
    subscription = hub.subscribe()
    for _ in range(256):
        hub.publish(ev())
    assert hub.statistics().subscribers == 1
    hub.publish(ev())
    assert dropped == [subscription]
    other_a, other_b = hub.subscribe(buffer=1), hub.subscribe(buffer=1)
    hub.publish(ev())
    hub.publish(ev())
    assert hub.statistics().dropped_subscribers == 3
    del other_a, other_b


async def test_a_client_closing_ends_the_stream_without_calling_it_lagged() -> None:
    hub = SubscriberHub()
    subscription = hub.subscribe()
    hub.close()
    with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
        await subscription.receive()
    with trio.fail_after(5):
        assert [e async for e in subscription] == []


async def test_closing_a_subscription_removes_it_once() -> None:
    hub = SubscriberHub()
    kept = hub.subscribe()
    async with hub.subscribe() as gone:
        assert hub.statistics().subscribers == 2
    assert hub.statistics().subscribers == 1
    gone.close()  # twice: harmless
    hub.remove(gone)
    assert hub.statistics().subscribers == 1
    hub.publish(ev())
    with trio.fail_after(5):
        assert (await kept.receive()).type is EventType.START


async def test_a_lagged_subscriber_is_told_after_what_it_had() -> None:
    hub = SubscriberHub()
    lagging = hub.subscribe(buffer=2)
    for code in range(4):
        hub.publish(ev(kind=EventType.EXIT, code=code))
    with trio.fail_after(5):
        assert [(await lagging.receive()).info.exit_code for _ in range(2)] == [0, 1]
        with pytest.raises(EventStreamLagged, match="more than 2 events behind"):
            await lagging.receive()


async def test_default_capacities_and_drain() -> None:
    box = Mailbox[int]()
    assert all(box.post_event(i) for i in range(1024))
    assert not box.post_event(1024)
    for i in range(64):
        await box.send_command(-i)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.send_command, -64)
        await trio.testing.wait_all_tasks_blocked()
        assert box.statistics().senders_waiting == 1
        left = box.drain()  # a crashed actor's restart: answer what waited, stay open
        assert left == [*range(1024), *(-i for i in range(64))]
    assert not box.closed
    with trio.fail_after(5):
        assert await box.receive() == -64


def test_offer_to_a_closed_subscription_is_refused() -> None:
    hub = SubscriberHub()
    subscription = hub.subscribe()
    subscription.close()
    assert subscription.offer(ev()) is False
