"""Spec policy: control-plane intents become OCI specs only through the allow-list."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from actors import errors
from actors.control._labels import USER_LABEL_PREFIX, store_user_labels, user_labels
from actors.control._policy import SpecPolicy, build_container_spec, build_exec_process
from actors.control._protocol import ContainerCreateParams, MountParams, ProcessExecParams
from actors.core._seccomp import default_seccomp_profile
from actors.core.spec import (
    DEFAULT_CAPABILITIES,
    DEFAULT_NAMESPACES,
    HARDENED_MEMORY_LIMIT,
    HARDENED_PIDS_LIMIT,
)

if TYPE_CHECKING:
    from pathlib import Path

    from actors.core.spec import Spec

NS = "ns1"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    path = tmp_path / "rootfs" / "busybox"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    (path / "sub").mkdir(parents=True)
    (path / "file.txt").write_text("hello")
    return path


@pytest.fixture
def policy(tmp_path: Path, rootfs: Path, data: Path) -> SpecPolicy:
    return SpecPolicy(
        default_rootfs=str(rootfs),
        allowed_rootfs_roots=(str(tmp_path / "rootfs"),),
        allowed_bind_roots=(str(data),),
        allow_extra_capabilities=frozenset({"CAP_NET_ADMIN"}),
        max_memory_limit=1 << 30,
    )


def create(**fields: Any) -> ContainerCreateParams:
    # Through msgspec's validation, as a decoded request would be.
    return msgspec.convert({"id": "c1", "args": ["sh"], **fields}, ContainerCreateParams)


def mount(source: str | Path, destination: str = "/mnt", **extra: Any) -> dict[str, Any]:
    return {"source": str(source), "destination": destination, **extra}


def test_valid_request_builds_a_spec(policy: SpecPolicy, rootfs: Path, data: Path) -> None:
    params = create(
        rootfs=str(rootfs),
        args=["sh", "-c", "echo hi"],
        env=["A=1"],
        cwd="/tmp",
        user={"uid": 1000, "gid": 100},
        hostname="web",
        memory_limit=64 << 20,
        pids_limit=50,
        cpu_shares=512,
        readonly_rootfs=True,
        mounts=[mount(data, "/data"), mount(data / "file.txt", "/etc/app.conf", readonly=False)],
        capabilities_add=["net_admin", "CAP_KILL"],
        namespaces=["mount", "pid", "uts", "ipc", "network", "cgroup"],
    )
    spec = build_container_spec(params, policy, namespace=NS)
    assert spec.process is not None
    assert spec.process.args == ["sh", "-c", "echo hi"]
    assert spec.process.env[0] == "A=1"
    assert any(entry.startswith("PATH=") for entry in spec.process.env)
    assert (spec.process.cwd, spec.process.user.uid, spec.process.user.gid) == ("/tmp", 1000, 100)
    assert spec.process.capabilities is not None
    assert spec.process.capabilities.bounding == [*DEFAULT_CAPABILITIES, "CAP_NET_ADMIN"]
    assert spec.root is not None
    assert (spec.root.path, spec.root.readonly) == (os.path.realpath(rootfs), True)
    assert spec.hostname == "web"
    assert spec.hooks is None
    linux = spec.linux
    assert linux is not None
    assert linux.cgroups_path == f"/{NS}/c1"
    assert [ns.type for ns in linux.namespaces] == [*DEFAULT_NAMESPACES, "cgroup"]
    assert all(ns.path is None for ns in linux.namespaces)
    resources = linux.resources
    assert resources is not None
    assert resources.memory is not None
    assert resources.memory.limit == 64 << 20
    assert resources.pids is not None
    assert resources.pids.limit == 50
    assert resources.cpu is not None
    assert resources.cpu.shares == 512
    binds = [m for m in spec.mounts if m.type == "bind"]
    assert [(m.destination, m.source, m.options) for m in binds] == [
        ("/data", os.path.realpath(data), ["ro", "nosuid", "nodev", "rbind"]),
        (
            "/etc/app.conf",
            os.path.realpath(data / "file.txt"),
            ["rw", "nosuid", "nodev", "rbind"],
        ),
    ]


def test_defaults(policy: SpecPolicy, rootfs: Path) -> None:
    spec = build_container_spec(create(), policy, namespace=NS)
    assert spec.root is not None
    assert spec.root.path == os.path.realpath(rootfs)
    assert spec.process is not None
    assert spec.process.capabilities is not None
    assert spec.process.capabilities.bounding == list(DEFAULT_CAPABILITIES)
    assert spec.linux is not None
    assert [ns.type for ns in spec.linux.namespaces] == list(DEFAULT_NAMESPACES)
    # The hardened defaults apply when the request sets no limit (below the 1 GiB ceiling).
    assert spec.linux.resources is not None
    assert spec.linux.resources.memory is not None
    assert spec.linux.resources.memory.limit == HARDENED_MEMORY_LIMIT
    assert spec.linux.resources.pids is not None
    assert spec.linux.resources.pids.limit == HARDENED_PIDS_LIMIT
    assert spec.linux.seccomp == default_seccomp_profile(DEFAULT_CAPABILITIES)
    assert not [m for m in spec.mounts if m.type == "bind"]


@pytest.mark.parametrize(
    ("fields", "error", "needle"),
    [
        ({"privileged": True}, errors.PermissionDenied, "privileged containers are not allowed"),
        ({"hooks": {"prestart": [{"path": "/bin/sh"}]}}, errors.PermissionDenied, "hooks"),
        ({"hooks": {}}, errors.PermissionDenied, "hooks"),
        (
            {"namespaces": ["network", "ipc", "uts", "mount"]},
            errors.PermissionDenied,
            "sharing a host namespace is not allowed (missing pid)",
        ),
        (
            {"namespaces": ["pid", "ipc", "uts", "mount"]},
            errors.PermissionDenied,
            "missing network",
        ),
        ({"namespaces": []}, errors.PermissionDenied, "missing ipc, mount, network, pid, uts"),
        (
            {"namespaces": [*DEFAULT_NAMESPACES, "user"]},
            errors.InvalidArgument,
            "'user' namespace needs uid/gid mappings",
        ),
        (
            {"namespaces": [*DEFAULT_NAMESPACES, "pid"]},
            errors.InvalidArgument,
            "duplicate",
        ),
        (
            {"capabilities_add": ["SYS_ADMIN", "CAP_NET_RAW"]},
            errors.PermissionDenied,
            "capabilities not allowed by policy: CAP_SYS_ADMIN, CAP_NET_RAW",
        ),
        ({"capabilities_add": ["ALL"]}, errors.PermissionDenied, "not allowed by policy: ALL"),
        ({"capabilities_add": ["CAP_FLY"]}, errors.InvalidArgument, "unknown capability"),
        ({"memory_limit": 2 << 30}, errors.PermissionDenied, "exceeds the policy maximum"),
        ({"args": [""]}, errors.InvalidArgument, "args[0]"),
    ],
)
def test_denials(
    policy: SpecPolicy, fields: dict[str, Any], error: type[Exception], needle: str
) -> None:
    with pytest.raises(error) as info:
        build_container_spec(create(**fields), policy, namespace=NS)
    assert needle in str(info.value)
    assert "container 'c1'" in str(info.value)
    assert isinstance(info.value, errors.ContainerdError)
    assert info.value.local


def test_terminal_can_be_denied(policy: SpecPolicy) -> None:
    strict = msgspec.structs.replace(policy, allow_terminal=False)
    with pytest.raises(errors.PermissionDenied, match="terminals are not allowed"):
        build_container_spec(create(terminal=True), strict, namespace=NS)
    assert build_container_spec(create(terminal=True), policy, namespace=NS).process is not None


def test_ids_are_validated(policy: SpecPolicy) -> None:
    # Constructed directly, so msgspec's field constraints never ran.
    for bad in ("../x", "a/b", "", "a" * 77, "x\x00"):
        params = ContainerCreateParams(id=bad, args=["sh"])
        with pytest.raises(errors.InvalidArgument, match="container id"):
            build_container_spec(params, policy, namespace=NS)
    with pytest.raises(errors.InvalidArgument, match="namespace"):
        build_container_spec(create(), policy, namespace="../ns")


# --- rootfs ---------------------------------------------------------------------------------


def test_rootfs_outside_the_allowed_roots(policy: SpecPolicy, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(errors.PermissionDenied, match="outside the allowed rootfs"):
        build_container_spec(create(rootfs=str(elsewhere)), policy, namespace=NS)
    with pytest.raises(errors.PermissionDenied, match="outside the allowed rootfs"):
        build_container_spec(create(rootfs="/"), policy, namespace=NS)


def test_rootfs_symlink_escaping_the_roots(policy: SpecPolicy, tmp_path: Path) -> None:
    link = tmp_path / "rootfs" / "sneaky"
    link.symlink_to("/")
    with pytest.raises(errors.PermissionDenied, match="outside the allowed rootfs") as info:
        build_container_spec(create(rootfs=str(link)), policy, namespace=NS)
    assert "resolves" not in str(info.value)
    dotdot = str(tmp_path / "rootfs" / ".." / "data")
    with pytest.raises(errors.PermissionDenied, match="outside the allowed rootfs"):
        build_container_spec(create(rootfs=dotdot), policy, namespace=NS)


def test_rootfs_never_the_host_root(policy: SpecPolicy) -> None:
    lax = msgspec.structs.replace(policy, allowed_rootfs_roots=("/",))
    for path in ("/", "/proc", "/sys/fs"):
        with pytest.raises(errors.PermissionDenied, match="protected host path"):
            build_container_spec(create(rootfs=path), lax, namespace=NS)


def test_rootfs_must_be_a_directory(policy: SpecPolicy, rootfs: Path) -> None:
    (rootfs.parent / "file").write_text("x")
    for path in (rootfs.parent / "file", rootfs.parent / "missing"):
        with pytest.raises(errors.InvalidArgument, match="is not a directory"):
            build_container_spec(create(rootfs=str(path)), policy, namespace=NS)


def test_missing_default_rootfs_does_not_leak_its_path(policy: SpecPolicy, tmp_path: Path) -> None:
    broken = msgspec.structs.replace(policy, default_rootfs=str(tmp_path / "gone"))
    with pytest.raises(errors.FailedPrecondition) as info:
        build_container_spec(create(), broken, namespace=NS)
    assert str(tmp_path) not in str(info.value)


# --- bind mounts ----------------------------------------------------------------------------


@pytest.fixture
def lax(policy: SpecPolicy) -> SpecPolicy:
    """A policy that allows binds from anywhere, so only the protected paths stop them."""
    return msgspec.structs.replace(policy, allowed_bind_roots=("/",))


@pytest.mark.parametrize(
    "source", ["/", "/etc", "/etc/passwd", "/proc/self", "/var", "/var/lib/containerd", "/run"]
)
def test_protected_host_paths(lax: SpecPolicy, source: str) -> None:
    with pytest.raises(errors.PermissionDenied, match="protected host path") as info:
        build_container_spec(create(mounts=[mount(source)]), lax, namespace=NS)
    assert f"bind mount source {source!r}" in str(info.value)


def test_engine_sockets_are_protected(lax: SpecPolicy) -> None:
    for source in ("/run/containerd/containerd.sock", "/var/run/docker.sock"):
        with pytest.raises(errors.PermissionDenied, match="protected host path"):
            build_container_spec(create(mounts=[mount(source)]), lax, namespace=NS)


def test_symlinks_in_bind_sources_are_refused(
    policy: SpecPolicy, lax: SpecPolicy, data: Path
) -> None:
    """Bind sources are walked without following links (a container could swap one in
    between our check and runc's mount); the message does not say where a link points."""
    inner = data / "target"
    inner.mkdir()
    cases = {"root": "/", "etc": "/etc", "inner-link": str(inner)}
    for name, target in cases.items():
        (data / name).symlink_to(target)
    for chosen in (policy, lax):
        for source in (data / "root", data / "etc" / "shadow", data / "inner-link"):
            with pytest.raises(errors.PermissionDenied, match="symbolic link") as info:
                build_container_spec(create(mounts=[mount(source)]), chosen, namespace=NS)
            message = str(info.value).replace(repr(str(source)), "")
            assert "/etc" not in message
            assert str(inner) not in message


def test_bind_outside_allowed_roots(policy: SpecPolicy, tmp_path: Path, data: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for source in (other, data.parent, f"{data}/../other", f"{data}-sibling"):
        with pytest.raises(errors.PermissionDenied, match="outside the allowed host directories"):
            build_container_spec(create(mounts=[mount(source)]), policy, namespace=NS)


def test_binds_disabled_by_default(policy: SpecPolicy, data: Path) -> None:
    closed = msgspec.structs.replace(policy, allowed_bind_roots=())
    with pytest.raises(errors.PermissionDenied, match="bind mounts are disabled"):
        build_container_spec(create(mounts=[mount(data)]), closed, namespace=NS)


def test_socket_source(policy: SpecPolicy, data: Path) -> None:
    path = data / "s.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        with pytest.raises(errors.PermissionDenied, match="is a unix socket"):
            build_container_spec(create(mounts=[mount(path)]), policy, namespace=NS)
    finally:
        server.close()


def test_fifo_and_hard_links_are_refused(policy: SpecPolicy, data: Path) -> None:
    os.mkfifo(data / "fifo")
    with pytest.raises(errors.PermissionDenied, match="not a directory or regular file"):
        build_container_spec(create(mounts=[mount(data / "fifo")]), policy, namespace=NS)
    os.link(data / "file.txt", data / "alias.txt")
    with pytest.raises(errors.PermissionDenied, match="hard links"):
        build_container_spec(create(mounts=[mount(data / "alias.txt")]), policy, namespace=NS)


def test_missing_source(policy: SpecPolicy, data: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="does not exist"):
        build_container_spec(create(mounts=[mount(data / "nope")]), policy, namespace=NS)


@pytest.mark.parametrize(
    ("destination", "error", "needle"),
    [
        ("data", errors.InvalidArgument, "must be an absolute path"),
        ("", errors.InvalidArgument, "must be an absolute path"),
        ("/data/../etc", errors.InvalidArgument, "must not contain '..'"),
        ("/../etc", errors.InvalidArgument, "must not contain '..'"),
        ("/data/./x", errors.InvalidArgument, "normalized"),
        ("/data/", errors.InvalidArgument, "normalized"),
        ("//data", errors.InvalidArgument, "normalized"),
        ("/a//b", errors.InvalidArgument, "normalized"),
        ("/", errors.InvalidArgument, "container's root"),
        ("/proc/sys", errors.PermissionDenied, "inside /proc, /sys or /dev"),
        ("/sys", errors.PermissionDenied, "inside /proc, /sys or /dev"),
        ("/dev/shm", errors.PermissionDenied, "inside /proc, /sys or /dev"),
    ],
)
def test_destinations(
    policy: SpecPolicy, data: Path, destination: str, error: type[Exception], needle: str
) -> None:
    # Constructed directly: the protocol already refuses relative paths, the policy must too.
    params = ContainerCreateParams(
        id="c1", args=["sh"], mounts=[MountParams(source=str(data), destination=destination)]
    )
    with pytest.raises(error) as info:
        build_container_spec(params, policy, namespace=NS)
    assert needle in str(info.value)


def test_duplicate_destinations(policy: SpecPolicy, data: Path) -> None:
    params = create(mounts=[mount(data, "/x"), mount(data / "sub", "/x")])
    with pytest.raises(errors.InvalidArgument, match="given twice"):
        build_container_spec(params, policy, namespace=NS)


def test_relative_source_constructed_directly(policy: SpecPolicy) -> None:
    params = ContainerCreateParams(
        id="c1", args=["sh"], mounts=[MountParams(source="data", destination="/x")]
    )
    with pytest.raises(errors.InvalidArgument, match="must be an absolute path"):
        build_container_spec(params, policy, namespace=NS)


# --- exec and the policy itself -------------------------------------------------------------


@pytest.fixture
def container_spec(policy: SpecPolicy) -> Spec:
    return build_container_spec(
        create(env=["A=1"], user={"uid": 7, "gid": 8}, cwd="/srv"), policy, namespace=NS
    )


def test_exec_process_inherits_the_container(policy: SpecPolicy, container_spec: Spec) -> None:
    params = ProcessExecParams(id="c1", exec_id="e1", args=["ls", "-l"], env=["A=2", "B=3"])
    process = build_exec_process(params, container_spec, policy=policy)
    assert process.args == ["ls", "-l"]
    assert process.env[:2] == [
        "A=2",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]
    assert "B=3" in process.env
    assert (process.user.uid, process.user.gid, process.cwd) == (7, 8, "/srv")
    assert container_spec.process is not None
    assert process.capabilities == container_spec.process.capabilities
    assert process.no_new_privileges


def test_exec_process_checks(policy: SpecPolicy, container_spec: Spec) -> None:
    with pytest.raises(errors.InvalidArgument, match="exec id"):
        build_exec_process(ProcessExecParams(id="c1", exec_id="../e", args=["ls"]), container_spec)
    strict = msgspec.structs.replace(policy, allow_terminal=False)
    tty = ProcessExecParams(id="c1", exec_id="e1", args=["sh"], terminal=True)
    with pytest.raises(errors.PermissionDenied, match="terminals are not allowed"):
        build_exec_process(tty, container_spec, policy=strict)
    assert build_exec_process(tty, container_spec).terminal
    with pytest.raises(errors.InvalidArgument, match="args"):
        build_exec_process(ProcessExecParams(id="c1", exec_id="e1", args=[]), container_spec)


def test_policy_validates_itself(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="absolute"):
        SpecPolicy(default_rootfs="rootfs", allowed_rootfs_roots=())
    with pytest.raises(ValueError, match="absolute"):
        SpecPolicy(default_rootfs="/r", allowed_rootfs_roots=("/r",), allowed_bind_roots=("x",))
    with pytest.raises(ValueError, match="unknown capabilities"):
        SpecPolicy(
            default_rootfs="/r",
            allowed_rootfs_roots=("/r",),
            allow_extra_capabilities=frozenset({"NET_ADMIN"}),
        )
    decoded = msgspec.json.decode(
        b'{"default_rootfs": "/r", "allowed_rootfs_roots": ["/r"], '
        b'"allow_extra_capabilities": ["CAP_NET_ADMIN"]}',
        type=SpecPolicy,
    )
    assert decoded.allow_extra_capabilities == frozenset({"CAP_NET_ADMIN"})


def test_a_request_never_yields_annotations(policy: SpecPolicy, data: Path) -> None:
    # Annotations steer the shim (io.containerd.runc.v2.group) and runc (org.systemd.*,
    # org.criu.config); the request type has no field that could become one.
    assert not {"annotations", "runtime", "runtime_options", "spec"} & set(
        ContainerCreateParams.__struct_fields__
    )
    spec = build_container_spec(
        create(
            labels={"io.containerd.runc.v2.group": "g"},
            env=["org.criu.config=/x"],
            hostname="h",
            mounts=[mount(data)],
        ),
        policy,
        namespace=NS,
    )
    assert spec.annotations == {}


# --- labels --------------------------------------------------------------------------------


def test_user_labels_are_stored_under_our_prefix_and_shown_without_it() -> None:
    stored = store_user_labels({"team": "a", "app.example/tier": "web"})
    assert stored == {
        USER_LABEL_PREFIX + "team": "a",
        USER_LABEL_PREFIX + "app.example/tier": "web",
    }
    # Labels we did not store for a client (ours, ctr's, containerd's) are never shown.
    raw = {**stored, "containerd.io/restart.status": "running", "name": "web"}
    assert user_labels(raw) == {"team": "a", "app.example/tier": "web"}


@pytest.mark.parametrize(
    "key",
    [
        "containerd.io/restart.loguri",
        "CONTAINERD.IO/restart.logpath",
        "io.containerd.runc.v2.group",
        "io.cri-containerd.image",
        "io.kubernetes.cri.container-type",
        "k8s.io/x",
        "nerdctl/log-uri",
        "com.docker.compose.project",
        "org.opencontainers.image.source",
        "org.systemd.property.MemoryMax",
        "org.criu.config",
        USER_LABEL_PREFIX + "team",
    ],
)
def test_reserved_label_keys_are_refused(key: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="reserved namespace") as info:
        store_user_labels({"ok": "1", key: "x"})
    assert repr(key) in info.value.message


def test_labels_containerd_would_drop_or_refuse() -> None:
    with pytest.raises(errors.InvalidArgument, match="empty value"):
        store_user_labels({"flag": ""})
    with pytest.raises(errors.InvalidArgument, match="must not be empty"):
        store_user_labels({"": "x"})
    room = 4096 - len(USER_LABEL_PREFIX)
    assert store_user_labels({"k": "v" * (room - 1)})
    with pytest.raises(errors.InvalidArgument, match="at most"):
        store_user_labels({"k": "v" * room})
    with pytest.raises(errors.InvalidArgument, match="at most"):
        store_user_labels({"k": "é" * (room // 2)})  # counted in bytes, as containerd does
