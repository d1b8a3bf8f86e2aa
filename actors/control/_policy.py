"""Turning control-plane intents into OCI specs, by allow-list.

Whoever can call the control plane can ask our root daemon for containers, so a request is
never passed through as a spec: :func:`build_container_spec` starts from the builder's runc
defaults and adds only what the :class:`SpecPolicy` allows. It refuses privileged mode,
hooks (they run as root on the host), sharing host namespaces, capabilities the policy does
not grant, a rootfs outside the allowed directories, and bind mounts of protected host
paths or sockets. The only filesystem access is ``realpath`` and ``stat``.

Denials raise :class:`~actors.errors.PermissionDenied`; malformed requests raise
:class:`~actors.errors.InvalidArgument`. Messages name only paths the caller supplied, never
where a symlink led.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Final

import msgspec

from ..core._ids import validate_id
from ..core._image_spec import with_image_root, with_user_lookup
from ..core._seccomp import default_seccomp_profile
from ..core.spec import (
    DEFAULT_CAPABILITIES,
    DEFAULT_NAMESPACES,
    HARDENED_MEMORY_LIMIT,
    HARDENED_PIDS_LIMIT,
    KNOWN_CAPABILITIES,
    Mount,
    Process,
    Spec,
    build_spec,
    exec_process_from,
)
from ..errors import FailedPrecondition, InvalidArgument, PermissionDenied
from ..images._runconfig import merge_run_config
from ._binds import DEFAULT_STAGING_DIR, PinnedSource, open_source, stage

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from ..images._api import Image
    from ._protocol import (
        ContainerCreateParams,
        MountParams,
        ProcessExecParams,
        TaskUpdateParams,
    )

__all__ = [
    "PROTECTED_HOST_PATHS",
    "SpecPolicy",
    "build_container_spec",
    "build_exec_process",
    "check_resource_update",
    "stage_bind_sources",
]

#: Host paths a bind mount may not be, lie inside, or contain ("/" only exactly): the host's
#: own configuration and binaries, kernel trees, and every runtime's state (sockets, task
#: bundles, FIFOs, tokens). ``SpecPolicy.protected_paths`` adds the server's own state
#: directories (``serve`` adds its state root and the embedded containerd's). The allowed
#: bind roots remain the allow-list; this is the floor under any root an operator picks.
PROTECTED_HOST_PATHS: Final = (
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/opt/cni",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/cni",
    "/var/lib/containerd",
    "/var/lib/containerd-actors",
    "/var/lib/docker",
    "/var/lib/kubelet",
    "/var/lib/nerdctl",
    "/var/log",
    "/var/run",
)

# A container that leaves out one of these shares the host's, which is how containers
# reached the shim's abstract sockets in CVE-2020-15257.
_REQUIRED_NAMESPACES: Final = frozenset({"pid", "ipc", "uts", "mount", "network"})
_OPTIONAL_NAMESPACES: Final = ("cgroup",)
# Kernel filesystems set up (and masked) by the runtime; a bind over them could hide the
# masks, and a rootfs there makes no sense.
_KERNEL_TREES: Final = ("/proc", "/sys", "/dev")
_BIND_OPTIONS: Final = ("nosuid", "nodev", "rbind")


class SpecPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What the control plane may grant; loadable from the daemon's configuration.

    Attributes:
        default_rootfs: a directory used when a request names neither rootfs nor image;
            trusted (operator-configured). None (``serve``'s default): such a request runs
            on ``default_image``, each container on its own snapshot.
        allowed_rootfs_roots: a requested rootfs must resolve inside one of these.
        default_image: the image of a request that names neither rootfs nor image (the
            built-in busybox, imported into containerd's store when absent).
        readonly_rootfs_dirs: directory rootfs are mounted read-only, whatever the request
            says (``serve`` sets it: a directory is shared by every container on it, so a
            writable one would let one container change another's root).
        allowed_bind_roots: bind sources must resolve inside one of these; empty disables
            bind mounts.
        allow_extra_capabilities: capabilities a request may add to ``base_capabilities``.
        allow_terminal: whether processes may get a pty.
        max_memory_limit: ceiling in bytes; a request above it is refused. None: no ceiling.
        base_capabilities: what every container gets (runc's minimal set by default).
        default_memory_limit: bytes, applied when a request sets none (lowered to the
            ceiling if above it). None: no default, but the ceiling still applies.
        default_pids_limit: tasks, applied when a request sets none (same rules).
        max_pids_limit: ceiling on the number of tasks; None: no ceiling.
        seccomp: apply the project's default seccomp profile (for the container's
            capabilities) to every container.
        protected_paths: host paths a bind may not be, lie inside or contain, on top of
            :data:`PROTECTED_HOST_PATHS` (the server's state dirs).
        bind_staging_dir: root-only directory where checked bind sources are mounted
            before runc sees them (``actors.control._binds``); under ``/run`` by default.
    """

    default_rootfs: str | None = None
    allowed_rootfs_roots: tuple[str, ...] = ()
    default_image: str = "busybox"
    readonly_rootfs_dirs: bool = False
    allowed_bind_roots: tuple[str, ...] = ()
    allow_extra_capabilities: frozenset[str] = frozenset()
    allow_terminal: bool = True
    max_memory_limit: int | None = None
    base_capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    default_memory_limit: int | None = HARDENED_MEMORY_LIMIT
    default_pids_limit: int | None = HARDENED_PIDS_LIMIT
    max_pids_limit: int | None = None
    seccomp: bool = True
    protected_paths: tuple[str, ...] = ()
    bind_staging_dir: str = DEFAULT_STAGING_DIR

    def __post_init__(self) -> None:
        defaults = (self.default_rootfs,) if self.default_rootfs is not None else ()
        for root in (
            *defaults,
            *self.allowed_rootfs_roots,
            *self.allowed_bind_roots,
            *self.protected_paths,
            self.bind_staging_dir,
        ):
            if not posixpath.isabs(root) or "\x00" in root:
                raise ValueError(f"policy paths must be absolute, got {root!r}")
        capabilities = set(self.allow_extra_capabilities) | set(self.base_capabilities)
        unknown = sorted(capabilities - KNOWN_CAPABILITIES)
        if unknown:
            raise ValueError(f"unknown capabilities in policy (use CAP_ names): {unknown}")
        for name in (
            "max_memory_limit",
            "default_memory_limit",
            "max_pids_limit",
            "default_pids_limit",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive")


def build_container_spec(
    params: ContainerCreateParams,
    policy: SpecPolicy,
    *,
    namespace: str,
    image: Image | None = None,
) -> Spec:
    """Build the spec for a ``container.create`` request, or refuse it.

    With ``image`` the container runs on its own snapshot of it (``root.path`` is the
    bundle's ``rootfs``), and the image's config is merged with the request by docker's
    rules. The image contributes **only** argv, env, working directory and user: things
    the request itself may set. Its Volumes, ExposedPorts, Labels, Healthcheck or anything
    else never reach the spec; privileges, capabilities, mounts, namespaces and limits come
    from the request through the same checks as without an image.

    Args:
        params: the decoded request.
        policy: what may be granted.
        namespace: the containerd namespace; the cgroup path is ``/<namespace>/<id>``.
        image: the image the container runs on (resolved by the caller), or None for a
            directory rootfs.

    Raises:
        PermissionDenied: the request asks for something the policy does not allow.
        InvalidArgument: the request is malformed (bad id, relative mount destination, ...).
        FailedPrecondition: the policy's default rootfs is missing.
    """
    container_id = validate_id(params.id)
    validate_id(namespace, kind="namespace")
    what = f"container {container_id!r}"
    if params.privileged:
        raise PermissionDenied(f"{what}: privileged containers are not allowed", local=True)
    if params.hooks is not None:
        raise PermissionDenied(
            f"{what}: OCI hooks are not allowed (they run as root on the host)", local=True
        )
    if params.terminal and not policy.allow_terminal:
        raise PermissionDenied(f"{what}: terminals are not allowed by policy", local=True)
    namespaces = _namespaces(what, params.namespaces)
    capabilities = _capabilities(what, params.capabilities_add, policy)
    memory_limit = _limit(
        what,
        "memory_limit",
        params.memory_limit,
        policy.default_memory_limit,
        policy.max_memory_limit,
        " bytes",
    )
    pids_limit = _limit(
        what, "pids_limit", params.pids_limit, policy.default_pids_limit, policy.max_pids_limit
    )
    mounts = _bind_mounts(what, params.mounts, policy)
    readonly_rootfs = params.readonly_rootfs
    if image is not None:
        if params.rootfs is not None:
            raise InvalidArgument(f"{what}: give either an image or a rootfs", local=True)
        run = merge_run_config(
            image.config.config,
            args=params.args,
            entrypoint=params.entrypoint,
            env=params.env or (),
            cwd=params.cwd,
            user=(
                params.user
                if isinstance(params.user, str)
                else f"{params.user.uid}:{params.user.gid}"
                if params.user is not None
                else None
            ),
        )
        # A placeholder for the builder's directory check; the root is replaced below.
        rootfs, args, cwd, user = "/", run.args, run.cwd, run.user
        lookup = run.user_lookup
        env: list[str] | None = run.env
    else:
        if params.entrypoint is not None:
            raise InvalidArgument(f"{what}: an entrypoint needs an image", local=True)
        if not params.args:
            raise InvalidArgument(f"{what}: args are required without an image", local=True)
        rootfs = _rootfs(what, params.rootfs, policy)
        args, cwd = params.args, params.cwd or "/"
        env = list(params.env) if params.env is not None else None
        if isinstance(params.user, str):
            raise InvalidArgument(
                f"{what}: user {params.user!r} is a name, which only an image can resolve",
                local=True,
            )
        user = (params.user.uid, params.user.gid) if params.user is not None else (0, 0)
        lookup = ""
        readonly_rootfs = readonly_rootfs or policy.readonly_rootfs_dirs
    try:
        spec = build_spec(
            rootfs,
            args,
            env=env,
            cwd=cwd,
            user=user,
            terminal=params.terminal,
            hostname=params.hostname,
            readonly_rootfs=readonly_rootfs,
            memory_limit=memory_limit,
            pids_limit=pids_limit,
            cpu_shares=params.cpu_shares,
            namespaces=namespaces,
            cgroups_path=f"/{namespace}/{container_id}",
            extra_mounts=mounts,
            capabilities=capabilities,
            seccomp=default_seccomp_profile(capabilities) if policy.seccomp else None,
        )
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"{what}: {exc}", local=True) from None
    return with_user_lookup(with_image_root(spec), lookup) if image is not None else spec


