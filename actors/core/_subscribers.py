"""Event subscribers: bounded buffers that never hold up the router.

A subscriber that falls ``buffer`` events behind is dropped and told why on its next
receive (:class:`EventStreamLagged`); it is never silently skipped, and the router and the
other subscribers see no delay.
"""

from __future__ import annotations

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
    """An async iterator of :class:`TaskEvent`; use it as an async context manager."""

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
        self._send, self._receive = trio.open_memory_channel[TaskEvent](buffer)
        self._lagged: str | None = None
        self.received = 0

    def wants(self, event: TaskEvent) -> bool:
        if self._container_ids is not None and event.info.container_id not in self._container_ids:
            return False
        return self._types is None or event.type in self._types

    def offer(self, event: TaskEvent) -> bool:
        """Queue without waiting; False (and the subscription ends) when the buffer is full."""
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self._lagged = (
                f"subscriber fell more than {self._send.statistics().max_buffer_size} "
                "events behind and was dropped"
            )
            self._send.close()
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    async def receive(self) -> TaskEvent:
        """Next event; EventStreamLagged if dropped, trio.EndOfChannel when the client closed."""
        try:
            event = await self._receive.receive()
        except trio.EndOfChannel:
            if self._lagged is not None:
                raise EventStreamLagged(self._lagged) from None
            raise
        self.received += 1
        return event

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> TaskEvent:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._hub.remove(self)
        self._send.close()
        self._receive.close()

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
        for subscription in list(self._subscriptions):
            if not subscription.wants(event):
                continue
            if subscription.offer(event):
                self._delivered += 1
            else:
                self._dropped += 1
                self._subscriptions.remove(subscription)
                if self.on_drop is not None:
                    self.on_drop(subscription)

    def close(self) -> None:
        for subscription in list(self._subscriptions):
            subscription._send.close()
        self._subscriptions.clear()

    def statistics(self) -> SubscriberStatistics:
        return SubscriberStatistics(
            subscribers=len(self._subscriptions),
            delivered=self._delivered,
            dropped_subscribers=self._dropped,
        )
