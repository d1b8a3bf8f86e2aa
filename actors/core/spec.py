"""OCI runtime-spec messages and a builder for specs that runc 1.1 accepts.

containerd stores the container spec, exec process and resource updates as JSON inside
protobuf ``Any`` values (see the ``*_TYPE_URL`` constants). The Structs below model the
subset of runtime-spec 1.0.2 this project reads or writes. Decoding ignores fields it does
not know, so specs written by newer tools still load; encoding only emits known fields.

The builder is the mechanism, not the policy: it produces the runc defaults plus the
requested limits, and never adds hooks, devices or extra capabilities. Vetting
client-supplied mounts, namespaces and capabilities is the caller's job.
"""

from __future__ import annotations

import os
import posixpath
from typing import TYPE_CHECKING

import msgspec

from ..containerd._typeurls import PROCESS_TYPE_URL as PROCESS_TYPE_URL
from ..containerd._typeurls import RESOURCES_TYPE_URL as RESOURCES_TYPE_URL
from ..containerd._typeurls import SPEC_TYPE_URL as SPEC_TYPE_URL
from ._seccomp import LinuxSeccomp, LinuxSeccompArg, LinuxSyscall, default_seccomp_profile

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "CONTAINERD_DEFAULT_CAPABILITIES",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_MASKED_PATHS",
    "DEFAULT_NAMESPACES",
    "DEFAULT_PATH_ENV",
    "DEFAULT_READONLY_PATHS",
    "DEFAULT_RLIMIT_NOFILE",
    "HARDENED_MEMORY_LIMIT",
    "HARDENED_PIDS_LIMIT",
    "KNOWN_CAPABILITIES",
    "OCI_NAMESPACES",
    "OCI_VERSION",
    "PROCESS_TYPE_URL",
    "RESOURCES_TYPE_URL",
    "SPEC_TYPE_URL",
    "ConsoleSize",
    "Hook",
    "Hooks",
    "Linux",
    "LinuxBlockIO",
    "LinuxCPU",
    "LinuxCapabilities",
    "LinuxDevice",
    "LinuxDeviceCgroup",
    "LinuxHugepageLimit",
    "LinuxIDMapping",
    "LinuxInterfacePriority",
    "LinuxMemory",
    "LinuxNamespace",
    "LinuxNetwork",
    "LinuxPids",
    "LinuxResources",
    "LinuxSeccomp",
    "LinuxSeccompArg",
    "LinuxSyscall",
    "LinuxThrottleDevice",
    "LinuxWeightDevice",
    "Mount",
    "Process",
    "Rlimit",
    "Root",
    "Spec",
    "User",
    "build_process",
    "build_spec",
    "decode_process",
    "decode_resources",
    "decode_spec",
    "default_mounts",
    "encode_process",
    "encode_resources",
    "encode_spec",
    "exec_process_from",
]


# The version string runc 1.1 writes itself; runc only warns on others, but matching it
# keeps `runc spec` comparisons exact.
OCI_VERSION = "1.0.2-dev"

DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Exactly what `runc spec` (1.1) grants. Deliberately minimal: a root process cannot
# chown, setuid or mknod with it. Pass CONTAINERD_DEFAULT_CAPABILITIES for the broader
# Docker/containerd default when images expect it.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_AUDIT_WRITE",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
)

# The 14 capabilities Docker and containerd's default spec grant.
CONTAINERD_DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# Linux capabilities up to 5.9 (CAP_CHECKPOINT_RESTORE); used to catch typos early,
# since runc 1.1 only logs a warning for names it does not know.
KNOWN_CAPABILITIES: frozenset[str] = frozenset(
    {
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    }
)

# runtime-spec 1.0.2 namespace types ("time" arrived in 1.2, which runc 1.1 predates).
OCI_NAMESPACES: frozenset[str] = frozenset(
    {"pid", "network", "mount", "ipc", "uts", "user", "cgroup"}
)

# Same set and order as `runc spec`.
DEFAULT_NAMESPACES: tuple[str, ...] = ("pid", "network", "ipc", "uts", "mount")

DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)

DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

DEFAULT_RLIMIT_NOFILE = 1024