def check_resource_update(params: TaskUpdateParams, policy: SpecPolicy) -> None:
    """Refuse a ``task.update`` that would raise a limit past the policy's ceiling.

    Raises:
        PermissionDenied: ``memory_limit`` or ``pids_limit`` is above its ceiling.
    """
    what = f"update of container {validate_id(params.id)!r}"
    _limit(what, "memory_limit", params.memory_limit, None, policy.max_memory_limit, " bytes")
    _limit(what, "pids_limit", params.pids_limit, None, policy.max_pids_limit)


def build_exec_process(
    params: ProcessExecParams, container_spec: Spec, *, policy: SpecPolicy | None = None
) -> Process:
    """Build the process for a ``process.exec`` request from the container's own spec.

    The exec inherits the init process's user, capabilities and confinement; only argv,
    env, cwd and the terminal flag come from the request.

    Raises:
        PermissionDenied: a terminal was requested and ``policy`` forbids it.
        InvalidArgument: bad ids or arguments, or the spec has no process.
    """
    validate_id(params.id)
    validate_id(params.exec_id, kind="exec id")
    what = f"exec {params.exec_id!r} in container {params.id!r}"
    if params.terminal and policy is not None and not policy.allow_terminal:
        raise PermissionDenied(f"{what}: terminals are not allowed by policy", local=True)
    try:
        return exec_process_from(
            container_spec, params.args, terminal=params.terminal, env=params.env, cwd=params.cwd
        )
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"{what}: {exc}", local=True) from None


