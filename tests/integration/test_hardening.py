"""Hardening inside containers: our seccomp profile and the default limits with ceilings.

Unit tests check the profile's shape and decisions; integration tests run the attacks from
issue 10 item 7 (a user namespace, a fork bomb) in real containers and check the limits
the kernel reports.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from actors import Client, PermissionDenied, build_spec, default_seccomp_profile, open_client
from actors.containerd._embedded import PrivateContainerd
from actors.control._policy import SpecPolicy, build_container_spec
from actors.control._protocol import ContainerCreateParams
from actors.control.gateway import Gateway, GatewayConfig
from actors.control.gateway_client import GatewayClient, connect_gateway
from actors.core._seccomp import (
    ALWAYS_DENIED_SYSCALLS,
    CAPABILITY_GATED_SYSCALLS,
    CLONE_NAMESPACE_FLAGS,
    CLONE_NEWUSER,
)
from actors.core.spec import (
    CONTAINERD_DEFAULT_CAPABILITIES,
    DEFAULT_CAPABILITIES,
    HARDENED_MEMORY_LIMIT,
    HARDENED_PIDS_LIMIT,
    LinuxSeccomp,
    LinuxSyscall,
    decode_spec,
    encode_spec,
)

from ..conftest import NAMESPACE, unique_id

# What issue 10 and the hardening notes name as container escapes or host-wide effects.
DANGEROUS = {
    "mount", "umount2", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at", "reboot", "swapon", "swapoff", "setns",
    "pivot_root", "acct", "settimeofday", "clock_settime", "adjtimex", "userfaultfd",
    "lookup_dcookie", "iopl", "ioperm", "quotactl", "nfsservctl", "vm86", "vm86old",
    "uselib", "sysfs", "_sysctl", "io_uring_setup", "chroot",
    "syslog", "move_mount", "open_tree", "fsopen",
}  # fmt: skip


def unconditional(profile: LinuxSeccomp) -> set[str]:
    """Names allowed whatever the arguments."""
    return {
        name
        for rule in profile.syscalls
        if rule.action == "SCMP_ACT_ALLOW" and not rule.args
        for name in rule.names
    }


def rules_for(profile: LinuxSeccomp, name: str) -> list[LinuxSyscall]:
    return [rule for rule in profile.syscalls if name in rule.names]


# --- the profile ----------------------------------------------------------------------------


def test_profile_is_deny_by_default_with_eperm() -> None:
    profile = default_seccomp_profile(machine="x86_64", kernel=(6, 1))
    assert profile.default_action == "SCMP_ACT_ERRNO"
    assert profile.default_errno_ret == 1
    # runc 1.1 refuses any flag.
    assert profile.flags == []
    assert profile.listener_path is None


def test_no_name_is_allowed_twice_unconditionally() -> None:
    profile = default_seccomp_profile(CONTAINERD_DEFAULT_CAPABILITIES, machine="x86_64")
    names = [n for r in profile.syscalls if not r.args for n in r.names]
    assert len(names) == len(set(names))
    # Conditional rules only for the argument-filtered calls.
    filtered = {n for r in profile.syscalls if r.args for n in r.names}
    assert filtered == {"clone", "unshare", "personality", "socket"}


def test_dangerous_calls_are_refused_without_capabilities() -> None:
    for caps in (DEFAULT_CAPABILITIES, CONTAINERD_DEFAULT_CAPABILITIES):
        allowed = unconditional(default_seccomp_profile(caps, machine="x86_64", kernel=(6, 1)))
        leaked = DANGEROUS & allowed
        if "CAP_SYS_CHROOT" in caps:
            assert leaked == {"chroot"}, caps
        else:
            assert not leaked, caps
    assert {"keyctl", "userfaultfd", "pivot_root", "io_uring_setup"} <= ALWAYS_DENIED_SYSCALLS


def test_always_denied_stays_denied_with_every_capability() -> None:
    everything = {cap for cap in CAPABILITY_GATED_SYSCALLS} | set(CONTAINERD_DEFAULT_CAPABILITIES)
    profile = default_seccomp_profile(everything, machine="x86_64", kernel=(6, 1))
    allowed = {n for r in profile.syscalls if r.action == "SCMP_ACT_ALLOW" for n in r.names}
    assert not allowed & ALWAYS_DENIED_SYSCALLS
    # ... while the gated calls follow the capability.
    assert {"mount", "setns", "unshare", "clone3", "settimeofday", "init_module"} <= allowed


def test_user_namespaces_need_cap_sys_admin() -> None:
    profile = default_seccomp_profile(machine="x86_64", kernel=(6, 1))
    assert "unshare" not in unconditional(profile)
    assert "clone" not in unconditional(profile)
    (clone,) = rules_for(profile, "clone")
    (arg,) = clone.args
    assert (arg.index, arg.op, arg.value, arg.value_two) == (
        0,
        "SCMP_CMP_MASKED_EQ",
        CLONE_NAMESPACE_FLAGS,
        0,
    )
    assert CLONE_NAMESPACE_FLAGS & CLONE_NEWUSER
    assert CLONE_NAMESPACE_FLAGS == 0x7E020000
    (unshare,) = rules_for(profile, "unshare")
    assert unshare.args[0].value & CLONE_NEWUSER
    # clone3 hides its flags in memory: ENOSYS sends glibc back to the filtered clone.
    (clone3,) = rules_for(profile, "clone3")
    assert (clone3.action, clone3.errno_ret) == ("SCMP_ACT_ERRNO", 38)
    # s390 passes clone's flags second.
    (s390_clone,) = rules_for(default_seccomp_profile(machine="s390x"), "clone")
    assert s390_clone.args[0].index == 1


def test_ptrace_depends_on_the_kernel() -> None:
    assert "ptrace" in unconditional(default_seccomp_profile(machine="x86_64", kernel=(4, 8)))
    old = default_seccomp_profile(machine="x86_64", kernel=(4, 4))
    assert "ptrace" not in unconditional(old)
    with_cap = default_seccomp_profile(["CAP_SYS_PTRACE"], machine="x86_64", kernel=(4, 4))
    assert "ptrace" in unconditional(with_cap)


def test_socket_families_and_personalities() -> None:
    profile = default_seccomp_profile(machine="x86_64")
    families = {r.args[0].value for r in rules_for(profile, "socket")}
    assert families == {1, 2, 10, 16, 17}  # unix, inet, inet6, netlink, packet
    assert 40 not in families  # AF_VSOCK
    assert 38 not in families  # AF_ALG
    personas = {r.args[0].value for r in rules_for(profile, "personality")}
    assert 0x0040000 not in personas  # ADDR_NO_RANDOMIZE
    assert {0, 0xFFFFFFFF} <= personas


@pytest.mark.parametrize(
    ("machine", "arches"),
    [
        ("x86_64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        ("aarch64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
        ("s390x", ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"]),
        ("mystery", []),
    ],
)
def test_architectures_include_the_compat_abis(machine: str, arches: list[str]) -> None:
    assert default_seccomp_profile(machine=machine).architectures == arches


def test_build_spec_hardened(rootfs_dir: Path) -> None:
    plain = build_spec(rootfs_dir, ["true"])
    assert plain.linux is not None
    assert plain.linux.seccomp is None
    spec = build_spec(rootfs_dir, ["true"], hardened=True)
    assert spec.linux is not None
    assert spec.linux.resources is not None
    assert spec.linux.resources.pids is not None
    assert spec.linux.resources.pids.limit == HARDENED_PIDS_LIMIT
    assert spec.linux.resources.memory is not None
    assert spec.linux.resources.memory.limit == HARDENED_MEMORY_LIMIT
    assert spec.linux.seccomp == default_seccomp_profile(DEFAULT_CAPABILITIES)
    # The profile follows the capabilities given; explicit limits win over the defaults.
    spec = build_spec(
        rootfs_dir,
        ["true"],
        hardened=True,
        pids_limit=7,
        memory_limit=1 << 20,
        capabilities=["CAP_SYS_ADMIN"],
    )
    assert spec.linux is not None
    assert spec.linux.resources is not None
    assert spec.linux.resources.pids is not None
    assert spec.linux.resources.pids.limit == 7
    assert spec.linux.seccomp is not None
    assert "mount" in unconditional(spec.linux.seccomp)
    # JSON names are the runtime-spec's, and the spec survives a round trip.
    doc = msgspec.json.decode(encode_spec(spec))
    seccomp = doc["linux"]["seccomp"]
    assert set(seccomp) == {"defaultAction", "defaultErrnoRet", "architectures", "syscalls"}
    assert decode_spec(encode_spec(spec)) == spec


def test_build_spec_copies_a_given_profile(rootfs_dir: Path) -> None:
    mine = LinuxSeccomp(default_action="SCMP_ACT_ALLOW", syscalls=[])
    spec = build_spec(rootfs_dir, ["true"], seccomp=mine, hardened=True)
    mine.default_action = "SCMP_ACT_KILL"
    assert spec.linux is not None
    assert spec.linux.seccomp == LinuxSeccomp(default_action="SCMP_ACT_ALLOW")


@pytest.fixture
def rootfs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "rootfs"
    path.mkdir()
    return path


# --- the policy -----------------------------------------------------------------------------


def policy_for(rootfs: Path, **fields: Any) -> SpecPolicy:
    return SpecPolicy(default_rootfs=str(rootfs), allowed_rootfs_roots=(str(rootfs),), **fields)


def create(**fields: Any) -> ContainerCreateParams:
    return msgspec.convert({"id": "c1", "args": ["true"], **fields}, ContainerCreateParams)


def limits(spec: Any) -> tuple[int | None, int | None]:
    resources = spec.linux.resources
    memory = resources.memory.limit if resources.memory else None
    pids = resources.pids.limit if resources.pids else None
    return memory, pids


def test_policy_applies_seccomp_and_limits_by_default(rootfs_dir: Path) -> None:
    spec = build_container_spec(create(), policy_for(rootfs_dir), namespace="ns")
    assert limits(spec) == (HARDENED_MEMORY_LIMIT, HARDENED_PIDS_LIMIT)
    assert spec.linux is not None
    assert spec.linux.seccomp == default_seccomp_profile(DEFAULT_CAPABILITIES)
    # Granted capabilities reach the profile.
    policy = policy_for(rootfs_dir, allow_extra_capabilities=frozenset({"CAP_SYS_TIME"}))
    spec = build_container_spec(create(capabilities_add=["SYS_TIME"]), policy, namespace="ns")
    assert spec.linux is not None
    assert spec.linux.seccomp is not None
    assert "settimeofday" in unconditional(spec.linux.seccomp)


def test_policy_knobs(rootfs_dir: Path) -> None:
    # Defaults above a ceiling are lowered to it; no default means the ceiling.
    policy = policy_for(rootfs_dir, max_memory_limit=1 << 20, max_pids_limit=10, seccomp=False)
    spec = build_container_spec(create(), policy, namespace="ns")
    assert limits(spec) == (1 << 20, 10)
    assert spec.linux is not None
    assert spec.linux.seccomp is None
    policy = policy_for(rootfs_dir, default_memory_limit=None, default_pids_limit=None)
    assert limits(build_container_spec(create(), policy, namespace="ns")) == (None, None)
    policy = policy_for(
        rootfs_dir, default_pids_limit=None, max_pids_limit=30, default_memory_limit=5 << 20
    )
    spec = build_container_spec(create(pids_limit=30, memory_limit=1 << 30), policy, namespace="ns")
    assert limits(spec) == (1 << 30, 30)
    with pytest.raises(ValueError, match="max_pids_limit must be positive"):
        policy_for(rootfs_dir, max_pids_limit=0)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"pids_limit": 11}, "pids_limit 11 exceeds the policy maximum of 10"),
        (
            {"memory_limit": (1 << 20) + 1},
            "memory_limit 1048577 exceeds the policy maximum of 1048576 bytes",
        ),
    ],
)
def test_requests_above_a_ceiling_are_refused(
    rootfs_dir: Path, fields: dict[str, int], needle: str
) -> None:
    policy = policy_for(rootfs_dir, max_memory_limit=1 << 20, max_pids_limit=10)
    with pytest.raises(PermissionDenied, match=needle):
        build_container_spec(create(**fields), policy, namespace="ns")


# --- in real containers ---------------------------------------------------------------------

# cgroup v2 puts the files at the top of /sys/fs/cgroup, v1 under each controller.
PROBE = (
    "grep '^Seccomp:' /proc/self/status; "
    "echo pids=$(cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max); "
    "echo mem=$(cat /sys/fs/cgroup/memory.max 2>/dev/null"
    " || cat /sys/fs/cgroup/memory/memory.limit_in_bytes); "
    "if unshare -U true 2>/tmp/err; then echo userns=yes; else echo userns=no; cat /tmp/err; fi"
)


async def run(client: Client, spec: Any) -> tuple[int, str]:
    container = await client.new_container(unique_id("hard"), spec)
    with trio.fail_after(30):
        task = await container.start()
        assert task.io is not None
        assert task.io.stdout is not None
        assert task.io.stderr is not None
        out = await task.io.stdout.read_all()
        err = await task.io.stderr.read_all()
        status = await task.wait()
    await task.delete()
    await container.delete()
    return status.code, (out + err).decode()


@pytest.mark.integration
async def test_hardened_container_is_filtered_and_limited(client: Client, rootfs: Path) -> None:
    before = client.statistics().rpc.calls
    code, out = await run(client, build_spec(rootfs, ["sh", "-c", PROBE], hardened=True))
    after = client.statistics().rpc.calls
    assert code == 0, out
    assert "Seccomp:\t2" in out
    assert f"pids={HARDENED_PIDS_LIMIT}\n" in out
    assert f"mem={HARDENED_MEMORY_LIMIT}\n" in out
    # The attack: a user namespace, where the caller is root again.
    assert "userns=no" in out
    assert "Operation not permitted" in out
    # Hardening costs no RPC: still create, start, delete for task and container.
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert delta == {
        "Containers.Create": 1,
        "Tasks.Create": 1,
        "Tasks.Start": 1,
        "Tasks.Delete": 1,
        "Containers.Delete": 1,
    }


@pytest.mark.integration
async def test_without_hardening_the_attack_works(client: Client, rootfs: Path) -> None:
    # The control for the test above: the probe can see a working user namespace.
    code, out = await run(client, build_spec(rootfs, ["sh", "-c", PROBE]))
    assert code == 0, out
    assert "Seccomp:\t0" in out
    assert "userns=yes" in out


@pytest.mark.integration
async def test_ordinary_work_still_runs(client: Client, rootfs: Path) -> None:
    script = (
        "set -e; ls / >/dev/null; mkdir /tmp/d; echo hi > /tmp/d/f; chown 1000:1000 /tmp/d/f; "
        "stat -c %u:%g /tmp/d/f; ln -s f /tmp/d/l; cat /tmp/d/l; chmod 600 /tmp/d/f; "
        "sleep 0.1 & wait; echo $(( 6 * 7 )) | sed s/42/forty-two/; date +%Y >/dev/null; "
        "nslookup localhost 127.0.0.1 >/dev/null 2>&1 || true; "
        "wc -c < /proc/self/status >/dev/null; id -u; "
        # A raw ICMP socket: CAP_NET_RAW decides, not the filter.
        "ping -c 1 -W 5 127.0.0.1 >/dev/null; echo done"
    )
    spec = build_spec(
        rootfs,
        ["sh", "-c", script],
        hardened=True,
        capabilities=CONTAINERD_DEFAULT_CAPABILITIES,
    )
    code, out = await run(client, spec)
    assert code == 0, out
    assert out.split() == ["1000:1000", "hi", "forty-two", "0", "done"]


@pytest.mark.integration
async def test_fork_bomb_stops_at_the_pids_limit(client: Client, rootfs: Path) -> None:
    limit = 40
    # Each started job echoes; ash gives up at the first failed fork.
    script = "for i in $(seq 200); do sleep 20 & echo started; done"
    spec = build_spec(rootfs, ["sh", "-c", script], hardened=True, pids_limit=limit)
    code, out = await run(client, spec)
    started = out.count("started")
    assert code != 0, out
    assert 0 < started < limit, out
    assert "can't fork" in out or "Resource temporarily unavailable" in out, out


# --- through the control plane --------------------------------------------------------------


@asynccontextmanager
async def serve(
    containerd: PrivateContainerd, io_dir: Path, policy: SpecPolicy
) -> AsyncIterator[tuple[Client, GatewayClient]]:
    token = secrets.token_urlsafe(32)
    async with (
        open_client(containerd.address, NAMESPACE, state_dir=str(io_dir)) as client,
        trio.open_nursery() as nursery,
    ):
        gateway = Gateway(client, GatewayConfig(token=token, policy=policy, port=0))
        await nursery.start(gateway.serve)
        async with connect_gateway(f"ws://127.0.0.1:{gateway.port}", token) as gw:
            yield client, gw
        nursery.cancel_scope.cancel()


async def containers(client: Client) -> set[str]:
    return {c.id for c in await client._remote.containers_list()}


@pytest.mark.integration
async def test_gateway_containers_are_hardened_by_default(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path
) -> None:
    async with serve(containerd, io_dir, policy_for(rootfs)) as (_, gw):
        cid = unique_id("gwhard")
        await gw.call("container.create", {"id": cid, "args": ["sh", "-c", PROBE]})
        await gw.call("task.start", {"id": cid})
        output = b""
        with trio.fail_after(30):
            async with gw.attach(cid, replay=True) as session:
                async for _, data in session.output():
                    output += data
        await gw.call("task.delete", {"id": cid})
        await gw.call("container.delete", {"id": cid})
    text = output.decode()
    assert "Seccomp:\t2" in text
    assert f"pids={HARDENED_PIDS_LIMIT}\n" in text
    assert f"mem={HARDENED_MEMORY_LIMIT}\n" in text
    assert "userns=no" in text


@pytest.mark.integration
async def test_gateway_refuses_requests_above_the_ceilings(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path
) -> None:
    policy = policy_for(rootfs, max_pids_limit=100, max_memory_limit=64 << 20)
    async with serve(containerd, io_dir, policy) as (client, gw):
        before = await containers(client)
        calls = client.statistics().rpc.calls
        cid = unique_id("gwceil")
        with pytest.raises(
            PermissionDenied, match="pids_limit 101 exceeds the policy maximum of 100"
        ):
            await gw.call("container.create", {"id": cid, "args": ["true"], "pids_limit": 101})
        with pytest.raises(PermissionDenied, match=r"memory_limit \d+ exceeds the policy maximum"):
            await gw.call(
                "container.create", {"id": cid, "args": ["true"], "memory_limit": 128 << 20}
            )
        # Refused before any containerd call, and nothing was created.
        assert client.statistics().rpc.calls.get("Containers.Create", 0) == calls.get(
            "Containers.Create", 0
        )
        assert await containers(client) == before


@pytest.mark.integration
async def test_task_update_cannot_raise_a_limit_past_the_ceiling(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path
) -> None:
    policy = policy_for(rootfs, max_pids_limit=100, max_memory_limit=64 << 20)
    probe = "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max"
    async with serve(containerd, io_dir, policy) as (client, gw):
        cid = unique_id("gwupd")
        await gw.call("container.create", {"id": cid, "args": ["sleep", "300"]})
        await gw.call("task.start", {"id": cid})
        updates = client.statistics().rpc.calls.get("Tasks.Update", 0)
        with pytest.raises(PermissionDenied, match="pids_limit 5000 exceeds the policy maximum"):
            await gw.call("task.update", {"id": cid, "pids_limit": 5000})
        with pytest.raises(PermissionDenied, match="memory_limit 8589934592 exceeds"):
            await gw.call("task.update", {"id": cid, "memory_limit": 8 << 30})
        assert client.statistics().rpc.calls.get("Tasks.Update", 0) == updates
        # Within the ceiling it still works: one Tasks.Update, and the kernel agrees.
        await gw.call("task.update", {"id": cid, "pids_limit": 50})
        assert client.statistics().rpc.calls["Tasks.Update"] == updates + 1
        await gw.call("process.exec", {"id": cid, "exec_id": "p", "args": ["sh", "-c", probe]})
        output = b""
        with trio.fail_after(30):
            async with gw.attach(cid, "p") as session:
                async for _, data in session.output():
                    output += data
        assert output == b"50\n"
        await gw.call("process.delete", {"id": cid, "exec_id": "p"})
        await gw.call("task.kill", {"id": cid, "signal": "KILL"})
        await gw.call("task.wait", {"id": cid})
        await gw.call("task.delete", {"id": cid})
        await gw.call("container.delete", {"id": cid})


def test_serve_flags_set_the_policy(tmp_path: Path) -> None:
    from actors.control._cli import build_parser, serve_policy

    def policy(*flags: str) -> SpecPolicy:
        args = build_parser().parse_args(["serve", *flags])
        return serve_policy(args)

    default = policy()
    assert (default.default_memory_limit, default.default_pids_limit) == (
        HARDENED_MEMORY_LIMIT,
        HARDENED_PIDS_LIMIT,
    )
    assert (default.max_memory_limit, default.max_pids_limit, default.seccomp) == (
        None,
        None,
        True,
    )
    custom = policy(
        "--default-memory", "0", "--default-pids", "64", "--max-memory", "1048576",
        "--max-pids", "128", "--no-seccomp",
    )  # fmt: skip
    assert (custom.default_memory_limit, custom.default_pids_limit) == (None, 64)
    assert (custom.max_memory_limit, custom.max_pids_limit, custom.seccomp) == (1 << 20, 128, False)
    with pytest.raises(SystemExit):
        policy("--max-pids", "0")


@pytest.mark.integration
async def test_exec_processes_are_filtered_too(client: Client, rootfs: Path) -> None:
    # runc applies the container's filter to every process it starts in it.
    spec = build_spec(rootfs, ["sleep", "300"], hardened=True)
    container = await client.new_container(unique_id("hardexec"), spec)
    with trio.fail_after(30):
        task = await container.start()
        proc = await task.exec("probe", container.exec_spec(["sh", "-c", PROBE]))
        assert proc.io is not None
        assert proc.io.stdout is not None
        out = (await proc.io.stdout.read_all()).decode()
        assert (await proc.wait()).code == 0
        await proc.delete()
        await task.kill(9)
        await task.wait()
    await task.delete()
    await container.delete()
    assert "Seccomp:\t2" in out
    assert "userns=no" in out
