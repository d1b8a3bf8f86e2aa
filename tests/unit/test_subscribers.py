"""Subscribers: batched delivery keeps order, the bound and the lag rule (no daemon)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors import EventInfo, EventStreamLagged, EventType, TaskEvent
from actors.core._subscribers import SubscriberHub, Subscription


def event(container_id: str, n: int, kind: EventType = EventType.OOM) -> TaskEvent:
    return TaskEvent(
        type=kind, info=EventInfo(container_id=container_id, pid=n), topic="/tasks/oom"
    )


async def test_every_event_arrives_in_order_one_by_one_or_in_batches() -> None:
    hub = SubscriberHub()
    single = hub.subscribe(buffer=100)
    batched = hub.subscribe(buffer=100)
    sent = [event(f"c{n % 3}", n) for n in range(50)]
    got_single: list[TaskEvent] = []
    got_batched: list[TaskEvent] = []

    async def read_single() -> None:
        while len(got_single) < len(sent):
            got_single.append(await single.receive())

    async def read_batched() -> None:
        while len(got_batched) < len(sent):
            got_batched.extend(await batched.receive_batch())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_single)
            nursery.start_soon(read_batched)
            for n, item in enumerate(sent):
                hub.publish(item)
                if n % 7 == 0:
                    await trio.testing.wait_all_tasks_blocked()
    assert got_single == sent
    assert got_batched == sent
    assert single.received == batched.received == len(sent)
    assert hub.statistics().delivered == 2 * len(sent)


async def test_a_lagging_subscriber_gets_what_was_queued_then_is_told() -> None:
    hub = SubscriberHub()
    slow = hub.subscribe(buffer=2)
    fast = hub.subscribe(buffer=10)
    dropped: list[Subscription] = []
    hub.on_drop = dropped.append
    for n in range(3):
        hub.publish(event("c", n))
    assert dropped == [slow]
    assert hub.statistics().dropped_subscribers == 1
    hub.publish(event("c", 3))  # the others go on
    with trio.fail_after(5):
        assert [e.info.pid for e in await slow.receive_batch()] == [0, 1]
        with pytest.raises(EventStreamLagged, match="fell more than 2 events behind"):
            await slow.receive()
        with pytest.raises(EventStreamLagged):
            await slow.receive_batch()
        assert [e.info.pid for e in await fast.receive_batch()] == [0, 1, 2, 3]


async def test_filters_apply_before_the_bound() -> None:
    hub = SubscriberHub()
    mine = hub.subscribe(container_ids=["a"], types=[EventType.EXIT], buffer=1)
    hub.publish(event("b", 1, EventType.EXIT))
    hub.publish(event("a", 2, EventType.OOM))
    hub.publish(event("a", 3, EventType.EXIT))
    with trio.fail_after(5):
        assert [e.info.pid for e in await mine.receive_batch()] == [3]


async def test_client_close_ends_after_the_queued_events() -> None:
    hub = SubscriberHub()
    sub = hub.subscribe()
    hub.publish(event("c", 1))
    hub.close()
    hub.publish(event("c", 2))  # nobody subscribed any more
    with trio.fail_after(5):
        assert [e.info.pid for e in await sub.receive_batch()] == [1]
        with pytest.raises(trio.EndOfChannel):
            await sub.receive()
        assert [e async for e in sub] == []


async def test_a_parked_receiver_is_woken_by_close_and_cancellable() -> None:
    hub = SubscriberHub()
    sub = hub.subscribe()
    with trio.move_on_after(0.05) as scope:
        await sub.receive()
    assert scope.cancelled_caught
    hub.publish(event("c", 1))
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await sub.receive()  # events waiting: still a cancellation point
    outcome: list[BaseException] = []

    async def wait() -> None:
        try:
            await sub.receive_batch()
            await sub.receive_batch()
        except BaseException as exc:
            outcome.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            sub.close()
    assert len(outcome) == 1 and isinstance(outcome[0], trio.ClosedResourceError)
    assert hub.statistics().subscribers == 0
    assert not sub.offer(event("c", 2))


def test_buffer_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SubscriberHub().subscribe(buffer=0)
