"""The client: one containerd namespace, its event router, and one actor per container.

``open_client`` is the entry point. It owns a single nursery in which the event router and
every container actor run; leaving the context stops supervising (containers keep running)
and closes the gRPC channel and its asyncio thread. Handles returned by the client keep what
containerd told them, so operations cost the minimum number of RPCs (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from typing import TYPE_CHECKING

import msgspec
import trio
from google.protobuf.any_pb2 import Any as AnyPb

from actors.containerd.pb.containerd.runc.options import oci_pb2
from actors.containerd.pb.containerd.services.containers.v1 import containers_pb2
from actors.containerd.pb.containerd.types.task import task_pb2

from ..containerd._bridge import AsyncioBridge, BridgeStatistics
from ..containerd._remote import DEFAULT_ADDRESS, DEFAULT_TIMEOUT, Remote, RemoteStatistics
from ..errors import (
    AlreadyExists,
    ClientClosed,
    ContainerdActorsError,
    ContainerdError,
    InvalidArgument,
    NotFound,
)
from ..images._api import Image, Images
from ..images._names import ImageNameCache, decode_image_event
from ..images._store import ContentStore
from . import _commands as cmd
from ._container import (
    RUNC_OPTIONS_TYPE_URL,
    ActorStatistics,
    Backend,
    ContainerActor,
    ContainerRecord,
    reconcile_from_process,
)
from ._delivery import (
    DEFAULT_DELIVERY_GRACE,
    DEFAULT_DELIVERY_LIMIT,
    BackendDelivery,
    DeliveryStatistics,
)
from ._groups import collapse
from ._handles import Container
from ._ids import validate_id
from ._image_spec import resolved_user, user_lookup
from ._restart import RESTART_POLICY_LABEL, ContainerRestartPolicy
from ._shimgroups import (
    GROUP_ANNOTATION,
    ShimGroupPool,
    ShimGroups,
    ShimGroupStatistics,
    check_unreserved,
    group_annotation,
)
from ._shimretry import GroupedRemote
from ._subscribers import SubscriberHub, SubscriberStatistics, Subscription
from ._supervision import CrashHistory, RestartLimitExceeded, RestartPolicy
from .events import EventInfo, EventRouter, EventType, RouterStatistics, TaskEvent
from .spec import SPEC_TYPE_URL, Spec, decode_spec, encode_spec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence

    from ..containerd._interface import ContainerdRemote
    from ..containerd._mounts import Mount

log = logging.getLogger("containerd_actors.client")

DEFAULT_NAMESPACE = "default"
DEFAULT_SHIM = "io.containerd.runc.v2"


def default_state_dir() -> str:
    """Where FIFOs live: /run/containerd-actors for root, else the user's runtime dir."""
    if os.geteuid() == 0:
        return "/run/containerd-actors"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return os.path.join(runtime_dir, "containerd-actors")
    return f"/tmp/containerd-actors-{os.geteuid()}"


class ClientStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Everything countable about a client: RPCs, the router, the bridge and each actor."""

    namespace: str
    rpc: RemoteStatistics
    router: RouterStatistics
    bridge: BridgeStatistics | None
    subscribers: SubscriberStatistics
    backend: DeliveryStatistics | None
    actors: int
    unrouted_events: int
    held_events: int
    adopted_from_events: int
    resyncs: int
    actor_crashes: int
    actor_restarts: int
    shim_groups: ShimGroupStatistics | None = None


class RuncOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The runc shim options (``containerd.runc.v1.Options``) a container is created with."""

    binary_name: str = ""
    root: str = ""
    systemd_cgroup: bool = False
    no_pivot_root: bool = False
    no_new_keyring: bool = False
    shim_cgroup: str = ""
    io_uid: int = 0
    io_gid: int = 0
    criu_path: str = ""

    def to_proto(self) -> bytes:
        return oci_pb2.Options(
            binary_name=self.binary_name,
            root=self.root,
            systemd_cgroup=self.systemd_cgroup,
            no_pivot_root=self.no_pivot_root,
            no_new_keyring=self.no_new_keyring,
            shim_cgroup=self.shim_cgroup,
            io_uid=self.io_uid,
            io_gid=self.io_gid,
            criu_path=self.criu_path,
        ).SerializeToString()


