"""Delivery of task events to the Backend, owned by the client so it outlives every actor.

The Backend contract (README "Backend"; docs/RELIABILITY.md):

- **Order.** The events of one container reach ``process_event`` in the order its actor
  applied them, one call at a time: the next call starts when the previous one returned.
- **Concurrency.** Containers are independent: each supervised container has its own Trio
  task (parked while idle; a container without an actor gets one while its events wait), so
  a slow call holds up only its own container, never the router, the other containers or
  the actor's commands (the actor only appends to a queue).
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
from typing import Final, Protocol

import msgspec
import trio

from .events import EventInfo, EventType

log = logging.getLogger("containerd_actors.delivery")

DEFAULT_DELIVERY_LIMIT: Final = 65_536
DEFAULT_DELIVERY_GRACE: Final = 5.0


class Backend(Protocol):
    """What the embedding program implements to hear about task events (moby's Backend).

    Every task event of the namespace is delivered, exits exactly once, in per-container
    order and one call at a time per container; containers do not wait for each other, and
    a call is never cancelled because its container was deleted or its actor ended (it may
    delete the container itself, as moby does on the init's exit). The full contract (the
    memory bound, what happens on close) is this module's docstring.
    """

    async def process_event(
        self, container_id: str, event_type: EventType, event_info: EventInfo
    ) -> None: ...


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


class _Lane:
    """One container's queue and the task that empties it."""

    __slots__ = ("lot", "owned", "queue")

    def __init__(self) -> None:
        self.queue: collections.deque[tuple[EventType, EventInfo]] = collections.deque()
        self.lot = trio.lowlevel.ParkingLot()
        # While an actor owns the container its task parks when idle (waking it is cheaper
        # than starting a task per event); a lane nobody owns ends once it is empty.
        self.owned = False


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
        self._lanes: dict[str, _Lane] = {}
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
            containers=sum(1 for lane in self._lanes.values() if lane.queue),
            delivered=self._delivered,
            failed=self._failed,
            dropped=self._dropped,
            abandoned=self._abandoned,
            limit=self._limit,
        )

    def queued_for(self, container_id: str) -> int:
        lane = self._lanes.get(container_id)
        return len(lane.queue) if lane is not None else 0

    def own(self, container_id: str) -> None:
        """An actor now supervises this container: keep its delivery task between events."""
        self._lane(container_id).owned = True

    def release(self, container_id: str) -> None:
        """Its actor ended: the delivery task ends once it has delivered what is queued."""
        lane = self._lanes.get(container_id)
        if lane is not None:
            lane.owned = False
            lane.lot.unpark()

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
        lane = self._lane(container_id)
        lane.queue.append((event_type, info))
        self._queued += 1
        if lane.lot:
            lane.lot.unpark()
        return True

    def _lane(self, container_id: str) -> _Lane:
        lane = self._lanes.get(container_id)
        if lane is None:
            lane = self._lanes[container_id] = _Lane()
            self._nursery.start_soon(self._deliver, container_id, lane)
        return lane

    async def _deliver(self, container_id: str, lane: _Lane) -> None:
        backend = self._backend
        queue = lane.queue
        current = False
        try:
            while True:
                while not queue:
                    if not self._queued and not self._in_flight:
                        self._idle.unpark_all()
                    if not lane.owned:
                        return
                    await lane.lot.park()
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
            if self._lanes.get(container_id) is lane:
                del self._lanes[container_id]

    async def drain(self, grace: float) -> None:
        """Let queued deliveries finish for up to ``grace`` seconds, then cancel the rest.

        What the cancelled calls abandoned is logged and counted (``abandoned``) once their
        tasks end, which the owner of the nursery waits for.
        """
        with trio.move_on_after(grace):
            while self._queued or self._in_flight:
                await self._idle.park()
        self._nursery.cancel_scope.cancel()