# What ``build_spec(hardened=True)`` (and the control plane's policy) applies when no
# limit is given. Docker sets neither; these bound a fork bomb or a leak to something the
# host survives, while leaving room for ordinary services (Podman's pids default is 2048).
HARDENED_PIDS_LIMIT = 1024
HARDENED_MEMORY_LIMIT = 512 * 1024 * 1024

_INT64_MAX = 2**63 - 1
# (uid_t)-1 means "leave unchanged" to set*id(2), so it is not a usable id.
_ID_MAX = 2**32 - 2
_WINSIZE_MAX = 2**16 - 1
# The kernel's CFS bandwidth bounds (EINVAL outside them), in microseconds.
_CFS_MIN_US = 1_000
_CFS_MAX_PERIOD_US = 1_000_000


# --- process ---------------------------------------------------------------------------


class ConsoleSize(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Initial terminal size, in character cells."""

    height: int
    width: int


class User(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Identity the process runs as."""

    # Always emitted: uid 0 must be explicit rather than an absent key.
    uid: int
    gid: int
    umask: int | None = None
    additional_gids: list[int] = msgspec.field(default_factory=list, name="additionalGids")


class LinuxCapabilities(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The five capability sets of a process."""

    bounding: list[str] = msgspec.field(default_factory=list)
    effective: list[str] = msgspec.field(default_factory=list)
    inheritable: list[str] = msgspec.field(default_factory=list)
    permitted: list[str] = msgspec.field(default_factory=list)
    ambient: list[str] = msgspec.field(default_factory=list)


class Rlimit(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A POSIX resource limit such as ``RLIMIT_NOFILE``."""

    type: str
    hard: int
    soft: int


class Process(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The container's init process, or an exec'd process."""

    terminal: bool = False
    console_size: ConsoleSize | None = msgspec.field(default=None, name="consoleSize")
    user: User
    # Required, so an empty argv is still emitted and rejected by runc rather than vanishing.
    args: list[str]
    env: list[str] = msgspec.field(default_factory=list)
    cwd: str
    capabilities: LinuxCapabilities | None = None
    rlimits: list[Rlimit] = msgspec.field(default_factory=list)
    no_new_privileges: bool = msgspec.field(default=False, name="noNewPrivileges")
    apparmor_profile: str | None = msgspec.field(default=None, name="apparmorProfile")
    oom_score_adj: int | None = msgspec.field(default=None, name="oomScoreAdj")
    selinux_label: str | None = msgspec.field(default=None, name="selinuxLabel")


# --- root, mounts, hooks ---------------------------------------------------------------


class Root(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The container's root filesystem."""

    path: str
    readonly: bool = False


class Mount(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A filesystem mounted into the container."""

    destination: str
    type: str | None = None
    source: str | None = None
    options: list[str] = msgspec.field(default_factory=list)


class Hook(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A host binary the runtime runs at a lifecycle point (as root, on the host)."""

    path: str
    args: list[str] = msgspec.field(default_factory=list)
    env: list[str] = msgspec.field(default_factory=list)
    timeout: int | None = None


class Hooks(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Lifecycle hooks; modelled so they can be inspected, never emitted by the builder."""

    prestart: list[Hook] = msgspec.field(default_factory=list)
    create_runtime: list[Hook] = msgspec.field(default_factory=list, name="createRuntime")
    create_container: list[Hook] = msgspec.field(default_factory=list, name="createContainer")
    start_container: list[Hook] = msgspec.field(default_factory=list, name="startContainer")
    poststart: list[Hook] = msgspec.field(default_factory=list)
    poststop: list[Hook] = msgspec.field(default_factory=list)


# --- linux -----------------------------------------------------------------------------


class LinuxNamespace(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A namespace to create, or to join when ``path`` is set."""

    type: str
    path: str | None = None


class LinuxIDMapping(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A user-namespace id range mapping."""

    container_id: int = msgspec.field(name="containerID")
    host_id: int = msgspec.field(name="hostID")
    size: int


class LinuxDevice(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A device node created inside the container."""

    path: str
    type: str
    major: int | None = None
    minor: int | None = None
    file_mode: int | None = msgspec.field(default=None, name="fileMode")
    uid: int | None = None
    gid: int | None = None


class LinuxDeviceCgroup(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A device-cgroup allow/deny rule; absent type/major/minor mean "all"."""

    # Always emitted: a deny rule must say allow=false explicitly.
    allow: bool
    type: str | None = None
    major: int | None = None
    minor: int | None = None
    access: str | None = None


class LinuxMemory(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Memory cgroup limits, in bytes."""

    limit: int | None = None
    reservation: int | None = None
    swap: int | None = None
    kernel: int | None = None
    kernel_tcp: int | None = msgspec.field(default=None, name="kernelTCP")
    swappiness: int | None = None
    # Tri-state on purpose: an explicit false re-enables the OOM killer on update.
    disable_oom_killer: bool | None = msgspec.field(default=None, name="disableOOMKiller")


class LinuxCPU(msgspec.Struct, kw_only=True, omit_defaults=True):
    """CPU cgroup settings (CFS times in microseconds)."""

    shares: int | None = None
    quota: int | None = None
    period: int | None = None
    realtime_runtime: int | None = msgspec.field(default=None, name="realtimeRuntime")
    realtime_period: int | None = msgspec.field(default=None, name="realtimePeriod")
    cpus: str | None = None
    mems: str | None = None


class LinuxPids(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Maximum number of tasks in the cgroup."""

    limit: int


class LinuxWeightDevice(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Per-device block-IO weight."""

    major: int
    minor: int
    weight: int | None = None
    leaf_weight: int | None = msgspec.field(default=None, name="leafWeight")


class LinuxThrottleDevice(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Per-device block-IO rate limit."""

    major: int
    minor: int
    rate: int


class LinuxBlockIO(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Block-IO cgroup settings."""

    weight: int | None = None
    leaf_weight: int | None = msgspec.field(default=None, name="leafWeight")
    weight_device: list[LinuxWeightDevice] = msgspec.field(
        default_factory=list, name="weightDevice"
    )
    throttle_read_bps_device: list[LinuxThrottleDevice] = msgspec.field(
        default_factory=list, name="throttleReadBpsDevice"
    )
    throttle_write_bps_device: list[LinuxThrottleDevice] = msgspec.field(
        default_factory=list, name="throttleWriteBpsDevice"
    )
    throttle_read_iops_device: list[LinuxThrottleDevice] = msgspec.field(
        default_factory=list, name="throttleReadIOPSDevice"
    )
    throttle_write_iops_device: list[LinuxThrottleDevice] = msgspec.field(
        default_factory=list, name="throttleWriteIOPSDevice"
    )


class LinuxHugepageLimit(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Hugetlb limit for one page size (e.g. "2MB")."""

    page_size: str = msgspec.field(name="pageSize")
    limit: int


class LinuxInterfacePriority(msgspec.Struct, kw_only=True, omit_defaults=True):
    """net_prio priority for one interface."""

    name: str
    priority: int


class LinuxNetwork(msgspec.Struct, kw_only=True, omit_defaults=True):
    """net_cls / net_prio settings."""

    class_id: int | None = msgspec.field(default=None, name="classID")
    priorities: list[LinuxInterfacePriority] = msgspec.field(default_factory=list)


class LinuxResources(msgspec.Struct, kw_only=True, omit_defaults=True):
    """cgroup resources; also the payload of a containerd Update call."""

    devices: list[LinuxDeviceCgroup] = msgspec.field(default_factory=list)
    memory: LinuxMemory | None = None
    cpu: LinuxCPU | None = None
    pids: LinuxPids | None = None
    block_io: LinuxBlockIO | None = msgspec.field(default=None, name="blockIO")
    hugepage_limits: list[LinuxHugepageLimit] = msgspec.field(
        default_factory=list, name="hugepageLimits"
    )
    network: LinuxNetwork | None = None
    # cgroup v2 key/value files, for hosts where the typed fields fall short.
    unified: dict[str, str] = msgspec.field(default_factory=dict)


class Linux(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Linux-specific container configuration."""

    uid_mappings: list[LinuxIDMapping] = msgspec.field(default_factory=list, name="uidMappings")
    gid_mappings: list[LinuxIDMapping] = msgspec.field(default_factory=list, name="gidMappings")
    sysctl: dict[str, str] = msgspec.field(default_factory=dict)
    resources: LinuxResources | None = None
    cgroups_path: str | None = msgspec.field(default=None, name="cgroupsPath")
    namespaces: list[LinuxNamespace] = msgspec.field(default_factory=list)
    devices: list[LinuxDevice] = msgspec.field(default_factory=list)
    seccomp: LinuxSeccomp | None = None
    rootfs_propagation: str | None = msgspec.field(default=None, name="rootfsPropagation")
    masked_paths: list[str] = msgspec.field(default_factory=list, name="maskedPaths")
    readonly_paths: list[str] = msgspec.field(default_factory=list, name="readonlyPaths")


class Spec(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A complete OCI runtime configuration (``config.json``)."""

    oci_version: str = msgspec.field(name="ociVersion")
    process: Process | None = None
    root: Root | None = None
    hostname: str | None = None
    mounts: list[Mount] = msgspec.field(default_factory=list)
    hooks: Hooks | None = None
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    linux: Linux | None = None


# --- codecs ----------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_spec_decoder = msgspec.json.Decoder(Spec)
_process_decoder = msgspec.json.Decoder(Process)
_resources_decoder = msgspec.json.Decoder(LinuxResources)


def encode_spec(spec: Spec) -> bytes:
    """Encode a spec as the JSON containerd stores under ``SPEC_TYPE_URL``."""
    return _encoder.encode(spec)


def decode_spec(data: bytes) -> Spec:
    """Decode spec JSON, ignoring fields this module does not model.

    Raises:
        msgspec.ValidationError: A known field has the wrong type or is missing.
        msgspec.DecodeError: ``data`` is not JSON.
    """
    return _spec_decoder.decode(data)


def encode_process(process: Process) -> bytes:
    """Encode an exec process as the JSON sent under ``PROCESS_TYPE_URL``."""
    return _encoder.encode(process)


def decode_process(data: bytes) -> Process:
    """Decode process JSON, ignoring unknown fields."""
    return _process_decoder.decode(data)


def encode_resources(resources: LinuxResources) -> bytes:
    """Encode a resource update as the JSON sent under ``RESOURCES_TYPE_URL``."""
    return _encoder.encode(resources)


def decode_resources(data: bytes) -> LinuxResources:
    """Decode resources JSON, ignoring unknown fields."""
    return _resources_decoder.decode(data)


# --- validation helpers ----------------------------------------------------------------


def _no_nul(what: str, value: str) -> str:
    # Go and the kernel both truncate at NUL, so such a string would mean something else.
    if "\x00" in value:
        raise ValueError(f"{what} must not contain a NUL byte: {value!r}")
    return value


def _str_list(what: str, values: Iterable[str]) -> list[str]:
    # A bare str is a Sequence[str] too; "sh" would silently become ["s", "h"].
    if isinstance(values, str | bytes):
        raise TypeError(f"{what} must be a sequence of strings, not a single string")
    return [_no_nul(what, v) for v in values]


def _check_args(args: Sequence[str]) -> list[str]:
    argv = _str_list("args", args)
    if not argv:
        raise ValueError("args must not be empty")
    if not argv[0]:
        raise ValueError("args[0] (the program) must not be an empty string")
    return argv


def _check_cwd(cwd: str) -> str:
    _no_nul("cwd", cwd)
    if not posixpath.isabs(cwd):
        raise ValueError(f"cwd must be an absolute path, got {cwd!r}")
    return cwd


def _check_env(env: Iterable[str]) -> list[str]:
    entries = _str_list("env", env)
    for entry in entries:
        key, sep, _ = entry.partition("=")
        if not sep or not key:
            raise ValueError(f"env entries must look like KEY=VALUE, got {entry!r}")
    return entries


def _has_key(env: Sequence[str], key: str) -> bool:
    prefix = key + "="
    return any(entry.startswith(prefix) for entry in env)


def _complete_env(env: list[str], terminal: bool) -> list[str]:
    # runc resolves a bare args[0] through the process's own PATH, so never leave it unset.
    if not _has_key(env, "PATH"):
        env.append(DEFAULT_PATH_ENV)
    if terminal and not _has_key(env, "TERM"):
        env.append("TERM=xterm")
    return env


def _merge_env(base: Sequence[str], overrides: Sequence[str]) -> list[str]:
    index = {entry.partition("=")[0]: i for i, entry in enumerate(base)}
    merged = list(base)
    for entry in overrides:
        key = entry.partition("=")[0]
        if key in index:
            merged[index[key]] = entry
        else:
            index[key] = len(merged)
            merged.append(entry)
    return merged


def _check_user(user: tuple[int, int]) -> User:
    uid, gid = user
    for name, value in (("uid", uid), ("gid", gid)):
        if not 0 <= value <= _ID_MAX:
            raise ValueError(f"{name} must be between 0 and {_ID_MAX}, got {value}")
    return User(uid=uid, gid=gid)


def _console_size(size: tuple[int, int] | None, terminal: bool) -> ConsoleSize | None:
    if size is None:
        return None
    if not terminal:
        raise ValueError("console_size is only meaningful with terminal=True")
    height, width = size
    if not (0 < height <= _WINSIZE_MAX and 0 < width <= _WINSIZE_MAX):
        raise ValueError(
            f"console_size must be (height, width) with each in 1..{_WINSIZE_MAX}, got {size}"
        )
    return ConsoleSize(height=height, width=width)


def _capabilities(names: Sequence[str] | None) -> LinuxCapabilities:
    caps = list(DEFAULT_CAPABILITIES) if names is None else _str_list("capabilities", names)
    unknown = sorted(set(caps) - KNOWN_CAPABILITIES)
    if unknown:
        raise ValueError(f"unknown capabilities: {', '.join(unknown)}")
    caps = list(dict.fromkeys(caps))
    # Inheritable and ambient stay empty: ambient would hand these caps to a non-root
    # user across execve, which neither Docker nor containerd does by default.
    return LinuxCapabilities(bounding=caps, effective=list(caps), permitted=list(caps))


def _positive(name: str, value: int | None, low: int = 1, high: int = _INT64_MAX) -> None:
    if value is not None and not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


# --- builders --------------------------------------------------------------------------


def default_mounts() -> list[Mount]:
    """Return fresh copies of the mounts ``runc spec`` sets up (proc, /dev, sysfs, ...)."""
    return [
        Mount(destination="/proc", type="proc", source="proc"),
        Mount(
            destination="/dev",
            type="tmpfs",
            source="tmpfs",
            options=["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        Mount(
            destination="/dev/pts",
            type="devpts",
            source="devpts",
            options=["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        Mount(
            destination="/dev/shm",
            type="tmpfs",
            source="shm",
            options=["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        Mount(
            destination="/dev/mqueue",
            type="mqueue",
            source="mqueue",
            options=["nosuid", "noexec", "nodev"],
        ),
        Mount(
            destination="/sys",
            type="sysfs",
            source="sysfs",
            options=["nosuid", "noexec", "nodev", "ro"],
        ),
        Mount(
            destination="/sys/fs/cgroup",
            type="cgroup",
            source="cgroup",
            options=["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]


def build_process(
    args: Sequence[str],
    *,
    env: Sequence[str] | None = None,
    cwd: str = "/",
    user: tuple[int, int] = (0, 0),
    terminal: bool = False,
    console_size: tuple[int, int] | None = None,
    capabilities: Sequence[str] | None = None,
) -> Process:
    """Build a process with runc's defaults (capabilities, RLIMIT_NOFILE, no_new_privs).

    Args:
        args: argv; ``args[0]`` is looked up in the process's PATH.
        env: ``KEY=VALUE`` entries. PATH is added when missing, and TERM=xterm too
            when ``terminal`` is set.
        cwd: Absolute working directory inside the container.
        user: ``(uid, gid)``.
        terminal: Allocate a pty; must match the task or exec request's terminal flag.
        console_size: Initial ``(height, width)``; needs ``terminal``.
        capabilities: Replaces ``DEFAULT_CAPABILITIES`` in the bounding, effective and
            permitted sets.

    Raises:
        ValueError: An argument is empty, malformed or out of range.
        TypeError: ``args`` or ``env`` is a single string.
    """
    return Process(
        terminal=terminal,
        console_size=_console_size(console_size, terminal),
        user=_check_user(user),
        args=_check_args(args),
        env=_complete_env(_check_env(env or ()), terminal),
        cwd=_check_cwd(cwd),
        capabilities=_capabilities(capabilities),
        rlimits=[
            Rlimit(type="RLIMIT_NOFILE", hard=DEFAULT_RLIMIT_NOFILE, soft=DEFAULT_RLIMIT_NOFILE)
        ],
        no_new_privileges=True,
    )


def exec_process_from(
    spec: Spec,
    args: Sequence[str],
    *,
    terminal: bool = False,
    env: Sequence[str] | None = None,
    cwd: str | None = None,
    console_size: tuple[int, int] | None = None,
) -> Process:
    """Derive an exec process from a container spec's init process.

    Everything the init process has (user, capabilities, rlimits, no_new_privs, AppArmor
    and SELinux labels, env) is copied, so an exec is confined exactly like init; only
    argv, terminal, console size and optionally cwd and env change.

    Args:
        spec: The container's spec; it is not modified.
        args: argv for the new process.
        terminal: Allocate a pty for the exec.
        env: Entries that override (by key) or extend the container's env.
        cwd: Working directory; defaults to the container's.
        console_size: Initial ``(height, width)``; needs ``terminal``.

    Raises:
        ValueError: ``spec`` has no process, or an argument is invalid.
    """
    if spec.process is None:
        raise ValueError("spec has no process to derive an exec process from")
    argv = _check_args(args)
    size = _console_size(console_size, terminal)
    overrides = _check_env(env or ())
    # A JSON round trip is a cheap deep copy, so the result never aliases the spec.
    process = decode_process(encode_process(spec.process))
    process.args = argv
    process.terminal = terminal
    process.console_size = size
    process.env = _complete_env(_merge_env(process.env, overrides), terminal)
    if cwd is not None:
        process.cwd = _check_cwd(cwd)
    return process


def build_spec(
    rootfs: str | os.PathLike[str],
    args: Sequence[str],
    *,
    env: Sequence[str] | None = None,
    cwd: str = "/",
    user: tuple[int, int] = (0, 0),
    terminal: bool = False,
    console_size: tuple[int, int] | None = None,
    hostname: str | None = None,
    readonly_rootfs: bool = False,
    memory_limit: int | None = None,
    pids_limit: int | None = None,
    cpu_shares: int | None = None,
    cpu_quota: int | None = None,
    cpu_period: int | None = None,
    namespaces: Sequence[str] = DEFAULT_NAMESPACES,
    cgroups_path: str | None = None,
    annotations: Mapping[str, str] | None = None,
    extra_mounts: Sequence[Mount] = (),
    capabilities: Sequence[str] | None = None,
    seccomp: LinuxSeccomp | None = None,
    hardened: bool = False,
) -> Spec:
    """Build a container spec equivalent to ``runc spec`` plus the requested settings.

    Args:
        rootfs: Existing root filesystem directory; stored as an absolute path.
        args: argv of the init process.
        env: See :func:`build_process`.
        cwd: Absolute working directory.
        user: ``(uid, gid)`` of the init process.
        terminal: Allocate a pty for the init process.
        console_size: Initial ``(height, width)``; needs ``terminal``.
        hostname: Needs the "uts" namespace.
        readonly_rootfs: Mount the root filesystem read-only.
        memory_limit: Bytes.
        pids_limit: Maximum number of tasks.
        cpu_shares: Relative CPU weight.
        cpu_quota: CFS quota in microseconds per ``cpu_period``.
        cpu_period: CFS period in microseconds (kernel default 100000).
        namespaces: Namespace types to create; "mount" is required.
        cgroups_path: e.g. "/containerd-actors/<ns>/<id>". None lets runc derive one
            from the container id; set it explicitly to keep containers grouped and
            findable, which matters on cgroup v1 hosts.
        annotations: Free-form string metadata.
        extra_mounts: Appended after the defaults; a default mount with the same
            destination is dropped. Not vetted here: callers must apply their bind-mount
            policy first.
        capabilities: See :func:`build_process`.
        seccomp: A seccomp profile; copied into the spec.
        hardened: Apply the hardened defaults: the project's default seccomp profile
            (``actors.default_seccomp_profile`` for the container's capabilities) unless
            ``seccomp`` is given, and ``HARDENED_PIDS_LIMIT`` and ``HARDENED_MEMORY_LIMIT``
            where ``pids_limit`` or ``memory_limit`` is None.

    Raises:
        ValueError: An argument is empty, malformed, out of range or inconsistent.
        TypeError: ``args``, ``env`` or ``namespaces`` is a single string.
    """
    if hardened:
        pids_limit = HARDENED_PIDS_LIMIT if pids_limit is None else pids_limit
        memory_limit = HARDENED_MEMORY_LIMIT if memory_limit is None else memory_limit
    process = build_process(
        args,
        env=env,
        cwd=cwd,
        user=user,
        terminal=terminal,
        console_size=console_size,
        capabilities=capabilities,
    )

    root_path = os.path.abspath(os.fspath(rootfs))
    _no_nul("rootfs", root_path)
    if not os.path.isdir(root_path):
        raise ValueError(f"rootfs must be an existing directory: {root_path}")

    ns_types = _str_list("namespaces", namespaces)
    unknown = sorted(set(ns_types) - OCI_NAMESPACES)
    if unknown:
        raise ValueError(
            f"unknown namespace types {unknown}; expected some of {sorted(OCI_NAMESPACES)}"
        )
    if len(set(ns_types)) != len(ns_types):
        raise ValueError(f"duplicate namespace types in {ns_types}")
    # runc refuses masked/readonly paths (which we always set) without a private mount ns.
    if "mount" not in ns_types:
        raise ValueError("the 'mount' namespace is required")

    if hostname is not None:
        _no_nul("hostname", hostname)
        if not 0 < len(hostname) <= 64:
            raise ValueError(f"hostname must be 1 to 64 characters, got {hostname!r}")
        if "uts" not in ns_types:
            raise ValueError("hostname needs the 'uts' namespace")

    _positive("memory_limit", memory_limit)
    _positive("pids_limit", pids_limit)
    _positive("cpu_shares", cpu_shares)
    _positive("cpu_quota", cpu_quota, low=_CFS_MIN_US)
    _positive("cpu_period", cpu_period, low=_CFS_MIN_US, high=_CFS_MAX_PERIOD_US)

    if cgroups_path is not None:
        _no_nul("cgroups_path", cgroups_path)
        if not cgroups_path:
            raise ValueError("cgroups_path must not be empty; pass None to let runc choose")

    extras: list[Mount] = []
    for mount in extra_mounts:
        _no_nul("mount destination", mount.destination)
        if not posixpath.isabs(mount.destination):
            raise ValueError(f"mount destination must be absolute, got {mount.destination!r}")
        # Copy so later edits to the caller's Mount cannot change this spec.
        extras.append(msgspec.structs.replace(mount, options=list(mount.options)))
    overridden = {posixpath.normpath(m.destination) for m in extras}
    mounts = [m for m in default_mounts() if m.destination not in overridden] + extras

    resources = LinuxResources(devices=[LinuxDeviceCgroup(allow=False, access="rwm")])
    if memory_limit is not None:
        resources.memory = LinuxMemory(limit=memory_limit)
    if pids_limit is not None:
        resources.pids = LinuxPids(limit=pids_limit)
    if cpu_shares is not None or cpu_quota is not None or cpu_period is not None:
        resources.cpu = LinuxCPU(shares=cpu_shares, quota=cpu_quota, period=cpu_period)

    if seccomp is not None:
        # A round trip is a deep copy: later edits to the caller's profile cannot leak in.
        seccomp = msgspec.json.decode(_encoder.encode(seccomp), type=LinuxSeccomp)
    elif hardened:
        # Imported here: the profile module builds on this one's Structs.

        caps = process.capabilities
        seccomp = default_seccomp_profile(caps.bounding if caps is not None else ())

    return Spec(
        oci_version=OCI_VERSION,
        process=process,
        root=Root(path=root_path, readonly=readonly_rootfs),
        hostname=hostname,
        mounts=mounts,
        annotations=dict(annotations or {}),
        linux=Linux(
            resources=resources,
            cgroups_path=cgroups_path,
            namespaces=[LinuxNamespace(type=t) for t in ns_types],
            masked_paths=list(DEFAULT_MASKED_PATHS),
            readonly_paths=list(DEFAULT_READONLY_PATHS),
            seccomp=seccomp,
        ),
    )
