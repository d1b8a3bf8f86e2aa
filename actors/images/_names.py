"""The client's image name cache: name -> image record, kept true by containerd's events.

Image *documents* are immutable by digest, but a *name* can be re-pointed or removed by any
client at any time (``ctr images tag --force``, ``ctr images rm``, another program's
Images.Update). Resolving a name on every run would cost one Images.Get per container; this
cache saves it without ever serving an image that containerd has since changed:

- it serves only while the client's event subscription is live (:meth:`set_live`); when the
  stream breaks it is emptied and stays off until a new subscription is confirmed (events
  missed while blind cannot invalidate anything);
- every ``/images/create``, ``/images/update`` and ``/images/delete`` event of the
  namespace (same subscription, no extra RPC) drops that name (:meth:`image_event`);
- a fill from an Images.Get is kept only if no invalidation happened while the Get was in
  flight (a global generation counter), so a late answer cannot overwrite a newer event;
- our own writes (pull, load, tag) fill it directly (:meth:`begin_write` /
  :meth:`end_write`): the event containerd publishes for our own write is expected and
  does not drop the record we just wrote. While such an event is outstanding the name is
  not served (a foreign write racing ours is then decided by the event order).

The staleness window is the event latency, the same as any watcher of containerd has.

>>> cache = ImageNameCache()
>>> cache.lookup("docker.io/library/busybox:latest") is None
True
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Final

import msgspec
import trio

if TYPE_CHECKING:
    # A type only: the event router (which the CLI's protocol module imports) needs no stubs.
    from ._types import ImageRecord

__all__ = ["IMAGE_TOPICS", "ImageNameCache", "NameCacheStatistics", "decode_image_event"]

IMAGE_TOPICS: Final = ("/images/create", "/images/update", "/images/delete")
_ENTRIES: Final = 1024
# An own write whose event never came back (containerd failed to publish it) must not keep
# swallowing foreign events: after this long it is forgotten and the name dropped.
_PENDING_SECONDS: Final = 30.0


class NameCacheStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of the name cache (for tests and ``metrics``)."""

    live: bool
    entries: int
    hits: int
    misses: int
    invalidations: int


def decode_image_event(value: bytes) -> str:
    """The image name in an ImageCreate/Update/Delete payload (field 1 of all three)."""
    from ..containerd.pb.containerd.events import image_pb2

    message = image_pb2.ImageDelete()
    try:
        # Unknown fields (the labels of create/update) are skipped by the parser.
        message.ParseFromString(value)
    except Exception as exc:  # protobuf raises its own DecodeError type
        raise ValueError(f"undecodable image event payload: {exc}") from exc
    return message.name


class ImageNameCache:
    """Image records by full name, valid while the namespace's event stream is live."""

    def __init__(self, max_entries: int = _ENTRIES) -> None:
        self._records: collections.OrderedDict[str, ImageRecord] = collections.OrderedDict()
        self._max = max_entries
        self._live = False
        self._generation = 0
        # name -> monotonic times of our own writes whose event has not come back yet.
        self._pending: dict[str, collections.deque[float]] = {}
        self._changed = trio.Event()
        self._hits = 0
        self._misses = 0
        self._invalidations = 0

    # -- the event side --------------------------------------------------------------------

    def set_live(self, live: bool) -> None:
        """The router's subscription is confirmed (True) or broke (False).

        Either way everything is forgotten: events were missed while the stream was down,
        and the echoes of writes made then will never come.
        """
        self.clear()
        self._live = live

    def clear(self) -> None:
        self._records.clear()
        self._pending.clear()
        self._bump()

    def image_event(self, topic: str, name: str) -> None:
        """containerd created, updated or deleted image ``name`` (any client)."""
        if topic != "/images/delete" and self._consume_pending(name):
            return  # the echo of our own write: what we cached is what it wrote
        self.forget(name)

    def forget(self, name: str) -> None:
        self._records.pop(name, None)
        self._invalidations += 1
        self._bump()

    def _bump(self) -> None:
        self._generation += 1
        self._changed.set()
        self._changed = trio.Event()

    def _consume_pending(self, name: str) -> bool:
        times = self._pending.get(name)
        if not times:
            return False
        times.popleft()
        if not times:
            del self._pending[name]
            self._changed.set()  # wakes wait_settled (the generation stays)
            self._changed = trio.Event()
        return True

    def _pending_for(self, name: str) -> bool:
        times = self._pending.get(name)
        if not times:
            return False
        if time.monotonic() - times[0] > _PENDING_SECONDS:
            del self._pending[name]
            self.forget(name)
            return False
        return True

    # -- the lookup side -------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Take before an Images.Get; pass to :meth:`fill` with its answer."""
        return self._generation

    def lookup(self, name: str) -> ImageRecord | None:
        if not self._live or self._pending_for(name):
            self._misses += 1
            return None
        record = self._records.get(name)
        if record is None:
            self._misses += 1
            return None
        self._records.move_to_end(name)
        self._hits += 1
        return record

    def fill(self, record: ImageRecord, generation: int) -> None:
        """Cache an Images.Get answer, unless something changed since ``generation``."""
        if self._live and generation == self._generation:
            self._put(record)

    def _put(self, record: ImageRecord) -> None:
        self._records[record.name] = record
        self._records.move_to_end(record.name)
        while len(self._records) > self._max:
            self._records.popitem(last=False)

    def begin_write(self, name: str) -> int:
        """Before our own Images.Create/Update of ``name``: expect its event."""
        self._records.pop(name, None)
        if self._live:
            self._pending.setdefault(name, collections.deque()).append(time.monotonic())
        return self._generation

    def end_write(self, name: str, generation: int, record: ImageRecord | None) -> None:
        """After it: the record written (cached), or None when the write failed."""
        if record is None:
            # No event will come for a refused write (and if one does, it just drops).
            self._consume_pending(name)
            self.forget(name)
            return
        self.fill(record, generation)

    async def wait_forgotten(self, name: str) -> None:
        """Return once ``name`` is not cached (an event dropped it, or it never was)."""
        while name in self._records and self._live:
            await self._changed.wait()

    async def wait_settled(self, name: str) -> None:
        """Return once no echo of our own write of ``name`` is outstanding."""
        while self._live and self._pending.get(name):
            await self._changed.wait()

    def cached(self, name: str) -> bool:
        """Whether :meth:`lookup` would answer ``name`` now (no RPC needed)."""
        return self._live and not self._pending.get(name) and name in self._records

    def statistics(self) -> NameCacheStatistics:
        return NameCacheStatistics(
            live=self._live,
            entries=len(self._records),
            hits=self._hits,
            misses=self._misses,
            invalidations=self._invalidations,
        )