# --- checks --------------------------------------------------------------------------------


def _namespaces(what: str, requested: Sequence[str] | None) -> list[str]:
    if requested is None:
        return list(DEFAULT_NAMESPACES)
    chosen = set(requested)
    if len(chosen) != len(requested):
        raise InvalidArgument(f"{what}: duplicate entries in namespaces", local=True)
    missing = _REQUIRED_NAMESPACES - chosen
    if missing:
        raise PermissionDenied(
            f"{what}: sharing a host namespace is not allowed (missing "
            f"{', '.join(sorted(missing))}); namespaces must include "
            f"{', '.join(sorted(_REQUIRED_NAMESPACES))}",
            local=True,
        )
    if "user" in chosen:
        raise InvalidArgument(
            f"{what}: the 'user' namespace needs uid/gid mappings, which this API does not set up",
            local=True,
        )
    unknown = chosen - _REQUIRED_NAMESPACES - set(_OPTIONAL_NAMESPACES)
    if unknown:
        raise InvalidArgument(f"{what}: unknown namespaces {sorted(unknown)}", local=True)
    return list(DEFAULT_NAMESPACES) + [ns for ns in _OPTIONAL_NAMESPACES if ns in chosen]


def _capability_name(name: str) -> str:
    # Docker accepts "net_admin" and "NET_ADMIN" as well as "CAP_NET_ADMIN".
    upper = name.upper()
    return upper if upper.startswith("CAP_") else f"CAP_{upper}"


