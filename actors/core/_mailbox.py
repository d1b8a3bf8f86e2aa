"""An actor's inbox: commands and events in one order, both bounded.

Commands come from callers, who can wait: they get backpressure from ``command_capacity``.
Events come from the router, which must never wait: an event that finds the inbox over
``event_capacity`` is dropped and the actor is flagged for a resync (``needs_resync``),
instead of stalling the namespace's event stream; the actor reads the flag once its inbox is
empty and asks one Tasks.Get, so an exit among the dropped events is still reported once.
Keeping both kinds in a single deque is what makes an exit event and a delete command for
the same container run in arrival order.
"""

from __future__ import annotations

import collections
from typing import Generic, TypeVar

import msgspec
import trio

_Item = TypeVar("_Item")


class MailboxStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Depth and pressure of one actor's inbox."""

    depth: int
    commands_queued: int
    events_queued: int
    senders_waiting: int
    events_dropped: int
    closed: bool


class Mailbox(Generic[_Item]):
    def __init__(self, *, command_capacity: int = 64, event_capacity: int = 1024) -> None:
        if command_capacity < 1 or event_capacity < 1:
            raise ValueError("mailbox capacities must be at least 1")
        self._items: collections.deque[tuple[bool, _Item]] = collections.deque()
        self._command_slots = trio.Semaphore(command_capacity)
        self._event_capacity = event_capacity
        self._events_queued = 0
        self._events_dropped = 0
        self._readers = trio.lowlevel.ParkingLot()
        self._closed = False
        self.needs_resync = False

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            depth=len(self._items),
            commands_queued=len(self._items) - self._events_queued,
            events_queued=self._events_queued,
            senders_waiting=self._command_slots.statistics().tasks_waiting,
            events_dropped=self._events_dropped,
            closed=self._closed,
        )

    async def send_command(self, item: _Item) -> None:
        """Queue a command, waiting for room; ClosedResourceError once the actor is gone."""
        if self._closed:
            raise trio.ClosedResourceError("mailbox is closed")
        await self._command_slots.acquire()
        if self.closed:
            self._command_slots.release()
            raise trio.ClosedResourceError("mailbox is closed")
        self._items.append((True, item))
        self._readers.unpark()

    def post_event(self, item: _Item) -> bool:
        """Queue an event without waiting; False (and a resync flag) when it was dropped."""
        if self._closed:
            return False
        if self._events_queued >= self._event_capacity:
            self._events_dropped += 1
            self.needs_resync = True
            return False
        self._events_queued += 1
        self._items.append((False, item))
        self._readers.unpark()
        return True

    async def receive(self) -> _Item:
        """Next item in arrival order; EndOfChannel after close once the queue is empty."""
        parked = False
        while not self._items:
            if self._closed:
                raise trio.EndOfChannel
            await self._readers.park()
            parked = True
        if not parked:
            await trio.lowlevel.checkpoint()  # still a checkpoint when items were waiting
        return self._take()

    def receive_nowait(self) -> _Item:
        if not self._items:
            if self._closed:
                raise trio.EndOfChannel
            raise trio.WouldBlock
        return self._take()

    def _take(self) -> _Item:
        is_command, item = self._items.popleft()
        if is_command:
            self._command_slots.release()
        else:
            self._events_queued -= 1
        return item

    def drain(self) -> list[_Item]:
        """Take every queued item but stay open (an actor restarting after a crash)."""
        left = []
        while self._items:
            left.append(self._take())
        return left

    def close(self) -> list[_Item]:
        """Refuse new items and return the ones still queued (so callers can be told)."""
        self._closed = True
        left = [item for _, item in self._items]
        self._items.clear()
        self._events_queued = 0
        self._readers.unpark_all()
        # Wake senders blocked on a full inbox; they see the close and give up.
        for _ in range(self._command_slots.statistics().tasks_waiting):
            self._command_slots.release()
        return left
