"""Event subscribers: bounded buffers that never hold up the router.

A subscriber that falls ``buffer`` events behind is dropped and told why on its next
receive (:class:`EventStreamLagged`); it is never silently skipped, and the router and the
other subscribers see no delay.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Collection
from types import TracebackType

import msgspec
import trio

from ..errors import ContainerdActorsError
from .events import EventType, TaskEvent


class EventStreamLagged(ContainerdActorsError):
    """The subscriber fell too far behind and was dropped; resync by listing, then resubscribe."""


class SubscriberStatistics(msgspec.Struct, frozen=True, kw_only=True):
    subscribers: int
    delivered: int
    dropped_subscribers: int


class Subscription:
    """An async iterator of :class:`TaskEvent`; use it as an async context manager.

    Events queue in a plain deque and a parked receiver is woken once per burst, not once
    per event: a receiver that finds events waiting takes them without a trip through the
    scheduler (it still honours cancellation, and parks once the queue is empty), so ten
    subscribers cost the router little more than one. The bound is unchanged: more than
    ``buffer`` undelivered events and the subscription is dropped; its receiver gets every
    event queued before that, then :class:`EventStreamLagged`.
    """

    def __init__(
        self,
        hub: SubscriberHub,
        *,
        container_ids: Collection[str] | None,
        types: Collection[EventType] | None,
        buffer: int,
    ) -> None:
        if buffer < 1:
            raise ValueError("subscriber buffer must be at least 1")
        self._hub = hub
        self._container_ids = frozenset(container_ids) if container_ids is not None else None
        self._types = frozenset(types) if types is not None else None
        self.filtered = self._container_ids is not None or self._types is not None
        self._buffer = buffer
        self._queue: collections.deque[TaskEvent] = collections.deque()
        self._waiters: list[trio.lowlevel.Task] = []
        self._ended = False  # no more events will be queued (dropped, closed, client closed)
        self._closed = False  # the receiving side was closed
        self._lagged: str | None = None
        self.received = 0

    def wants(self, event: TaskEvent) -> bool:
        if self._container_ids is not None and event.info.container_id not in self._container_ids:
            return False
        return self._types is None or event.type in self._types

    def offer(self, event: TaskEvent) -> bool:
        """Queue without waiting; False (and the subscription ends) when the buffer is full."""
        if self._ended:
            return False
        if len(self._queue) >= self._buffer:
            self._lagged = f"subscriber fell more than {self._buffer} events behind and was dropped"
            self._end()
            return False
        self._queue.append(event)
        if self._waiters:
            self._wake()
        return True

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for task in waiters:
            trio.lowlevel.reschedule(task)

    async def _wait(self) -> None:
        task = trio.lowlevel.current_task()
        self._waiters.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiters.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def _ready(self) -> None:
        """Return once an event is queued (cancellable); raise when none will come."""
        while not self._queue:
            if self._closed:
                raise trio.ClosedResourceError("the subscription is closed")
            if self._ended:
                if self._lagged is not None:
                    raise EventStreamLagged(self._lagged)
                raise trio.EndOfChannel
            await self._wait()
        if self._closed:
            raise trio.ClosedResourceError("the subscription is closed")
        # Events are waiting: no need to be rescheduled, only to be cancellable.
        await trio.lowlevel.checkpoint_if_cancelled()

    async def receive(self) -> TaskEvent:
        """Next event; EventStreamLagged if dropped, trio.EndOfChannel when the client closed."""
        if not self._queue or self._closed:
            await self._ready()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        self.received += 1
        return self._queue.popleft()

    async def receive_batch(self) -> list[TaskEvent]:
        """Every queued event, in order (at least one: waits for it); raises as :meth:`receive`.

        The cheap way to keep up with a busy namespace: one wake-up per burst.
        """
        await self._ready()
        events = list(self._queue)
        self._queue.clear()
        self.received += len(events)
        return events

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> TaskEvent:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._hub.remove(self)
        self._closed = True
        self._queue.clear()
        self._end()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SubscriberHub:
    """Fans events out to subscriptions; never blocks."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._delivered = 0
        self._dropped = 0
        self.on_drop: Callable[[Subscription], None] | None = None

    def subscribe(
        self,
        *,
        container_ids: Collection[str] | None = None,
        types: Collection[EventType] | None = None,
        buffer: int = 256,
    ) -> Subscription:
        subscription = Subscription(self, container_ids=container_ids, types=types, buffer=buffer)
        self._subscriptions.append(subscription)
        return subscription

    def remove(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def publish(self, event: TaskEvent) -> None:
        dropped: list[Subscription] | None = None
        for subscription in self._subscriptions:
            if subscription.filtered and not subscription.wants(event):
                continue
            if subscription.offer(event):
                self._delivered += 1
            else:
                dropped = [subscription] if dropped is None else [*dropped, subscription]
        if dropped is not None:
            for subscription in dropped:
                self._dropped += 1
                self._subscriptions.remove(subscription)
                if self.on_drop is not None:
                    self.on_drop(subscription)

    def close(self) -> None:
        for subscription in list(self._subscriptions):
            subscription._end()
        self._subscriptions.clear()

    def statistics(self) -> SubscriberStatistics:
        return SubscriberStatistics(
            subscribers=len(self._subscriptions),
            delivered=self._delivered,
            dropped_subscribers=self._dropped,
        )