def _capabilities(what: str, requested: Iterable[str], policy: SpecPolicy) -> list[str]:
    granted = list(policy.base_capabilities)
    denied: list[str] = []
    for raw in requested:
        name = _capability_name(raw)
        if name == "CAP_ALL":
            denied.append("ALL")
        elif name not in KNOWN_CAPABILITIES:
            raise InvalidArgument(f"{what}: unknown capability {raw!r}", local=True)
        elif name in granted:
            continue
        elif name in policy.allow_extra_capabilities:
            granted.append(name)
        else:
            denied.append(name)
    if denied:
        raise PermissionDenied(
            f"{what}: capabilities not allowed by policy: {', '.join(denied)}", local=True
        )
    return granted


def _limit(
    what: str,
    field: str,
    requested: int | None,
    default: int | None,
    ceiling: int | None,
    unit: str = "",
) -> int | None:
    if requested is None:
        # Leaving the limit out must not be a way around the ceiling.
        if default is None:
            return ceiling
        return default if ceiling is None else min(default, ceiling)
    if ceiling is not None and requested > ceiling:
        raise PermissionDenied(
            f"{what}: {field} {requested} exceeds the policy maximum of {ceiling}{unit}",
            local=True,
        )
    return requested


def _realpath(what: str, label: str, path: str) -> str:
    if not posixpath.isabs(path) or "\x00" in path:
        raise InvalidArgument(f"{what}: {label} {path!r} must be an absolute path", local=True)
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        raise InvalidArgument(f"{what}: {label} {path!r} cannot be resolved", local=True) from None


def _inside(path: str, root: str) -> bool:
    return PurePosixPath(path).is_relative_to(root)


def _inside_any(path: str, roots: Iterable[str]) -> bool:
    return any(_inside(path, os.path.realpath(root)) for root in roots)


def _rootfs(what: str, requested: str | None, policy: SpecPolicy) -> str:
    if requested is None:
        if policy.default_rootfs is None:
            raise FailedPrecondition("the server has no default rootfs directory", local=True)
        resolved = os.path.realpath(policy.default_rootfs)
        if not os.path.isdir(resolved):
            # The operator's path is not the caller's business: do not echo it.
            raise FailedPrecondition("the server's default rootfs is not available", local=True)
        return resolved
    resolved = _realpath(what, "rootfs", requested)
    if not _inside_any(resolved, policy.allowed_rootfs_roots):
        raise PermissionDenied(
            f"{what}: rootfs {requested!r} is outside the allowed rootfs directories", local=True
        )
    if resolved == "/" or any(_inside(resolved, tree) for tree in _KERNEL_TREES):
        raise PermissionDenied(f"{what}: rootfs {requested!r} is a protected host path", local=True)
    if not os.path.isdir(resolved):
        raise InvalidArgument(f"{what}: rootfs {requested!r} is not a directory", local=True)
    return resolved


def _clashes(path: str, protected: str) -> bool:
    # Equal, inside (except for "/", which contains everything), or containing it: an
    # rbind of a parent brings the protected tree along.
    return _inside(protected, path) or (protected != "/" and _inside(path, protected))


