"""Delivery of task events to the Backend, owned by the client so it outlives every actor.

The Backend contract (README "Backend"; docs/RELIABILITY.md):

- **Order.** The events of one container reach ``process_event`` in the order its actor
  applied them, one call at a time: the next call starts when the previous one returned.
- **Concurrency.** Containers are independent: each container with events waiting has its
  own Trio task, so a slow call holds up only its own container, never the router, the
  other containers or the actor's commands (the actor only appends to a queue).
- **Lifetime.** Those tasks run in the client's delivery nursery, not in the actor's: a
  ``process_event`` that deletes its own task and container (as moby's daemon does on the
  init's exit) runs to its end, and so do the calls queued behind it, whether the actor
  ended, crashed or was restarted meanwhile.
- **Bound.** At most ``limit`` events (default 65,536) wait over the whole client. Beyond
  that, events other than exits are refused, counted in ``statistics().dropped`` and logged;
  an exit is always queued (there is one per process, so they are bounded by the processes).
- **Close.** Leaving ``open_client`` lets deliveries continue for ``grace`` seconds (default
  5); then the calls still running are cancelled, and what was abandoned is logged and
  counted in ``statistics().abandoned``.
- **Failures.** A ``process_event`` that raises is logged and counted (``failed``); the next
  event is delivered as usual.
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Final

import msgspec
import trio

from .events import EventInfo, EventType

if TYPE_CHECKING:
    from ._container import Backend

log = logging.getLogger("containerd_actors.delivery")

DEFAULT_DELIVERY_LIMIT: Final = 65_536
DEFAULT_DELIVERY_GRACE: Final = 5.0


class DeliveryStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """The Backend queue of a client: what waits, what ran, what was refused or abandoned."""

    queued: int
    in_flight: int
    containers: int
    delivered: int
    failed: int
    dropped: int
    abandoned: int
    limit: int


class BackendDelivery:
    """Per-container ordered calls of ``backend.process_event`` in ``nursery``."""

    def __init__(
        self, backend: Backend, nursery: trio.Nursery, *, limit: int = DEFAULT_DELIVERY_LIMIT
    ) -> None:
        if limit < 1:
            raise ValueError("the Backend queue limit must be at least 1")
        self._backend = backend
        self._nursery = nursery
        self._limit = limit
        self._queues: dict[str, collections.deque[tuple[EventType, EventInfo]]] = {}
        self._queued = 0
        self._in_flight = 0
        self._delivered = 0
        self._failed = 0
        self._dropped = 0
        self._abandoned = 0
        self._idle = trio.lowlevel.ParkingLot()
        self._refusing = False

    def statistics(self) -> DeliveryStatistics:
        return DeliveryStatistics(
            queued=self._queued,
            in_flight=self._in_flight,
            containers=len(self._queues),
            delivered=self._delivered,
            failed=self._failed,
            dropped=self._dropped,
            abandoned=self._abandoned,
            limit=self._limit,
        )

    def queued_for(self, container_id: str) -> int:
        queue = self._queues.get(container_id)
        return len(queue) if queue is not None else 0

    def submit(self, container_id: str, event_type: EventType, info: EventInfo) -> bool:
        """Queue one event without waiting; False when refused at the bound (never an exit)."""
        if self._queued >= self._limit and event_type is not EventType.EXIT:
            self._dropped += 1
            if not self._refusing:
                self._refusing = True
                log.warning(
                    "the Backend is %d events behind: refusing events other than exits "
                    "until it catches up",
                    self._queued,
                )
            return False
        self._refusing = self._refusing and self._queued >= self._limit
        queue = self._queues.get(container_id)
        if queue is None:
            queue = self._queues[container_id] = collections.deque()
            self._nursery.start_soon(self._deliver, container_id, queue)
        queue.append((event_type, info))
        self._queued += 1
        return True

    async def _deliver(
        self, container_id: str, queue: collections.deque[tuple[EventType, EventInfo]]
    ) -> None:
        backend = self._backend
        current = False
        try:
            while queue:
                event_type, info = queue.popleft()
                self._queued -= 1
                self._in_flight += 1
                current = True
                try:
                    await backend.process_event(container_id, event_type, info)
                except Exception:
                    self._failed += 1
                    log.exception(
                        "the Backend failed on the %s event of %s", event_type, container_id
                    )
                else:
                    self._delivered += 1
                finally:
                    self._in_flight -= 1
                current = False  # not reached when the call was cancelled: it is abandoned
        finally:
            if queue or current:
                abandoned = len(queue) + int(current)
                self._abandoned += abandoned
                self._queued -= len(queue)
                queue.clear()
                log.warning(
                    "client closed: abandoned %d Backend event(s) of container %s",
                    abandoned,
                    container_id,
                )
            if self._queues.get(container_id) is queue:
                del self._queues[container_id]
            if not self._queues:
                self._idle.unpark_all()

    async def drain(self, grace: float) -> None:
        """Let queued deliveries finish for up to ``grace`` seconds, then cancel the rest.

        What the cancelled calls abandoned is logged and counted (``abandoned``) once their
        tasks end, which the owner of the nursery waits for.
        """
        with trio.move_on_after(grace):
            while self._queues:
                await self._idle.park()
        self._nursery.cancel_scope.cancel()