class Client:
    """A connection to one containerd namespace. Create it with :func:`open_client`."""

    def __init__(
        self,
        remote: ContainerdRemote,
        nursery: trio.Nursery,
        *,
        delivery: BackendDelivery | None,
        state_dir: str,
        restart_policy: RestartPolicy,
        bridge_statistics: Callable[[], BridgeStatistics] | None = None,
        shim_groups: ShimGroups | None = None,
    ) -> None:
        self._remote = remote
        self._shim_pool = ShimGroupPool(shim_groups) if shim_groups is not None else None
        # Grouped containers' actors see a remote whose Tasks.Create survives a shim handover.
        self._grouped_remote = GroupedRemote(remote) if shim_groups is not None else None
        self._bridge_statistics = bridge_statistics
        self._nursery = nursery
        self._delivery = delivery
        self.namespace = remote.namespace
        self.state_dir = state_dir
        self._io_root = os.path.join(state_dir, remote.namespace)
        self._actors: dict[str, ContainerActor] = {}
        self._held: dict[str, collections.deque[tuple[float, TaskEvent]]] = {}
        self._held_order: collections.deque[tuple[float, str]] = collections.deque()
        self._held_count = 0
        self._unrouted_events = 0
        # Containers heard of in an event but not supervised yet, waiting for the adopter.
        self._adopt_wanted: dict[str, None] = {}
        self._adopt_lot = trio.lowlevel.ParkingLot()
        self._not_adoptable: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._adopted_from_events = 0
        # Exits published by actors that have ended (container deleted), so a late copy of
        # one is not reported again as an event of a container we do not know.
        self._retired_exits: collections.OrderedDict[tuple[str, str, int], None] = (
            collections.OrderedDict()
        )
        self._crashes = CrashHistory(restart_policy)
        self._actor_crashes = 0
        self._resyncs = 0
        # Image names resolved without an Images.Get while the event stream keeps it true.
        self._image_names = ImageNameCache()
        self._resync_wanted = trio.Event()
        self._closed = False
        self._images: Images | None = None
        self._deletion_watchers: list[Callable[[Container], None]] = []
        self.hub = SubscriberHub()
        self.router = EventRouter(
            remote,
            self._dispatch_event,
            on_resubscribed=self.request_resync,
            on_container_deleted=self._container_deleted,
            on_image_event=self._image_event,
            on_live=self._image_names.set_live,
        )

    # -- events ----------------------------------------------------------------------------

    def _container_deleted(self, container_id: str) -> None:
        """containerd removed a record: if it was not our own delete, its actor ends.

        (Our own ``Container.delete`` marks the actor deleted before this event arrives, so
        only a delete by another client -- ``ctr c rm`` -- reaches the actor. 0 RPCs.)
        """
        actor = self._live_actor(container_id)
        if actor is not None:
            actor.deleted_elsewhere()
            gone: Container = Container._create(actor, actor.record)
            for watcher in list(self._deletion_watchers):
                try:
                    watcher(gone)
                except Exception:
                    log.exception("a deletion watcher failed for %s", container_id)

    def watch_deletions(self, callback: Callable[[Container], None]) -> Callable[[], None]:
        """Call ``callback`` (from the event reader: it must not block) with the handle of
        each supervised container another client deleted (``ctr c rm``), so the embedder
        can remove what it kept for it. Returns a function that stops the watching."""
        self._deletion_watchers.append(callback)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                self._deletion_watchers.remove(callback)

        return stop

    def _image_event(self, topic: str, payload: bytes) -> None:
        """An image record changed (any client): its name is resolved afresh next time."""
        try:
            name = decode_image_event(payload)
        except ValueError:
            log.warning("skipping undecodable event on %s", topic)
            self._image_names.clear()  # which name it was is unknown: forget them all
            return
        self._image_names.image_event(topic, name)

    def _dispatch_event(self, event: TaskEvent) -> None:
        info = event.info
        actor = self._actors.get(info.container_id)
        if actor is None or actor.deleted or actor.mailbox.closed:
            # Not ours (yet): the Backend and subscribers hear it now, with the same
            # EventInfo; it is held briefly for the actor that adopts the container.
            if event.type is EventType.EXIT and self._is_retired_exit(info, actor):
                return  # a late copy of an exit its (now deleted) actor already reported
            self._unrouted_events += 1
            if self._delivery is not None:
                self._delivery.submit(info.container_id, event.type, info)
            self.hub.publish(event)
            self._hold(event)
            self._want_adoption(info.container_id, event.type)
            return
        # A full inbox drops the event and flags the actor: once free, it resyncs itself
        # with one Tasks.Get (see ContainerActor._serve).
        actor.mailbox.post_event((cmd.DeliverEvent(event=event), None))

    def _is_retired_exit(self, info: EventInfo, actor: ContainerActor | None) -> bool:
        if actor is not None and (info.process_id, info.pid) in actor.published_exits():
            return True
        return (info.container_id, info.process_id, info.pid) in self._retired_exits

    def _retire(self, actor: ContainerActor) -> None:
        for process_id, pid in actor.published_exits():
            self._retired_exits[(actor.container_id, process_id, pid)] = None
        while len(self._retired_exits) > RETIRED_EXITS_KEPT:
            self._retired_exits.popitem(last=False)

    def _want_adoption(self, container_id: str, event_type: EventType) -> None:
        if not container_id or self._closed:
            return
        if event_type is EventType.CREATE:
            self._not_adoptable.pop(container_id, None)  # a new task: maybe a new container
        if container_id in self._not_adoptable or len(self._adopt_wanted) >= ADOPT_PENDING_LIMIT:
            return
        self._adopt_wanted[container_id] = None
        self._adopt_lot.unpark()

    async def _adopt_loop(self) -> None:
        """Adopt containers first heard of in an event (1 RPC each: Containers.Get)."""
        while True:
            while not self._adopt_wanted:
                await self._adopt_lot.park()
            container_id = next(iter(self._adopt_wanted))
            try:
                if self._live_actor(container_id) is None:
                    await self._adopt(container_id)
            finally:
                self._adopt_wanted.pop(container_id, None)

    async def _adopt(self, container_id: str) -> None:
        try:
            found = await self._remote.containers_get(container_id)
        except NotFound:
            # Gone already (e.g. `ctr run --rm`); its events were delivered all the same.
            self._not_adoptable[container_id] = None
            while len(self._not_adoptable) > ADOPT_PENDING_LIMIT:
                self._not_adoptable.popitem(last=False)
            return
        except ContainerdError as exc:
            log.warning("cannot adopt container %s: %s", container_id, exc)
            return
        if self._live_actor(container_id) is None:
            await self._spawn_actor(_record_from_proto(found))
            self._adopted_from_events += 1

    def _hold(self, event: TaskEvent) -> None:
        now = trio.current_time()
        container_id = event.info.container_id
        self._held.setdefault(container_id, collections.deque()).append((now, event))
        self._held_order.append((now, container_id))
        self._held_count += 1
        # Oldest first, so this costs O(1) per event however many are held.
        while self._held_order and (
            self._held_count > HELD_EVENTS_LIMIT
            or now - self._held_order[0][0] >= HELD_EVENTS_SECONDS
        ):
            when, oldest_id = self._held_order.popleft()
            queue = self._held.get(oldest_id)
            if not queue or queue[0][0] != when:
                continue  # already replayed to its actor
            queue.popleft()
            self._held_count -= 1
            if not queue:
                del self._held[oldest_id]

    def _replay_held(self, actor: ContainerActor) -> None:
        held = self._held.pop(actor.container_id, ())
        self._held_count -= len(held)
        for _, event in held:
            actor.mailbox.post_event((cmd.DeliverEvent(event=event, replayed=True), None))

    def events(
        self,
        *,
        container_ids: Collection[str] | None = None,
        types: Collection[EventType] | None = None,
        buffer: int = 256,
    ) -> Subscription:
        """Subscribe to this namespace's task events (exits de-duplicated, as the actors see them).

        Use as ``async with client.events() as events: async for event in events: ...``.
        A subscriber more than ``buffer`` events behind is dropped with EventStreamLagged.
        """
        self._check_open()
        return self.hub.subscribe(container_ids=container_ids, types=types, buffer=buffer)

    # -- reconcile -------------------------------------------------------------------------

    def request_resync(self) -> None:
        """Reconcile every actor with one Tasks.List soon (after a resubscribe or overflow)."""
        self._resync_wanted.set()

    async def _resync_loop(self) -> None:
        while True:
            await self._resync_wanted.wait()
            self._resync_wanted = trio.Event()
            try:
                await self.resync()
            except ContainerdError as exc:
                log.warning("resync of %s failed, retrying: %s", self.namespace, exc)
                await trio.sleep(0.5)
                self.request_resync()

    async def resync(self) -> None:
        """One Tasks.List; each actor synthesizes the exits it missed (exactly once)."""
        epochs = {cid: actor.task_epoch for cid, actor in self._actors.items()}
        tasks = {_task_container_id(t): t for t in await self._remote.tasks_list()}
        self._resyncs += 1
        for container_id, epoch in epochs.items():
            actor = self._actors.get(container_id)
            if actor is None:
                continue
            item = reconcile_from_process(epoch, tasks.get(container_id))
            # A full inbox flags the actor, which then asks Tasks.Get itself once free.
            actor.mailbox.post_event((item, None))

    async def restore(self) -> int:
        """Adopt every container of the namespace (2 RPCs: Containers.List + Tasks.List).

        Stdio FIFOs of live tasks are re-opened; a task that stopped while nobody watched
        reports its exit once. Returns how many containers were adopted.
        """
        containers = await self._remote.containers_list()
        tasks = {_task_container_id(t): t for t in await self._remote.tasks_list()}
        adopted = 0
        for container in containers:
            if container.id in self._actors:
                continue
            record = _record_from_proto(container)
            task = tasks.get(container.id)
            await self._spawn_actor(record, adopt=task)
            adopted += 1
        return adopted

    # -- supervision -----------------------------------------------------------------------

    async def _run_actor(
        self,
        actor: ContainerActor,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        load_state = False
        try:
            while True:
                try:
                    await actor.run(load_state=load_state, task_status=task_status)
                    return
                except Exception:
                    self._actor_crashes += 1
                    log.exception("actor of container %s crashed", actor.container_id)
                    try:
                        delay = self._crashes.record(actor.container_id, trio.current_time())
                    except RestartLimitExceeded:
                        actor.close_mailbox()
                        raise
                    task_status = trio.TASK_STATUS_IGNORED
                    load_state = True
                    await trio.sleep(delay)
        finally:
            self._retire(actor)
            if self._delivery is not None and self._live_actor(actor.container_id) in (None, actor):
                self._delivery.release(actor.container_id)
            if self._actors.get(actor.container_id) is actor:
                del self._actors[actor.container_id]
                if self._shim_pool is not None:
                    self._shim_pool.release(actor.container_id)
            self._crashes.forget(actor.container_id)

    async def _spawn_actor(
        self, record: ContainerRecord, *, adopt: task_pb2.Process | None = None
    ) -> ContainerActor:
        pool = self._shim_pool
        group = group_annotation(record.spec) if pool is not None else None
        if pool is not None and group is not None and pool.group_of(record.id) != group:
            pool.adopt(record.id, group)  # restored, or first heard of in an event
        remote: ContainerdRemote = self._remote
        if group is not None and self._grouped_remote is not None:
            remote = self._grouped_remote
        actor = ContainerActor(
            remote,
            record,
            io_root=self._io_root,
            delivery=self._delivery,
            on_event=self.hub.publish if self._shim_pool is None else self._on_grouped_event,
            on_resync_failed=self.request_resync,
        )
        if adopt is not None:
            actor.adopt_task(adopt)
        self._actors[record.id] = actor  # replaces a deleted predecessor still winding down
        if self._delivery is not None:
            self._delivery.own(record.id)
        self._replay_held(actor)
        await self._nursery.start(self._run_actor, actor)
        return actor

    def _on_grouped_event(self, event: TaskEvent) -> None:
        """Publish, and keep the shim pool's view of its shims current (no RPC: /proc)."""
        self.hub.publish(event)
        pool = self._shim_pool
        assert pool is not None
        info = event.info
        if info.process_id != info.container_id:
            return
        if event.type is EventType.START:
            if info.pid > 0 and pool.needs_shim_pid(info.container_id):
                pool.shim_seen(info.container_id, _shim_pid_of(info.pid))
        elif event.type is EventType.EXIT:
            shim_pid = pool.shim_pid(info.container_id)
            if shim_pid and not _alive(shim_pid):
                pool.shim_died(info.container_id)

    def _live_actor(self, container_id: str) -> ContainerActor | None:
        actor = self._actors.get(container_id)
        if actor is None or actor.deleted:
            return None  # a deleted container's actor may still be winding down
        return actor

    @property
    def images(self) -> Images:
        """The namespace's images in containerd's store: pull, list, get, remove, import,
        export (see :class:`actors.Images`). Created on first use (no RPC)."""
        if self._images is None:
            self._images = Images(ContentStore(self._remote, names=self._image_names))
        return self._images

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("the client is closed")

    def statistics(self) -> ClientStatistics:
        return ClientStatistics(
            namespace=self.namespace,
            rpc=self._remote.statistics(),
            router=self.router.statistics(),
            bridge=self._bridge_statistics() if self._bridge_statistics is not None else None,
            subscribers=self.hub.statistics(),
            backend=self._delivery.statistics() if self._delivery is not None else None,
            actors=len(self._actors),
            unrouted_events=self._unrouted_events,
            held_events=self._held_count,
            adopted_from_events=self._adopted_from_events,
            resyncs=self._resyncs,
            actor_crashes=self._actor_crashes,
            actor_restarts=self._crashes.restarts,
            shim_groups=self._shim_group_statistics(),
        )

    def _shim_group_statistics(self) -> ShimGroupStatistics | None:
        if self._shim_pool is None or self._grouped_remote is None:
            return None
        return msgspec.structs.replace(
            self._shim_pool.statistics(), create_retries=self._grouped_remote.retries
        )

    def actor_statistics(self) -> list[ActorStatistics]:
        return [actor.statistics() for actor in self._actors.values()]

    # -- public API ----------------------------------------------------------------------

    async def version(self) -> tuple[str, str]:
        """containerd's (version, revision). One RPC."""
        self._check_open()
        response = await self._remote.version()
        return response.version, response.revision

    async def new_container(
        self,
        container_id: str,
        spec: Spec | bytes | None = None,
        *,
        shim: str = DEFAULT_SHIM,
        runtime_options: RuncOptions | None = None,
        labels: Mapping[str, str] | None = None,
        rootfs: Sequence[Mount] = (),
        snapshotter: str = "",
        snapshot_key: str = "",
        image: str | Image = "",
        args: Sequence[str] | None = None,
        entrypoint: Sequence[str] | None = None,
        restart_policy: ContainerRestartPolicy | None = None,
    ) -> Container:
        """Create a container record (one RPC: Containers.Create) and its actor.

        From an image (``image=`` an :class:`actors.Image` or a name, and no
        ``snapshot_key``): the container gets its own writable snapshot on the image's top
        chain ID (one Snapshots.Prepare, after Containers.Create so the record protects the
        snapshot from containerd's GC from the start), recorded as ``snapshotter`` and
        ``snapshot_key = container_id``; :meth:`Container.delete` removes it. ``spec``
        defaults to :func:`actors.image_spec` of the image with ``args``/``entrypoint``
        (docker's rules), and a given spec is re-rooted on the snapshot. A name costs no RPC
        once the client's name cache holds it (kept true by containerd's image events; see
        :mod:`actors.images._names`), else one Images.Get; its documents are cached by
        digest::

            image = await client.images.pull("busybox")
            container = await client.new_container("c1", image=image, args=["echo", "hi"])

        Args:
            container_id: containerd identifier (validated locally, no RPC when invalid).
            spec: an OCI spec (see :func:`actors.build_spec`) or its JSON bytes; optional
                with ``image``.
            shim: runtime name, ``io.containerd.runc.v2`` by default.
            runtime_options: runc options kept with the container and reused at restore.
            labels: containerd labels.
            rootfs: mounts of the container's root filesystem (a snapshot's, see
                ``actors.images``), passed to Tasks.Create; the spec's ``root.path`` is then
                ``rootfs`` (relative to the bundle).
            snapshotter, snapshot_key: the container's snapshot, recorded so containerd's GC
                keeps it while the container exists.
            image: an image (or its name) to run on; with ``rootfs``/``snapshot_key`` only
                the name, recorded for information.
            args, entrypoint: overrides of the image's Cmd and Entrypoint (no ``spec``).
            restart_policy: docker's ``--restart``, honoured by the container's actor when
                its task exits (stored in a label, so later supervisors honour it too).

        Raises:
            InvalidArgument: bad id, spec or labels (nothing sent).
            AlreadyExists: the id is taken in this namespace.
        """
        self._check_open()
        validate_id(container_id)
        if self._live_actor(container_id) is not None:
            raise AlreadyExists(f"container {container_id} already exists", local=True)
        from_image: Image | None = None
        lookup = ""
        if image and not snapshot_key and not rootfs:
            from_image = image if isinstance(image, Image) else await self.images.get(image)
            spec = _image_spec_for(from_image, spec, args, entrypoint)
            snapshotter = await self.images.store.snapshotter()
            snapshot_key = container_id
            lookup = user_lookup(spec)
            known = self.images.cached_user(from_image, lookup) if lookup else None
            if known is not None:
                # Resolved for this image config before: no file to read, no RPC added.
                spec, lookup = resolved_user(spec, known), ""
        elif isinstance(spec, Spec) and user_lookup(spec):
            raise InvalidArgument(
                f"user {user_lookup(spec)[:64]!r}: a user name needs an image to resolve it",
                local=True,
            )
        image_name = image.name if isinstance(image, Image) else image
        if spec is None:
            raise InvalidArgument("new_container needs a spec or an image", local=True)
        label_map = _validate_labels(labels)
        if snapshot_key and not snapshotter:
            raise InvalidArgument("a snapshot_key needs its snapshotter", local=True)
        pool = self._shim_pool if shim == DEFAULT_SHIM else None
        spec_bytes, terminal = _spec_payload(spec, self.namespace, container_id, grouped=pool)
        if restart_policy is not None and restart_policy.mode != "no":
            label_map[RESTART_POLICY_LABEL] = str(restart_policy)
        options = runtime_options.to_proto() if runtime_options is not None else b""
        record_pb = containers_pb2.Container(id=container_id, labels=label_map)
        record_pb.runtime.name = shim
        if options:
            record_pb.runtime.options.CopyFrom(AnyPb(type_url=RUNC_OPTIONS_TYPE_URL, value=options))
        record_pb.spec.CopyFrom(AnyPb(type_url=SPEC_TYPE_URL, value=spec_bytes))
        record_pb.snapshotter, record_pb.snapshot_key, record_pb.image = (
            snapshotter,
            snapshot_key,
            image_name,
        )
        try:
            created = await self._remote.containers_create(record_pb)
            if from_image is not None:
                rootfs = await self._prepare_image_snapshot(container_id, from_image)
                if lookup:
                    spec_bytes = await self._resolve_image_user(
                        record_pb, from_image, rootfs, lookup
                    )
        except BaseException:
            if pool is not None and self._live_actor(container_id) is None:
                pool.release(container_id)
            raise
        record = ContainerRecord(
            id=created.id,
            labels=dict(created.labels),
            runtime=created.runtime.name,
            spec=spec_bytes,
            terminal=terminal,
            runtime_options=options,
            image=image_name,
            snapshotter=snapshotter,
            snapshot_key=snapshot_key,
            rootfs=tuple(rootfs),
        )
        actor = await self._spawn_actor(record)
        container: Container = Container._create(actor, record)
        return container

    async def _prepare_image_snapshot(self, container_id: str, image: Image) -> list[Mount]:
        # The record exists and names the snapshot, so GC keeps it from its first moment
        # (no lease needed: containerd does not require a recorded snapshot to exist).
        try:
            _, mounts = await self.images.prepare_snapshot(container_id, image)
        except BaseException:
            with trio.CancelScope(shield=True), contextlib.suppress(ContainerdActorsError):
                await self._remote.containers_delete(container_id)
            raise
        return mounts

    async def _resolve_image_user(
        self,
        record_pb: containers_pb2.Container,
        image: Image,
        mounts: list[Mount],
        lookup: str,
    ) -> bytes:
        """The first container of an image config with a user name: read the image's
        passwd/group from the prepared snapshot, then fix the record's spec (one
        Containers.Update, once per image config). On failure nothing is left."""
        container_id = record_pb.id
        try:
            user = await self.images.resolve_user(image, mounts, lookup)
            spec = resolved_user(decode_spec(bytes(record_pb.spec.value)), user)
            spec_bytes = encode_spec(spec)
            record_pb.spec.CopyFrom(AnyPb(type_url=SPEC_TYPE_URL, value=spec_bytes))
            await self._remote.containers_update(record_pb, ["spec"])
        except BaseException:
            with trio.CancelScope(shield=True):
                with contextlib.suppress(ContainerdActorsError):
                    await self.images.store.remove_snapshot(container_id)
                with contextlib.suppress(ContainerdActorsError):
                    await self._remote.containers_delete(container_id)
            raise
        return spec_bytes

    def containers(self) -> list[Container]:
        """Every container this client supervises (0 RPCs)."""
        handles: list[Container] = [
            Container._create(actor, actor.record)
            for actor in self._actors.values()
            if not actor.deleted
        ]
        return handles

    async def load_container(self, container_id: str) -> Container:
        """A handle for an existing container: 0 RPCs when we already own it, else 1."""
        self._check_open()
        validate_id(container_id)
        actor = self._live_actor(container_id)
        if actor is not None:
            known: Container = Container._create(actor, actor.record)
            return known
        try:
            created = await self._remote.containers_get(container_id)
        except NotFound:
            raise NotFound(f"no such container: {container_id}") from None
        record = _record_from_proto(created)
        actor = self._live_actor(container_id) or await self._spawn_actor(record)
        container: Container = Container._create(actor, actor.record)
        return container

    async def _close(self) -> None:
        self._closed = True


def _record_from_proto(container: containers_pb2.Container) -> ContainerRecord:
    spec_bytes = bytes(container.spec.value)
    terminal = False
    if spec_bytes:
        try:
            spec = decode_spec(spec_bytes)
            terminal = bool(spec.process is not None and spec.process.terminal)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("container %s has an unreadable spec", container.id)
    return ContainerRecord(
        id=container.id,
        labels=dict(container.labels),
        runtime=container.runtime.name,
        spec=spec_bytes,
        terminal=terminal,
        runtime_options=bytes(container.runtime.options.value),
        image=container.image,
        snapshotter=container.snapshotter,
        snapshot_key=container.snapshot_key,
    )


def _spec_payload(
    spec: Spec | bytes,
    namespace: str,
    container_id: str,
    *,
    grouped: ShimGroupPool | None = None,
) -> tuple[bytes, bool]:
    if isinstance(spec, bytes | bytearray):
        try:
            decoded = decode_spec(bytes(spec))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidArgument(f"invalid OCI spec: {exc}", local=True) from None
    elif isinstance(spec, Spec):
        decoded = spec
    else:
        raise InvalidArgument(
            f"spec must be an actors.Spec or JSON bytes, not {type(spec).__name__}",
            local=True,
        )
    if decoded.process is None or not decoded.process.args:
        raise InvalidArgument("invalid OCI spec: process.args must not be empty", local=True)
    if decoded.root is None or not decoded.root.path:
        raise InvalidArgument("invalid OCI spec: root.path is required", local=True)
    if decoded.linux is not None and decoded.linux.cgroups_path is None:
        # containerd's own default; keeps same-named containers of two namespaces apart.
        linux = msgspec.structs.replace(decoded.linux, cgroups_path=f"/{namespace}/{container_id}")
        decoded = msgspec.structs.replace(decoded, linux=linux)
    if grouped is not None:
        check_unreserved(decoded.annotations)
        # Assigned last, once nothing else can refuse the spec (released if Create fails).
        group = grouped.assign(container_id)
        annotations = {**decoded.annotations, GROUP_ANNOTATION: group}
        decoded = msgspec.structs.replace(decoded, annotations=annotations)
    terminal = decoded.process is not None and bool(decoded.process.terminal)
    return encode_spec(decoded), terminal


def _image_spec_for(
    image: Image,
    spec: Spec | bytes | None,
    args: Sequence[str] | None,
    entrypoint: Sequence[str] | None,
) -> Spec:
    from ._image_spec import image_spec, with_image_root

    if spec is None:
        return image_spec(image, args=args, entrypoint=entrypoint)
    if args is not None or entrypoint is not None:
        raise InvalidArgument("give either a spec or args/entrypoint, not both", local=True)
    if isinstance(spec, bytes | bytearray):
        try:
            spec = decode_spec(bytes(spec))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidArgument(f"invalid OCI spec: {exc}", local=True) from None
    if not isinstance(spec, Spec):
        raise InvalidArgument("spec must be an actors.Spec or JSON bytes", local=True)
    return with_image_root(spec)


def _validate_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    if labels is None:
        return {}
    result: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise InvalidArgument(
                f"invalid label {key!r}={value!r}: keys and values are strings", local=True
            )
        if len(key) + len(value) > 4096:
            raise InvalidArgument(f"label {key!r} is longer than 4096 bytes", local=True)
        result[key] = value
    return result


@contextlib.asynccontextmanager
async def open_client(
    address: str = DEFAULT_ADDRESS,
    namespace: str = DEFAULT_NAMESPACE,
    backend: Backend | None = None,
    *,
    state_dir: str | None = None,
    rpc_deadline: float = DEFAULT_TIMEOUT,
    restore: bool = True,
    restart_policy: RestartPolicy | None = None,
    shim_groups: ShimGroups | None = None,
    backend_grace: float = DEFAULT_DELIVERY_GRACE,
) -> AsyncIterator[Client]:
    """Connect to containerd and supervise this namespace's containers while inside.

    Args:
        address: containerd's socket path (or ``unix://`` URL, or ``host:port``).
        namespace: the containerd namespace this client works in.
        backend: receives ``process_event(container_id, event_type, event_info)`` for every
            task event of the namespace, in per-container order, one call at a time per
            container; calls are never cancelled by the container's deletion (see
            ``actors/_delivery.py`` for the whole contract).
        state_dir: where stdio FIFOs are created (see :func:`default_state_dir`).
        rpc_deadline: default deadline of each RPC, in seconds (sent to containerd).
        restore: adopt the namespace's existing containers at start (2 RPCs in total).
        restart_policy: how crashed actors are restarted (see :class:`RestartPolicy`).
        shim_groups: pack runc containers into a bounded pool of shared shims (see
            :class:`ShimGroups`); None (the default) gives each container its own shim.
        backend_grace: seconds that leaving the block waits for Backend calls still queued
            or running; then they are cancelled, logged and counted as abandoned.

    Raises:
        InvalidArgument: invalid namespace.
        Unavailable: containerd does not answer at ``address``.
        RestartLimitExceeded: an actor kept crashing (raised when leaving the block).

    Leaving the block stops supervising: containers and their tasks keep running.
    """
    validate_id(namespace, kind="namespace")
    bridge = await AsyncioBridge.start()
    try:
        remote = await Remote.connect(bridge, address, namespace, default_deadline=rpc_deadline)
        async with run_client(
            remote,
            backend=backend,
            state_dir=state_dir or default_state_dir(),
            restore=restore,
            restart_policy=restart_policy or RestartPolicy(),
            bridge_statistics=bridge.statistics,
            shim_groups=shim_groups,
            backend_grace=backend_grace,
        ) as client:
            yield client
    finally:
        with trio.CancelScope(shield=True):
            await bridge.aclose()


@contextlib.asynccontextmanager
async def run_client(
    remote: ContainerdRemote,
    *,
    backend: Backend | None,
    state_dir: str,
    restore: bool,
    restart_policy: RestartPolicy,
    bridge_statistics: Callable[[], BridgeStatistics] | None = None,
    backend_grace: float = DEFAULT_DELIVERY_GRACE,
    backend_limit: int = DEFAULT_DELIVERY_LIMIT,
    shim_groups: ShimGroups | None = None,
) -> AsyncIterator[Client]:
    """Run a client over a :class:`ContainerdRemote` (the real one, or the testing fake)."""
    try:
        # Backend calls run in their own nursery, outside the actors' one: they outlive the
        # actors and get ``backend_grace`` seconds after everything else stopped.
        async with trio.open_nursery() as deliveries:
            delivery = (
                BackendDelivery(backend, deliveries, limit=backend_limit)
                if backend is not None
                else None
            )
            try:
                async with trio.open_nursery() as nursery:
                    client = Client(
                        remote,
                        nursery,
                        delivery=delivery,
                        state_dir=state_dir,
                        restart_policy=restart_policy,
                        bridge_statistics=bridge_statistics,
                        shim_groups=shim_groups,
                    )
                    await nursery.start(client.router.run)
                    nursery.start_soon(client._resync_loop)
                    nursery.start_soon(client._adopt_loop)
                    if restore:
                        await client.restore()
                    try:
                        yield client
                    finally:
                        client._closed = True
                        client.hub.close()
                        nursery.cancel_scope.cancel()
            finally:
                if delivery is not None:
                    with trio.CancelScope(shield=True):
                        await delivery.drain(backend_grace)
    except BaseExceptionGroup as group:
        raise collapse(group) from None


def _shim_pid_of(pid: int) -> int:
    """The runc shim whose child ``pid`` (a task's init) is; 0 when it cannot be told.

    The shim is the init's parent (it is the subreaper runc's init is handed to). Another
    pid namespace than containerd's (a remote daemon) shows no such parent: 0, and the pool
    then relies on containerd replacing a dead shim's stale socket itself.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"PPid:"):
                    parent = int(line.split()[1])
                    break
            else:
                return 0
        with open(f"/proc/{parent}/comm", "rb") as comm:
            return parent if comm.read().startswith(b"containerd-shim") else 0
    except (OSError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie is dead (the shim's parent is init, which may not reap)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split(maxsplit=1)[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _task_container_id(process: task_pb2.Process) -> str:
    return str(process.container_id or process.id)


HELD_EVENTS_LIMIT = 4096
HELD_EVENTS_SECONDS = 5.0
ADOPT_PENDING_LIMIT = 1024
RETIRED_EXITS_KEPT = 4096

__all__ = ["Client", "ClientStatistics", "RuncOptions", "default_state_dir", "open_client"]