def _protected_paths(policy: SpecPolicy) -> set[str]:
    # Also their resolved forms, e.g. /var/run is usually a symlink to /run.
    listed = (*PROTECTED_HOST_PATHS, *policy.protected_paths, policy.bind_staging_dir)
    return {*listed, *(os.path.realpath(p) for p in listed)}


def _destination(what: str, destination: str) -> str:
    if not posixpath.isabs(destination):
        raise InvalidArgument(
            f"{what}: mount destination {destination!r} must be an absolute path", local=True
        )
    if ".." in destination.split("/"):
        raise InvalidArgument(
            f"{what}: mount destination {destination!r} must not contain '..'", local=True
        )
    if posixpath.normpath(destination) != destination or destination.startswith("//"):
        raise InvalidArgument(
            f"{what}: mount destination {destination!r} must be normalized "
            "(no '.', '//' or trailing '/')",
            local=True,
        )
    if destination == "/":
        raise InvalidArgument(f"{what}: cannot mount over the container's root", local=True)
    if any(_inside(destination, tree) for tree in _KERNEL_TREES):
        raise PermissionDenied(
            f"{what}: mount destination {destination!r} is inside /proc, /sys or /dev",
            local=True,
        )
    return destination


def _bind_mounts(what: str, requested: Sequence[MountParams], policy: SpecPolicy) -> list[Mount]:
    if not requested:
        return []
    if not policy.allowed_bind_roots:
        raise PermissionDenied(f"{what}: bind mounts are disabled by policy", local=True)
    protected = _protected_paths(policy)
    mounts: list[Mount] = []
    seen: set[str] = set()
    for entry in requested:
        destination = _destination(what, entry.destination)
        if destination in seen:
            raise InvalidArgument(
                f"{what}: mount destination {destination!r} is given twice", local=True
            )
        seen.add(destination)
        mounts.append(_bind_mount(what, entry, destination, policy, protected))
    return mounts


def _bind_mount(
    what: str, entry: MountParams, destination: str, policy: SpecPolicy, protected: set[str]
) -> Mount:
    label = f"bind mount source {entry.source!r}"
    literal = posixpath.normpath(entry.source) if posixpath.isabs(entry.source) else ""
    for path in sorted(protected):
        if literal and _clashes(literal, path):
            raise PermissionDenied(
                f"{what}: {label} is, contains or lies inside the protected host path {path}",
                local=True,
            )
    # Checked on a pinned descriptor; the path is only a placeholder until staged.
    with open_source(what, entry.source, policy.allowed_bind_roots, protected) as pinned:
        resolved = pinned.resolved
    options = ["ro" if entry.readonly else "rw", *_BIND_OPTIONS]
    return Mount(destination=destination, type="bind", source=resolved, options=options)


def stage_bind_sources(
    what: str,
    spec: Spec,
    requested: Sequence[MountParams],
    policy: SpecPolicy,
    container_id: str,
    namespace: str = "",
) -> str | None:
    """Pin every requested bind source again and point ``spec`` at staged mounts of them.

    The checks in :func:`build_container_spec` ran on descriptors since closed; these are
    the descriptors that get mounted, checked again, so what runc mounts is exactly what
    passed (see ``actors.control._binds``). Returns the staging directory (None without
    binds); the caller removes it with ``_binds.unstage`` when the container goes.

    Raises:
        PermissionDenied, InvalidArgument: as for :func:`build_container_spec`.
    """
    if not requested:
        return None
    protected = _protected_paths(policy)
    pinned: list[PinnedSource] = []
    try:
        for entry in requested:
            pinned.append(open_source(what, entry.source, policy.allowed_bind_roots, protected))
        try:
            directory, targets = stage(pinned, policy.bind_staging_dir, container_id, namespace)
        except FileNotFoundError:
            # A pinned directory was removed before the mount; nothing is left staged.
            raise InvalidArgument(
                f"{what}: a bind mount source was removed while it was being mounted",
                local=True,
            ) from None
    finally:
        for source in pinned:
            source.close()
    by_destination = {
        posixpath.normpath(entry.destination): target
        for entry, target in zip(requested, targets, strict=True)
    }
    for mount in spec.mounts:
        if mount.type == "bind" and mount.destination in by_destination:
            mount.source = by_destination[mount.destination]
    return directory
