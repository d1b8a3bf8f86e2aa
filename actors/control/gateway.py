"""The websocket control plane: a thin trio-websocket shell around the sans-IO protocol.

Two kinds of connection, both authenticated during the handshake:

* ``/`` with subprotocol ``containerd-actors.v1``: JSON-RPC 2.0 in text frames (requests,
  replies, ``event`` notifications). Decoding, errors and event shapes live in
  ``actors.control._protocol``; specs are built from an allow-list in ``actors.control._policy``.
* ``/stdio/<ticket>`` with ``v5.channel.k8s.io`` (or v4): one process's stdio in binary
  frames with a channel byte, after ``stdio.attach`` returned the ticket.

Labels a client sets are stored under :data:`~actors.control._labels.USER_LABEL_PREFIX` and shown
without it; keys in namespaces that containerd, shims or other clients interpret are
refused (``actors.control._labels``). Requests carry no annotations, runtime name or runtime
options: containers get the default runc shim with no options.

Each accepted socket is served inside a guard (``actors.control._wsserver``): whatever fails while
one connection is handled, before or after authentication, closes that connection only and
is counted, never the listener.

Safe by default: loopback or a unix socket, a bearer token compared in constant time, an
Origin allow-list, a Host check against DNS rebinding, and per-connection limits on message
size, requests in flight, request rate and subscriptions. A client that cannot keep up with
what we send is disconnected with close code 1013 instead of stalling anyone.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import logging
import secrets
import signal
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TypeAlias, TypeVar

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from ..core._client import Client
from ..core._container import TaskStatus
from ..core._handles import Container, Process
from ..core._logstore import LogReadOptions
from ..core._restart import ContainerRestartPolicy
from ..core._subscribers import EventStreamLagged
from ..core.events import EventType
from ..core.spec import LinuxCPU, LinuxMemory, LinuxPids, LinuxResources, User
from ..core.stdio import DirectIO, OutputMode
from ..errors import (
    ContainerdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from ..images._api import Image
from . import _frames as frames
from . import _protocol as proto
from ._binds import staged_entries, unstage
from ._etcfiles import remove_container_files, write_container_files
from ._gateway_logs import ContainerLogSettings, LogManager, send_log_frames
from ._images_rpc import ImageMethods
from ._labels import (
    BINDS_LABEL,
    OWNER_LABEL,
    OWNER_VALUE,
    is_ours,
    store_user_labels,
    user_labels,
)
from ._lifecycle import (
    DEFAULT_STOP_TIMEOUT,
    IMAGE_LABEL,
    VOLUMES_LABEL,
    EventLog,
    auto_remove,
    default_hostname,
    describe_extra,
    image_stop_signal,
    image_volumes,
    lifecycle_labels,
    read_top,
    stop_signal,
)
from ._policy import (
    SpecPolicy,
    build_container_spec,
    build_exec_process,
    check_resource_update,
    stage_bind_sources,
)
from ._wsserver import WebsocketListener, raise_fd_limit

__all__ = ["Gateway", "GatewayConfig", "GatewayStatistics", "is_loopback"]

log = logging.getLogger("containerd_actors.gateway")

BEARER_SUBPROTOCOL_PREFIX: Final = "base64url.bearer.authorization.k8s.io."
CLOSE_TRY_AGAIN_LATER: Final = 1013
CLOSE_POLICY_VIOLATION: Final = 1008
STDIO_TICKET_SECONDS: Final = 30.0
WRITER_GRACE_SECONDS: Final = 10.0
# How long task.wait waits, after the exit, for the task's output to reach the log (docker
# waits for its streams the same way, bounded: a child may hold the output open).
OUTPUT_SETTLE_SECONDS: Final = 2.0
HANDSHAKE_SECONDS: Final = 5.0
#: Descriptors kept free for containerd channels, stdio FIFOs and files (see serve()).
FD_RESERVE: Final = 256
DISCONNECT_SECONDS: Final = 5.0


class GatewayConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the control plane listens and what it allows.

    Attributes:
        token: the bearer token every connection must present (Authorization header, or
            the k8s-style bearer subprotocol for browsers).
        host, port: TCP listen address (ignored when ``unix_socket`` is set).
        unix_socket: listen on this socket path (mode 0600) instead of TCP.
        allowed_origins: exact Origin values allowed; a request with any other Origin is
            refused (a request without one, e.g. a CLI, still needs the token).
        allowed_hosts: Host names accepted besides loopback names and ``host`` (e.g. the
            DNS name of a TLS endpoint); any other Host is refused (DNS rebinding).
        tls: whether an SSL context is given; a non-loopback TCP address requires it.
        max_message_size: larger frames close the connection (1009).
        max_in_flight: concurrent requests per connection.
        rate: requests per second per connection (token bucket with ``burst``).
        max_subscriptions: event subscriptions per connection.
        outbound_buffer: messages queued for one connection before it counts as too slow.
        max_connections: authenticated websockets at once; more are refused with 503.
        max_pending_handshakes: connections that have not sent a complete (so not yet
            authenticated) request, in total; past it the oldest is closed.
        max_pending_per_peer: the same, per peer address.
        files_dir: where each container's /etc/hosts and /etc/resolv.conf are written
            (bind-mounted read-only, as docker provides them); None: not provided.
    """

    token: str
    policy: SpecPolicy
    host: str = "127.0.0.1"
    port: int = 7878
    unix_socket: str | None = None
    allowed_origins: frozenset[str] = frozenset()
    allowed_hosts: frozenset[str] = frozenset()
    tls: bool = False
    max_message_size: int = 1 << 20
    max_in_flight: int = 32
    rate: float = 200.0
    burst: int = 400
    max_subscriptions: int = 16
    outbound_buffer: int = 256
    max_connections: int = 512
    max_pending_handshakes: int = 64
    max_pending_per_peer: int = 32
    files_dir: str | None = None

    def __post_init__(self) -> None:
        if len(self.token) < 16:
            raise ValueError("the gateway token must be at least 16 characters")
        for name in ("max_connections", "max_pending_handshakes", "max_pending_per_peer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.unix_socket is None and not is_loopback(self.host) and not self.tls:
            raise ValueError(
                f"refusing to listen on non-loopback address {self.host!r} without TLS: "
                "anyone who can reach it could run containers as root"
            )


class GatewayStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters since the gateway was created.

    Attributes:
        connections: accepted websockets open now; ``connections_total`` since start.
        rejected_handshakes: connections that never became a websocket: refused (token,
            Origin, Host, path, subprotocol) or failed (malformed or undecodable request,
            handshake timeout, peer gone before the request was complete).
        requests, errors: JSON-RPC messages received, and error replies.
        slow_disconnects: connections closed (1013) for not reading fast enough.
        stdio_sessions: stdio websockets attached since start.
        internal_errors: unexpected failures while serving an accepted connection (bugs).
    """

    connections: int
    connections_total: int
    rejected_handshakes: int
    requests: int
    errors: int
    slow_disconnects: int
    stdio_sessions: int
    internal_errors: int


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """A Host header without its port and brackets, lowercased ("" if malformed)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        if end == -1 or not (rest == "" or rest.startswith(":")):
            return ""
        return host[1:end]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host  # a name, or an IPv6 literal without brackets


def _digest(value: str) -> bytes:
    # Hash both sides first so the comparison takes the same time whatever the lengths.
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class _Session:
    """One JSON-RPC connection: its outbound queue, limits and subscriptions."""

    def __init__(self, gateway: Gateway, ws: WebSocketConnection, nursery: trio.Nursery) -> None:
        self.gateway = gateway
        self.ws = ws
        self.nursery = nursery
        config = gateway.config
        self.outbound_send, self.outbound_receive = trio.open_memory_channel[bytes](
            config.outbound_buffer
        )
        self.in_flight = trio.Semaphore(config.max_in_flight)
        self.tokens = float(config.burst)
        self.refilled = trio.current_time()
        self.subscriptions: dict[str, trio.CancelScope] = {}
        self.slow = False

    def allow_request(self) -> bool:
        now = trio.current_time()
        config = self.gateway.config
        self.tokens = min(config.burst, self.tokens + (now - self.refilled) * config.rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def send(self, message: bytes) -> None:
        """Queue without waiting; a full queue ends the session (closed with 1013)."""
        try:
            self.outbound_send.send_nowait(message)
        except trio.WouldBlock:
            if not self.slow:
                self.slow = True
                self.gateway._slow += 1
            self.nursery.cancel_scope.cancel()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def writer(self, done: trio.Event) -> None:
        # Never cancelled mid-message: a half-sent frame would corrupt the stream.
        try:
            async for message in self.outbound_receive:
                if self.slow:
                    break  # the rest is dropped; the connection is closing
                await self.ws.send_message(message.decode())
        except ConnectionClosed:
            self.nursery.cancel_scope.cancel()
        finally:
            done.set()


_P = TypeVar("_P", bound=proto.Params)
# A method's handler: the gateway, the calling session and the decoded params in, the JSON
# result out.
_Handler: TypeAlias = Callable[["Gateway", _Session, _P], Awaitable[Any]]
_HANDLERS: dict[type[proto.Params], _Handler[Any]] = {}


def _handles(params_type: type[_P]) -> Callable[[_Handler[_P]], _Handler[_P]]:
    """Register the decorated method as the handler of the method with ``params_type``."""

    def register(handler: _Handler[_P]) -> _Handler[_P]:
        if params_type in _HANDLERS:
            raise RuntimeError(f"two handlers for {params_type.__name__}")
        _HANDLERS[params_type] = handler
        return handler

    return register


class Gateway:
    """Serves one Client over websockets. Run with ``await nursery.start(gateway.serve)``."""

    def __init__(
        self,
        client: Client,
        config: GatewayConfig,
        *,
        ssl_context: ssl.SSLContext | None = None,
        logs: LogManager | None = None,
    ) -> None:
        if config.tls and ssl_context is None:
            raise ValueError("GatewayConfig.tls is set but no ssl_context was given")
        self.client = client
        self.config = config
        # Every task started here writes to its container's log; run/attach/logs read it.
        self.logs = logs or LogManager(Path(client.state_dir) / ".logs" / client.namespace)
        self._log_reads: dict[str, _LogRead] = {}
        self._ssl_context = ssl_context
        self._token_digest = _digest(config.token)
        self._processes: dict[tuple[str, str], Process] = {}
        self._image_methods = ImageMethods(lambda: self.client.images)
        self._tickets: dict[str, tuple[str, str, float]] = {}
        self._attached: set[tuple[str, str]] = set()
        self._connections = 0
        self._connections_total = 0
        self._rejected = 0
        self._requests = 0
        self._errors = 0
        self._slow = 0
        self._stdio_sessions = 0
        self._internal_errors = 0
        self.port: int | None = None
        self._max_connections = config.max_connections
        self._events = EventLog()
        self._background: trio.Nursery | None = None
        self._starting: dict[str, int] = {}
        # Clients reading a task's output (run, attach) per container: --rm waits for them.
        self._readers: collections.Counter[str] = collections.Counter()

    def statistics(self) -> GatewayStatistics:
        return GatewayStatistics(
            connections=self._connections,
            connections_total=self._connections_total,
            rejected_handshakes=self._rejected,
            requests=self._requests,
            errors=self._errors,
            slow_disconnects=self._slow,
            stdio_sessions=self._stdio_sessions,
            internal_errors=self._internal_errors,
        )

    # -- listening -----------------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled; ``task_status.started`` reports the gateway once bound."""
        config = self.config
        if config.unix_socket is not None:
            listeners = [await _unix_listener(config.unix_socket)]
        else:
            tcp = await trio.open_tcp_listeners(config.port, host=config.host)
            listeners = tcp
            self.port = tcp[0].socket.getsockname()[1]
        # Half-open handshakes, connections and our own descriptors must all fit, with room
        # to spare, under the open-file limit.
        budget = raise_fd_limit() - FD_RESERVE - config.max_pending_handshakes
        self._max_connections = max(1, min(config.max_connections, budget // 2))
        if self._max_connections < config.max_connections:
            log.warning(
                "open-file limit allows only %d control-plane connections", self._max_connections
            )
        wrapped: list[Any] = listeners
        if self._ssl_context is not None:
            wrapped = [trio.SSLListener(listener, self._ssl_context) for listener in listeners]
        server = WebsocketListener(
            self._handle,
            wrapped,
            max_message_size=config.max_message_size,
            handshake_timeout=HANDSHAKE_SECONDS,
            on_failed_handshake=self._count_rejected,
            on_error=self._count_internal_error,
            max_pending=config.max_pending_handshakes,
            max_pending_per_peer=config.max_pending_per_peer,
        )
        stop_watching = self.client.watch_deletions(self._deleted_elsewhere)
        try:
            async with trio.open_nursery() as nursery:
                self._background = nursery
                await nursery.start(self.logs.run)
                await self._sweep_orphans()
                await self._drain_restored()
                await nursery.start(self._watch_events)
                await nursery.start(server.run)
                task_status.started(self)
        finally:
            stop_watching()
            self._image_methods.close()  # unfinished image uploads and downloads

    def _count_rejected(self) -> None:
        self._rejected += 1

    def _count_internal_error(self) -> None:
        self._internal_errors += 1

    async def _sweep_orphans(self) -> None:
        """Logs and staged binds of containers deleted while no serve was running
        (``ctr c rm``) go now.

        Only what belongs to a container containerd does not know is removed (one
        Containers.Get per container id the client does not supervise: none after a restore,
        which found them all). Staged binds are told apart by namespace
        (:func:`~actors.control._binds.staged_entries`); a directory a live container's
        label names is kept.
        """
        known = {c.id for c in self.client.containers()}
        staging = self.config.policy.bind_staging_dir
        referenced = {c.labels.get(BINDS_LABEL) for c in self._ours()}
        unstaged = [
            (directory, cid)
            for directory, cid in staged_entries(staging, self.client.namespace)
            if directory not in referenced and cid not in known
        ]
        orphan_logs = set(self.logs.unknown(known))
        candidates = sorted(orphan_logs | {cid for _, cid in unstaged})
        gone: set[str] = set()
        for container_id in candidates:
            try:
                await self.client.load_container(container_id)
            except NotFound:
                gone.add(container_id)
            except (ContainerdError, ValueError) as exc:
                log.warning("cannot tell whether %s still exists: %s", container_id, exc)
        for container_id in sorted(gone & orphan_logs):
            self.logs.remove(container_id)
            log.info("removed the log of %s: the container no longer exists", container_id)
        for directory, container_id in unstaged:
            if container_id in gone:
                await trio.to_thread.run_sync(unstage, directory, staging)
                log.info("unstaged the binds of %s: the container no longer exists", container_id)

    def _deleted_elsewhere(self, container: Container) -> None:
        """Another client deleted one of our containers: remove what we kept for it (its
        log, staged binds, /etc files), as our own delete does."""
        if is_ours(container.labels) and self._background is not None:
            self._background.start_soon(self._removed, container)

    async def _drain_restored(self) -> None:
        """After a restart, the log is again the consumer of every restored task's output."""
        for container in self._ours():  # never drain (or attach to) what we did not create
            if container.task_state() is None:
                continue
            try:
                # Through the callback: the actor reuses it for the tasks its restart policy
                # starts, so their output reaches the log too.
                await container.attach_task(self.logs.stdio_callback(container.id))
            except ContainerdError as exc:
                log.warning("cannot re-attach the log of %s: %s", container.id, exc)

    # -- what the server does on its own: the event log and docker's --rm ----------------

    async def _watch_events(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Keep recent events (``events --since``) and remove ``--rm`` containers on exit."""
        started = False
        while True:
            subscription = self.client.events(buffer=self.config.outbound_buffer)
            with contextlib.closing(subscription):
                # Also after a lag: exits missed meanwhile are found by the sweep.
                for container in self._ours():
                    self._auto_remove_soon(container.id)
                if not started:
                    started = True
                    task_status.started()
                labels_of: dict[str, dict[str, str]] = {}
                try:
                    async for event in subscription:
                        info = event.info
                        cid = info.container_id
                        if cid not in labels_of:
                            labels_of = {c.id: user_labels(c.labels) for c in self._ours()}
                            if cid not in labels_of:
                                continue  # not ours: never kept, never replayed to clients
                        self._events.append(proto.event_message(event, labels_of.get(cid, {})))
                        if event.type is EventType.EXIT and info.process_id in ("", cid):
                            self._auto_remove_soon(cid)
                    return  # the client closed
                except EventStreamLagged:
                    log.warning("event log fell behind; resubscribing")

    def _auto_remove_soon(self, container_id: str) -> None:
        if self._background is not None:
            self._background.start_soon(self._auto_remove, container_id)

    async def _auto_remove(self, container_id: str) -> None:
        # While a client reads the output, removing would cut it off: the stdio
        # connection calls this again when it ends.
        if self._readers[container_id] or container_id in self._starting:
            return
        expiry = self._ticket_pending(container_id)
        if expiry is not None:
            # A client is about to attach; look again once its ticket is used or expired.
            await trio.sleep_until(expiry)
            self._auto_remove_soon(container_id)
            return
        try:
            container = await self._container(container_id)
            if not auto_remove(container.labels):
                return
            state = container.task_state()
            if state is not None:
                if state.status is not TaskStatus.STOPPED:
                    return
                await (await container.task()).delete()
            await container.delete()
            await self._removed(container)
        except (NotFound, FailedPrecondition):
            pass  # already removed, or a new task was started meanwhile
        except ContainerdError:
            log.warning("could not auto-remove %s", container_id, exc_info=True)

    # -- handshake -----------------------------------------------------------------------

    def _header(self, request: WebSocketRequest, name: bytes) -> str | None:
        for key, value in request.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    def _host_allowed(self, request: WebSocketRequest) -> bool:
        # wsproto takes Host out of the headers trio-websocket shows us and keeps it (IDNA
        # decoded) on the request event; without it we refuse rather than guess.
        host = getattr(getattr(request, "_event", None), "host", None)
        if not isinstance(host, str):
            return False
        name = _host_name(host)
        config = self.config
        return bool(name) and (
            is_loopback(name)
            or name == config.host.lower()
            or name in {h.lower() for h in config.allowed_hosts}
        )

    def _check_handshake(self, request: WebSocketRequest) -> tuple[int, str] | None:
        """None when the request may proceed, else the HTTP status and reason to refuse."""
        origin = self._header(request, b"origin")
        if origin is not None and origin not in self.config.allowed_origins:
            return 403, "origin not allowed"
        if self.config.unix_socket is None and not self._host_allowed(request):
            return 403, "host not allowed"
        presented = None
        authorization = self._header(request, b"authorization")
        if authorization is not None and authorization[:7].lower() == "bearer ":
            presented = authorization[7:].strip()
        for protocol in request.proposed_subprotocols:
            if protocol.startswith(BEARER_SUBPROTOCOL_PREFIX):
                encoded = protocol[len(BEARER_SUBPROTOCOL_PREFIX) :]
                try:
                    presented = base64.urlsafe_b64decode(
                        encoded + "=" * (-len(encoded) % 4)
                    ).decode()
                except (ValueError, UnicodeDecodeError):
                    return 401, "malformed bearer subprotocol"
        if presented is None:
            return 401, "missing bearer token"
        if not hmac.compare_digest(_digest(presented), self._token_digest):
            return 401, "invalid token"
        return None

    async def _handle(self, request: WebSocketRequest) -> None:
        refusal = self._check_handshake(request)
        path = request.path.split("?", 1)[0]
        if refusal is None:
            if path == "/":
                wanted: tuple[str, ...] = (proto.JSONRPC_SUBPROTOCOL,)
            elif path.startswith("/stdio/"):
                wanted = frames.STDIO_SUBPROTOCOLS
            else:
                refusal = (404, "unknown path")
                wanted = ()
        if refusal is not None:
            self._rejected += 1
            await request.reject(refusal[0], body=refusal[1].encode())
            return
        if self._connections >= self._max_connections:
            self._rejected += 1
            await request.reject(503, body=b"too many connections")
            return
        chosen = next((p for p in wanted if p in request.proposed_subprotocols), None)
        if chosen is None:
            self._rejected += 1
            await request.reject(400, body=f"subprotocol must be one of {list(wanted)}".encode())
            return
        ws = await request.accept(subprotocol=chosen)
        self._connections += 1
        self._connections_total += 1
        try:
            if path == "/":
                await self._rpc_connection(ws)
            else:
                await self._stdio_connection(ws, path[len("/stdio/") :], chosen)
        except ConnectionClosed:
            pass
        except Exception:
            # One connection's bug must never take the server (and every other client) down.
            self._internal_errors += 1
            log.exception("connection handler failed")
            with trio.move_on_after(2), contextlib.suppress(ConnectionClosed):
                await ws.aclose(1011, "internal error")
        finally:
            self._connections -= 1
            # A no-op when already closed; else the closing handshake, within a bound.
            with trio.move_on_after(DISCONNECT_SECONDS), contextlib.suppress(ConnectionClosed):
                await ws.aclose()

    # -- JSON-RPC ------------------------------------------------------------------------

    async def _rpc_connection(self, ws: WebSocketConnection) -> None:
        writer_done = trio.Event()
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as inner:
                session = _Session(self, ws, inner)
                outer.start_soon(session.writer, writer_done)
                while True:
                    try:
                        message = await ws.get_message()
                    except ConnectionClosed:
                        break
                    self._requests += 1
                    self._receive(session, message)
                inner.cancel_scope.cancel()
            session.outbound_send.close()
            with trio.move_on_after(WRITER_GRACE_SECONDS):
                await writer_done.wait()
            outer.cancel_scope.cancel()
        if session.slow:
            # If even the close frame cannot get through, aclose still drops the TCP stream.
            with trio.move_on_after(WRITER_GRACE_SECONDS), contextlib.suppress(ConnectionClosed):
                await ws.aclose(CLOSE_TRY_AGAIN_LATER, "too slow reading replies and events")

    def _receive(self, session: _Session, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._reply_error(
                session,
                proto.ErrorResponse(
                    id=None,
                    code=proto.INVALID_REQUEST,
                    message="binary frames are not accepted on the JSON-RPC connection",
                ),
            )
            return
        if not session.allow_request():
            self._reply_error(
                session,
                proto.error_response(
                    None, ResourceExhausted("request rate limit exceeded", local=True)
                ),
            )
            return
        decoded = proto.decode_request(message)
        if isinstance(decoded, proto.ErrorResponse):
            self._reply_error(session, decoded)
            return
        if session.in_flight.value == 0:
            self._reply_error(
                session,
                proto.error_response(
                    decoded.id,
                    ResourceExhausted(
                        f"more than {self.config.max_in_flight} requests in flight", local=True
                    ),
                ),
            )
            return
        session.in_flight.acquire_nowait()
        session.nursery.start_soon(self._serve_request, session, decoded)

    def _reply_error(self, session: _Session, error: proto.ErrorResponse) -> None:
        self._errors += 1
        if not error.notification:
            session.send(proto.encode_error(error))

    async def _serve_request(self, session: _Session, request: proto.Request) -> None:
        try:
            result = await self._call(session, request.method, request.params)
        except Exception as exc:
            if not isinstance(exc, InvalidArgument | NotFound):
                log.debug("request %s failed", request.method, exc_info=True)
            self._reply_error(session, proto.error_response(request.id, exc))
            return
        finally:
            session.in_flight.release()
        if not request.notification:
            try:
                session.send(proto.encode_result(request.id, result))
            except TypeError:
                log.exception("unencodable result for %s", request.method)
                self._reply_error(session, proto.error_response(request.id, RuntimeError()))

    async def _container(self, container_id: str) -> Container:
        """One of our containers; every handler reaches containers through here only.

        A container someone else created in the namespace (``ctr run --privileged``, say)
        has a spec our policy never checked: acting on it (exec, start, attach) would hand
        the caller whatever that spec grants, so it is refused by name.
        """
        container = await self.client.load_container(container_id)
        if not is_ours(container.labels):
            raise PermissionDenied(
                f"container {container_id!r} was not created through this control plane; "
                "it cannot be managed here",
                local=True,
            )
        return container

    def _ours(self) -> list[Container]:
        return [c for c in self.client.containers() if is_ours(c.labels)]

    async def _process(self, container_id: str, exec_id: str) -> Process:
        process = self._processes.get((container_id, exec_id))
        if process is not None:
            return process
        task = await (await self._container(container_id)).task()
        return await task.process(exec_id)

    async def _call(self, session: _Session, method: str, params: proto.Params) -> Any:
        handler = _HANDLERS.get(type(params))
        if handler is None:  # unreachable: the table is checked complete at import
            raise InvalidArgument(f"method {method!r} is not served", local=True)
        return await handler(self, session, params)

    # -- handlers: one per params class of proto.METHODS ---------------------------------

    @_handles(proto.VersionParams)
    async def _version(self, session: _Session, params: proto.VersionParams) -> Any:
        version, revision = await self.client.version()
        return {"version": version, "revision": revision, "protocol": proto.JSONRPC_SUBPROTOCOL}

    @_handles(proto.ContainerCreateParams)
    async def _container_create(
        self, session: _Session, params: proto.ContainerCreateParams
    ) -> Any:
        client = self.client
        policy = self.config.policy
        # The default runtime and no runtime options: a request can name neither.
        restart = ContainerRestartPolicy.parse(params.restart) if params.restart else None
        if restart is not None and restart.mode != "no" and params.auto_remove:
            raise InvalidArgument(
                "conflicting options: a restart policy and auto-remove (--rm)", local=True
            )
        signo = proto.parse_signal(params.stop_signal) if params.stop_signal is not None else None
        if params.hostname is None:
            params = msgspec.structs.replace(params, hostname=default_hostname(params.id))
        image = await self._container_image(params)
        if signo is None and image is not None:
            signo = image_stop_signal(image)  # docker's rule: --stop-signal, else the image's
        # In our label namespace, so a later serve (and ``inspect``) knows it too.
        labels = store_user_labels(params.labels) | lifecycle_labels(params, signo)
        labels[OWNER_LABEL] = OWNER_VALUE
        if image is not None:
            labels[IMAGE_LABEL] = image.name  # what ps shows; not the client's spelling
            recorded = image_volumes(image)
            if recorded is not None:
                labels[VOLUMES_LABEL] = recorded  # shown by inspect (no volume is made)
        spec = build_container_spec(params, policy, namespace=client.namespace, image=image)
        settings = _log_settings(params.log)
        staged = stage_bind_sources(
            f"container {params.id!r}", spec, params.mounts, policy, params.id, client.namespace
        )
        if staged is not None:
            labels[BINDS_LABEL] = staged
        files_dir = self.config.files_dir
        try:
            own = {m.destination for m in params.mounts}
            if files_dir is not None and not own & {"/etc/hosts", "/etc/resolv.conf"}:
                spec.mounts.extend(
                    await trio.to_thread.run_sync(
                        write_container_files, files_dir, params.id, params.hostname or params.id
                    )
                )
            container = await client.new_container(
                params.id, spec, labels=labels, image=image or "", restart_policy=restart
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                if staged is not None:
                    unstage(staged, policy.bind_staging_dir)
                if files_dir is not None:
                    await trio.to_thread.run_sync(remove_container_files, files_dir, params.id)
            raise
        self.logs.configure(params.id, settings)
        return _describe(container)

    @_handles(proto.ContainerListParams)
    async def _container_list(self, session: _Session, params: proto.ContainerListParams) -> Any:
        return [_describe(c) for c in self._ours()]

    @_handles(proto.ContainerInspectParams)
    async def _container_inspect(
        self, session: _Session, params: proto.ContainerInspectParams
    ) -> Any:
        return _describe(await self._container(params.id))

    @_handles(proto.ContainerDeleteParams)
    async def _container_delete(
        self, session: _Session, params: proto.ContainerDeleteParams
    ) -> Any:
        container = await self._container(params.id)
        await container.delete()
        await self._removed(container)
        return None

    @_handles(proto.ContainerStopParams)
    async def _container_stop(self, session: _Session, params: proto.ContainerStopParams) -> Any:
        container = await self._container(params.id)
        state = container.task_state()
        if state is None:
            return None
        task = await container.task()
        if state.status is TaskStatus.STOPPED:
            # Still a user's stop: it cancels a pending restart (the actor notes it even
            # though the process is gone).
            with contextlib.suppress(NotFound, FailedPrecondition):
                await task.kill(signal.SIGKILL)
        else:
            signo = (
                proto.parse_signal(params.signal)
                if params.signal is not None
                else stop_signal(container.labels)
            )
            timeout = DEFAULT_STOP_TIMEOUT if params.timeout is None else params.timeout
            with contextlib.suppress(NotFound, FailedPrecondition):
                await task.kill(signo)
                if state.status is TaskStatus.PAUSED:
                    # A frozen process cannot act on the signal until thawed.
                    await task.resume()
            with trio.move_on_after(timeout):
                return msgspec.to_builtins(await task.wait())
            with contextlib.suppress(NotFound, FailedPrecondition):
                await task.kill(signal.SIGKILL, all=True)
        return msgspec.to_builtins(await task.wait())

    @_handles(proto.TaskTopParams)
    async def _task_top(self, session: _Session, params: proto.TaskTopParams) -> Any:
        task = await (await self._container(params.id)).task()
        summary = [(p.pid, p.exec_id) for p in await task.summary()]
        return await trio.to_thread.run_sync(read_top, summary)

    @_handles(proto.TaskStartParams)
    async def _task_start(self, session: _Session, params: proto.TaskStartParams) -> Any:
        container = await self._container(params.id)
        self._starting[params.id] = self._starting.get(params.id, 0) + 1
        # With attach, the output of this start on (not an earlier run's, still in the log).
        started_ns = time.time_ns()
        try:
            task = await container.start(
                with_stdin=params.stdin, attach_stdio=self.logs.stdio_callback(params.id)
            )
            result: dict[str, Any] = {"pid": task.pid}
            if params.attach:
                ticket = self._new_ticket(params.id, "")
                self._log_reads[ticket["path"]] = _LogRead(
                    LogReadOptions(follow=True, since=started_ns), timestamps=False, attach=True
                )
                result["stdio"] = ticket
        finally:
            self._starting[params.id] -= 1
            if not self._starting[params.id]:
                del self._starting[params.id]
        # An exit seen while starting was deferred; look again (a no-op while it runs).
        self._auto_remove_soon(params.id)
        return result

    @_handles(proto.TaskKillParams)
    async def _task_kill(self, session: _Session, params: proto.TaskKillParams) -> Any:
        task = await (await self._container(params.id)).task()
        await task.kill(params.signo, all=params.all)
        return None

    @_handles(proto.TaskPauseParams)
    async def _task_pause(self, session: _Session, params: proto.TaskPauseParams) -> Any:
        await (await (await self._container(params.id)).task()).pause()
        return None

    @_handles(proto.TaskResumeParams)
    async def _task_resume(self, session: _Session, params: proto.TaskResumeParams) -> Any:
        await (await (await self._container(params.id)).task()).resume()
        return None

    @_handles(proto.TaskStatsParams)
    async def _task_stats(self, session: _Session, params: proto.TaskStatsParams) -> Any:
        task = await (await self._container(params.id)).task()
        return msgspec.to_builtins(await task.stats())

    @_handles(proto.TaskPidsParams)
    async def _task_pids(self, session: _Session, params: proto.TaskPidsParams) -> Any:
        task = await (await self._container(params.id)).task()
        return [msgspec.to_builtins(p) for p in await task.summary()]

    @_handles(proto.TaskStatusParams)
    async def _task_status(self, session: _Session, params: proto.TaskStatusParams) -> Any:
        task = await (await self._container(params.id)).task()
        return msgspec.to_builtins(await task.status(refresh=params.refresh))

    @_handles(proto.TaskResizeParams)
    async def _task_resize(self, session: _Session, params: proto.TaskResizeParams) -> Any:
        task = await (await self._container(params.id)).task()
        await task.resize(params.width, params.height)
        return None

    @_handles(proto.TaskUpdateParams)
    async def _task_update(self, session: _Session, params: proto.TaskUpdateParams) -> Any:
        check_resource_update(params, self.config.policy)
        task = await (await self._container(params.id)).task()
        await task.update_resources(_resources(params))
        return None

    @_handles(proto.TaskDeleteParams)
    async def _task_delete(self, session: _Session, params: proto.TaskDeleteParams) -> Any:
        task = await (await self._container(params.id)).task()
        return msgspec.to_builtins(await task.delete())

    @_handles(proto.TaskWaitParams)
    async def _task_wait(self, session: _Session, params: proto.TaskWaitParams) -> Any:
        container = await self._container(params.id)
        status = await (await container.task()).wait()
        if container.restart_status().policy in ("", "no"):
            # As docker: the exit is reported once the task's output is in the log, so a
            # `logs` after `wait` shows all of it. (A restarting container's log goes on.)
            with trio.move_on_after(OUTPUT_SETTLE_SECONDS):
                await self.logs.settled(params.id)
        return msgspec.to_builtins(status)

    @_handles(proto.ProcessExecParams)
    async def _process_exec(self, session: _Session, params: proto.ProcessExecParams) -> Any:
        container = await self._container(params.id)
        task = await container.task()
        process_spec = build_exec_process(params, container.spec(), policy=self.config.policy)
        if params.user is not None:
            process_spec.user = User(uid=params.user.uid, gid=params.user.gid)
        process = await task.exec(params.exec_id, process_spec, with_stdin=params.stdin)
        self._processes[(params.id, params.exec_id)] = process
        return {"pid": process.pid}

    @_handles(proto.ProcessKillParams)
    async def _process_kill(self, session: _Session, params: proto.ProcessKillParams) -> Any:
        process = await self._process(params.id, params.exec_id)
        await process.kill(params.signo)
        return None

    @_handles(proto.ProcessWaitParams)
    async def _process_wait(self, session: _Session, params: proto.ProcessWaitParams) -> Any:
        process = await self._process(params.id, params.exec_id)
        return msgspec.to_builtins(await process.wait())

    @_handles(proto.ProcessDeleteParams)
    async def _process_delete(self, session: _Session, params: proto.ProcessDeleteParams) -> Any:
        process = await self._process(params.id, params.exec_id)
        status = await process.delete()
        self._processes.pop((params.id, params.exec_id), None)
        return msgspec.to_builtins(status)

    @_handles(proto.EventsSubscribeParams)
    async def _events_subscribe(
        self, session: _Session, params: proto.EventsSubscribeParams
    ) -> Any:
        return await self._subscribe(session, params)

    @_handles(proto.EventsUnsubscribeParams)
    async def _events_unsubscribe(
        self, session: _Session, params: proto.EventsUnsubscribeParams
    ) -> Any:
        scope = session.subscriptions.pop(params.subscription, None)
        if scope is None:
            raise NotFound(f"no subscription {params.subscription!r}", local=True)
        scope.cancel()
        return None

    @_handles(proto.StdioAttachParams)
    async def _stdio_attach(self, session: _Session, params: proto.StdioAttachParams) -> Any:
        ticket = await self._issue_ticket(params.id, params.exec_id or "")
        if not params.exec_id:
            # A task's output comes from its log: every attach sees the same bytes.
            self._log_reads[ticket["path"]] = _LogRead(
                LogReadOptions(follow=True, tail=None if params.replay else 0),
                timestamps=False,
                attach=True,
            )
        return ticket

    async def _removed(self, container: Container) -> None:
        """What a removed container leaves here: its log, staged binds and /etc files."""
        self._forget(container.id)
        self.logs.remove(container.id)
        staged = container.labels.get(BINDS_LABEL)
        if staged is not None:
            unstage(staged, self.config.policy.bind_staging_dir)
        if self.config.files_dir is not None:
            await trio.to_thread.run_sync(
                remove_container_files, self.config.files_dir, container.id
            )

    @_handles(proto.ContainerLogsParams)
    async def _container_logs(self, session: _Session, params: proto.ContainerLogsParams) -> Any:
        return await self._issue_log_ticket(params)

    async def _image_call(self, session: _Session, params: proto.Params) -> Any:
        method = _METHOD_OF[type(params)]
        return await self._image_methods.call(
            method,
            params,
            lambda kind, body: session.send(proto.encode_notification(kind, body)),
        )

    @_handles(proto.ImagePullParams)
    async def _image_pull(self, session: _Session, params: proto.ImagePullParams) -> Any:
        return await self._image_call(session, params)

    @_handles(proto.ImageListParams)
    async def _image_list(self, session: _Session, params: proto.ImageListParams) -> Any:
        return await self._image_call(session, params)

    @_handles(proto.ImageInspectParams)
    async def _image_inspect(self, session: _Session, params: proto.ImageInspectParams) -> Any:
        return await self._image_call(session, params)

    @_handles(proto.ImageRemoveParams)
    async def _image_remove(self, session: _Session, params: proto.ImageRemoveParams) -> Any:
        return await self._image_call(session, params)

    @_handles(proto.ImageLoadParams)
    async def _image_load(self, session: _Session, params: proto.ImageLoadParams) -> Any:
        return await self._image_call(session, params)

    @_handles(proto.ImageSaveParams)
    async def _image_save(self, session: _Session, params: proto.ImageSaveParams) -> Any:
        return await self._image_call(session, params)

    async def _container_image(self, params: Any) -> Image | None:
        # A directory rootfs (requested, or the policy's legacy default) has no image; any
        # other request runs on an image, each container on its own snapshot of it.
        if params.rootfs is not None:
            if params.image is not None:
                raise InvalidArgument("give either an image or a rootfs", local=True)
            return None
        if params.image is None and self.config.policy.default_rootfs is not None:
            return None
        return await self._image_methods.resolve(params.image or self.config.policy.default_image)

    def _forget(self, container_id: str) -> None:
        for key in [k for k in self._processes if k[0] == container_id]:
            del self._processes[key]

    async def _subscribe(
        self, session: _Session, params: proto.EventsSubscribeParams
    ) -> dict[str, Any]:
        if len(session.subscriptions) >= self.config.max_subscriptions:
            raise ResourceExhausted(
                f"at most {self.config.max_subscriptions} subscriptions per connection",
                local=True,
            )
        name = f"s{secrets.token_hex(6)}"
        event_filter = proto.EventFilter.from_params(params.filters)
        subscription = self.client.events(buffer=self.config.outbound_buffer)
        scope = trio.CancelScope()
        session.subscriptions[name] = scope

        # The live subscription exists before the replay is taken, so nothing falls between.
        replayed = (
            self._events.since(params.since, event_filter) if params.since is not None else []
        )
        seen = {(m.time_nano, m.action, m.actor.id) for m in replayed}

        async def pump() -> None:
            with scope, contextlib.closing(subscription):
                for message in replayed:
                    session.send(proto.event_notification(name, message))
                labels_of = {c.id: user_labels(c.labels) for c in self._ours()}
                async for event in subscription:
                    cid = event.info.container_id
                    if cid not in labels_of:
                        labels_of = {c.id: user_labels(c.labels) for c in self._ours()}
                        if cid not in labels_of:
                            continue  # not ours: clients see only what they may touch
                    message = proto.event_message(event, labels_of.get(cid, {}))
                    if (message.time_nano, message.action, cid) in seen:
                        continue
                    if event_filter.matches(message):
                        session.send(proto.event_notification(name, message))

        session.nursery.start_soon(pump)
        return {"subscription": name, "replayed": len(replayed)}

    # -- stdio ---------------------------------------------------------------------------

    async def _issue_ticket(self, container_id: str, exec_id: str) -> dict[str, str]:
        container = await self._container(container_id)
        if exec_id:
            await self._process(container_id, exec_id)
        elif container.task_state() is None:
            raise NotFound(f"container {container_id} has no task", local=True)
        return self._new_ticket(container_id, exec_id)

    def _new_ticket(self, container_id: str, exec_id: str) -> dict[str, str]:
        now = trio.current_time()
        self._tickets = {k: v for k, v in self._tickets.items() if v[2] > now}
        self._log_reads = {
            k: v for k, v in self._log_reads.items() if k[len("/stdio/") :] in self._tickets
        }
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = (container_id, exec_id, now + STDIO_TICKET_SECONDS)
        return {"path": f"/stdio/{ticket}", "expires_in": str(int(STDIO_TICKET_SECONDS))}

    async def _issue_log_ticket(self, params: Any) -> dict[str, str]:
        await self._container(params.id)  # NotFound for an unknown container
        streams = frozenset(s for s, wanted in ((1, params.stdout), (2, params.stderr)) if wanted)
        options = LogReadOptions(
            follow=params.follow,
            tail=params.tail,
            since=params.since,
            until=params.until,
            streams=streams,
        )
        ticket = self._new_ticket(params.id, "")
        self._log_reads[ticket["path"]] = _LogRead(options, params.timestamps, attach=False)
        return ticket

    def _ticket_pending(self, container_id: str) -> float | None:
        """When the last unused ticket for the container's task expires, if any."""
        now = trio.current_time()
        expiries = [
            expiry
            for cid, exec_id, expiry in self._tickets.values()
            if cid == container_id and not exec_id and expiry > now
        ]
        return max(expiries) if expiries else None

    async def _stdio_connection(
        self, ws: WebSocketConnection, ticket: str, subprotocol: str
    ) -> None:
        entry = self._tickets.pop(ticket, None)
        if entry is None or entry[2] < trio.current_time():
            await ws.send_message(
                frames.encode_frame(
                    frames.Channel.ERROR, frames.failure_status_message("unknown or expired ticket")
                )
            )
            await ws.aclose(CLOSE_POLICY_VIOLATION, "unknown or expired ticket")
            return
        container_id, exec_id, _ = entry
        log_read = self._log_reads.pop(f"/stdio/{ticket}", None)
        if log_read is not None and not log_read.attach:
            self._stdio_sessions += 1
            store = self.logs.store(container_id)
            await send_log_frames(ws, store, log_read.options, timestamps=log_read.timestamps)
            await ws.send_message(frames.encode_frame(frames.Channel.ERROR, _SUCCESS))
            with contextlib.suppress(ConnectionClosed):
                await ws.aclose(1000, "end of log")
            return
        key = (container_id, exec_id)
        if key in self._attached and log_read is None:
            await ws.send_message(
                frames.encode_frame(
                    frames.Channel.ERROR, frames.failure_status_message("already attached")
                )
            )
            await ws.aclose(CLOSE_POLICY_VIOLATION, "process already attached")
            return
        if log_read is None:
            self._attached.add(key)  # a FIFO has one consumer; a log has any number
        if not exec_id:
            self._readers[container_id] += 1
        self._stdio_sessions += 1
        try:
            process, io = await self._stdio_target(container_id, exec_id)
            output = None
            if log_read is not None:
                if not self.logs.draining(container_id) and any(not p.eof for p in io.pipes()):
                    # A task started without us (by the library, say): its log starts now.
                    self.logs.drain(container_id, io)
                output = functools.partial(
                    send_log_frames, ws, self.logs.store(container_id), log_read.options
                )
            tee_context = self.logs.exec_tee(container_id) if exec_id else _no_tee()
            async with tee_context as tee:
                await _bridge_stdio(ws, process, io, subprotocol, output, tee)
        except NotFound as exc:
            await ws.send_message(
                frames.encode_frame(frames.Channel.ERROR, frames.failure_status_message(str(exc)))
            )
            await ws.aclose(CLOSE_POLICY_VIOLATION, "process not found")
        finally:
            if log_read is None:
                self._attached.discard(key)
            if not exec_id:
                self._readers[container_id] -= 1
                if not self._readers[container_id]:
                    del self._readers[container_id]
                self._auto_remove_soon(container_id)

    async def _stdio_target(self, container_id: str, exec_id: str) -> tuple[Process, DirectIO]:
        if exec_id:
            process = await self._process(container_id, exec_id)
        else:
            process = await (await self._container(container_id)).attach_task()
        if process.io is None:
            raise NotFound(f"process {exec_id or container_id} has no stdio to attach", local=True)
        return process, process.io


@contextlib.asynccontextmanager
async def _no_tee() -> AsyncIterator[None]:
    yield None


_METHOD_OF: Final = {cls: method for method, cls in proto.METHODS.items()}
_unserved = sorted(m for m, cls in proto.METHODS.items() if cls not in _HANDLERS)
if _unserved:
    raise RuntimeError(f"methods without a handler: {_unserved}")


async def _bridge_stdio(
    ws: WebSocketConnection,
    process: Process,
    io: DirectIO,
    subprotocol: str,
    output: Callable[[], Awaitable[None]] | None = None,
    tee: Callable[[int, bytes], Awaitable[None]] | None = None,
) -> None:
    """Copy between one process's stdio and the k8s-framed websocket until it exits.

    Output comes from ``output`` (a reader of the container's log) when given, else from the
    FIFOs, each chunk handed to ``tee`` (the log, for a container that logs its execs) before
    it is sent. If the peer goes away first, copying stops at once (the FIFOs stay with the
    actor and keep being drained) and the process keeps running.
    """
    peer_gone = False

    async def guarded(fn: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
        nonlocal peer_gone
        try:
            await fn()
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            peer_gone = True
            scope.cancel()

    async def pump(pipe: Any, channel: frames.Channel) -> None:
        while chunk := await pipe.receive_some(1 << 16):
            if tee is not None:
                await tee(int(channel), chunk)
            await ws.send_message(frames.encode_frame(channel, chunk))

    async def inbound() -> None:
        while True:
            message = await ws.get_message()
            if isinstance(message, str):
                continue
            frame = frames.decode_frame(message, subprotocol=subprotocol)
            if frame is None:
                continue
            channel, payload = frame
            # A bad resize or close frame is ignored, as the k8s server does; the stream goes on.
            with contextlib.suppress(ContainerdError):
                if channel is frames.Channel.STDIN and io.stdin is not None and not io.stdin_closed:
                    await io.stdin.send_all(payload)
                elif channel is frames.Channel.RESIZE:
                    size = frames.parse_resize(payload)
                    await process.resize(size.width, size.height)
                elif (
                    channel is frames.Channel.CLOSE
                    and frames.parse_close(payload) is frames.Channel.STDIN
                ):
                    await process.close_stdin()

    async def outputs_then_exit() -> None:
        if output is not None:
            await output()
        else:
            async with trio.open_nursery() as outputs:
                for pipe, channel in (
                    (io.stdout, frames.Channel.STDOUT),
                    (io.stderr, frames.Channel.STDERR),
                ):
                    if pipe is not None:
                        outputs.start_soon(pump, pipe, channel)
        status = await process.wait()
        await ws.send_message(
            frames.encode_frame(frames.Channel.ERROR, frames.exit_status_message(status.code))
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guarded, inbound, nursery.cancel_scope)
        await guarded(outputs_then_exit, nursery.cancel_scope)
        nursery.cancel_scope.cancel()
    if not peer_gone:
        with contextlib.suppress(ConnectionClosed):
            await ws.aclose(1000, "process exited")


class _LogRead(msgspec.Struct, frozen=True):
    options: LogReadOptions
    timestamps: bool
    attach: bool


_SUCCESS: Final = frames.exit_status_message(0)


def _log_settings(params: Any) -> ContainerLogSettings:
    if params is None:
        return ContainerLogSettings()
    return ContainerLogSettings(
        max_size=params.max_size,
        max_files=params.max_files,
        mode=OutputMode(params.mode),
        buffer_size=params.buffer_size,
        execs=params.execs,
    )


def _describe(container: Container) -> dict[str, Any]:
    state = container.task_state()
    return {
        "id": container.id,
        "labels": user_labels(container.labels),
        "runtime": container.runtime,
        "task": msgspec.to_builtins(state) if state is not None else None,
        **describe_extra(container),
    }


def _resources(params: proto.TaskUpdateParams) -> LinuxResources:
    if params.memory_limit is None and params.pids_limit is None and params.cpu_shares is None:
        raise InvalidArgument(
            "task.update needs memory_limit, pids_limit or cpu_shares", local=True
        )
    return LinuxResources(
        memory=LinuxMemory(limit=params.memory_limit) if params.memory_limit else None,
        pids=LinuxPids(limit=params.pids_limit) if params.pids_limit else None,
        cpu=LinuxCPU(shares=params.cpu_shares) if params.cpu_shares else None,
    )


async def _unix_listener(path: str) -> trio.SocketListener:
    import os
    import stat

    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        await sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(128)
    return trio.SocketListener(sock)
