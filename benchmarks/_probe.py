"""Event latency: from containerd's envelope timestamp to our Backend callback.

The Backend records when it is called; a subscriber records the envelope timestamp of the
same event (containerd stamps it when it publishes). Both run on this machine's clock.
"""

from __future__ import annotations

import time

import trio

from actors import EventInfo, EventType
from actors.core._subscribers import Subscription

_Key = tuple[str, str, str]


class LatencyProbe:
    """A Backend plus the subscriber that pairs each callback with containerd's timestamp."""

    def __init__(self) -> None:
        self.callbacks: dict[_Key, float] = {}
        self.stamps: dict[_Key, float] = {}
        self.calls = 0
        self._changed = trio.lowlevel.ParkingLot()

    async def process_event(
        self, container_id: str, event_type: EventType, event_info: EventInfo
    ) -> None:
        self.callbacks[(container_id, event_type.value, event_info.process_id)] = time.time()
        self.calls += 1
        self._changed.unpark_all()

    async def wait_for(self, container_id: str, event_type: EventType, process_id: str) -> None:
        """Until both the callback and the timestamp of this event have been seen."""
        key = (container_id, event_type.value, process_id)
        while key not in self.callbacks or key not in self.stamps:
            await self._changed.park()

    async def consume(self, subscription: Subscription) -> None:
        async with subscription:
            async for event in subscription:
                if event.timestamp is not None and not event.synthetic:
                    key = (event.info.container_id, event.type.value, event.info.process_id)
                    self.stamps[key] = event.timestamp.timestamp()
                    self._changed.unpark_all()

    def latencies(self, event_type: EventType) -> list[float]:
        """Seconds from publish to callback, for every event of that type seen by both."""
        found = []
        for key, stamp in self.stamps.items():
            if key[1] == event_type.value and key in self.callbacks:
                found.append(self.callbacks[key] - stamp)
        return found

    def clear(self) -> None:
        self.callbacks.clear()
        self.stamps.clear()
