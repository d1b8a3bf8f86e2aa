from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from actors.core.spec import (
    DEFAULT_CAPABILITIES,
    DEFAULT_MASKED_PATHS,
    DEFAULT_NAMESPACES,
    DEFAULT_PATH_ENV,
    DEFAULT_READONLY_PATHS,
    OCI_VERSION,
    LinuxResources,
    Mount,
    Process,
    Spec,
    build_process,
    build_spec,
    decode_process,
    decode_resources,
    decode_spec,
    default_mounts,
    encode_process,
    encode_resources,
    encode_spec,
    exec_process_from,
)

if TYPE_CHECKING:
    from pathlib import Path


def _json(spec: Spec) -> dict[str, Any]:
    # Check the wire shape with the stdlib, independently of msgspec's renaming.
    result: dict[str, Any] = json.loads(encode_spec(spec))
    return result


def test_round_trip_and_oci_key_names(tmp_path: Path) -> None:
    spec = build_spec(
        tmp_path,
        ["/bin/sh", "-c", "true"],
        hostname="box",
        memory_limit=64 << 20,
        pids_limit=100,
        cpu_shares=512,
        cpu_quota=50_000,
        cpu_period=100_000,
        cgroups_path="/containerd-actors/default/c1",
        annotations={"org.example/owner": "tests"},
    )
    assert decode_spec(encode_spec(spec)) == spec

    doc = _json(spec)
    assert doc["ociVersion"] == OCI_VERSION
    process = doc["process"]
    assert process["args"] == ["/bin/sh", "-c", "true"]
    assert process["user"] == {"uid": 0, "gid": 0}
    assert process["env"] == [DEFAULT_PATH_ENV]
    assert process["cwd"] == "/"
    assert process["noNewPrivileges"] is True
    assert "CAP_KILL" in process["capabilities"]["bounding"]
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert "terminal" not in process
    assert "consoleSize" not in process

    assert doc["root"] == {"path": str(tmp_path)}
    assert os.path.isabs(doc["root"]["path"])
    assert doc["hostname"] == "box"
    assert doc["annotations"] == {"org.example/owner": "tests"}
    assert "hooks" not in doc

    linux = doc["linux"]
    assert [ns["type"] for ns in linux["namespaces"]] == list(DEFAULT_NAMESPACES)
    assert linux["cgroupsPath"] == "/containerd-actors/default/c1"
    assert linux["maskedPaths"] == list(DEFAULT_MASKED_PATHS)
    assert linux["readonlyPaths"] == list(DEFAULT_READONLY_PATHS)
    assert linux["resources"] == {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": 64 << 20},
        "cpu": {"shares": 512, "quota": 50_000, "period": 100_000},
        "pids": {"limit": 100},
    }


def test_minimal_spec_omits_unset_fields(tmp_path: Path) -> None:
    doc = _json(build_spec(tmp_path, ["true"]))
    assert set(doc) == {"ociVersion", "process", "root", "mounts", "linux"}
    assert doc["linux"]["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert "cgroupsPath" not in doc["linux"]
    destinations = [m["destination"] for m in doc["mounts"]]
    assert destinations == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ]


def test_relative_rootfs_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rootfs").mkdir()
    monkeypatch.chdir(tmp_path)
    spec = build_spec("rootfs", ["true"], readonly_rootfs=True)
    assert _json(spec)["root"] == {"path": str(tmp_path / "rootfs"), "readonly": True}


def test_console_size_only_with_terminal_and_size(tmp_path: Path) -> None:
    with_size = _json(build_spec(tmp_path, ["sh"], terminal=True, console_size=(24, 80)))
    assert with_size["process"]["terminal"] is True
    assert with_size["process"]["consoleSize"] == {"height": 24, "width": 80}
    assert "TERM=xterm" in with_size["process"]["env"]

    without_size = _json(build_spec(tmp_path, ["sh"], terminal=True))
    assert without_size["process"]["terminal"] is True
    assert "consoleSize" not in without_size["process"]

    with pytest.raises(ValueError, match="terminal=True"):
        build_spec(tmp_path, ["sh"], console_size=(24, 80))


def test_env_keeps_caller_entries_and_fills_path_and_term(tmp_path: Path) -> None:
    spec = build_spec(tmp_path, ["sh"], env=["FOO=1", "PATH=/bin"], terminal=True)
    assert spec.process is not None
    assert spec.process.env == ["FOO=1", "PATH=/bin", "TERM=xterm"]

    spec = build_spec(tmp_path, ["sh"], env=["FOO=a=b"])
    assert spec.process is not None
    assert spec.process.env == ["FOO=a=b", DEFAULT_PATH_ENV]


def test_extra_mount_replaces_default_with_same_destination(tmp_path: Path) -> None:
    shm = Mount(destination="/dev/shm", type="tmpfs", source="shm", options=["size=1m"])
    data = Mount(destination="/data", type="bind", source=str(tmp_path), options=["rbind", "ro"])
    spec = build_spec(tmp_path, ["true"], extra_mounts=[shm, data])
    assert [m.destination for m in spec.mounts].count("/dev/shm") == 1
    assert spec.mounts[-2:] == [shm, data]
    # The spec holds copies, so the caller's Mount can change without affecting it.
    data.options.append("nosuid")
    assert spec.mounts[-1].options == ["rbind", "ro"]


def test_default_mounts_are_fresh_copies() -> None:
    first = default_mounts()
    first[0].options.append("ro")
    assert default_mounts()[0].options == []


def _read_runc_spec(tmp_path: Path) -> Spec:
    runc = shutil.which("runc")
    if runc is None:
        if os.environ.get("CI") == "true":
            pytest.fail("runc is required in CI to check the defaults against `runc spec`")
        pytest.skip("runc is not installed")
    subprocess.run([runc, "spec", "--bundle", str(tmp_path)], check=True, timeout=30)
    return decode_spec((tmp_path / "config.json").read_bytes())


def test_defaults_match_runc_spec(tmp_path: Path) -> None:
    reference = _read_runc_spec(tmp_path)
    ours = build_spec(tmp_path, ["sh"])
    assert reference.process is not None
    assert ours.process is not None
    assert reference.linux is not None
    assert ours.linux is not None

    assert ours.oci_version == reference.oci_version
    ref_caps = reference.process.capabilities
    our_caps = ours.process.capabilities
    assert ref_caps is not None
    assert our_caps is not None
    assert sorted(DEFAULT_CAPABILITIES) == sorted(ref_caps.bounding)
    for name in ("bounding", "effective", "permitted"):
        assert sorted(getattr(our_caps, name)) == sorted(getattr(ref_caps, name)), name
    assert ours.process.rlimits == reference.process.rlimits
    assert ours.process.no_new_privileges == reference.process.no_new_privileges
    assert ours.process.env == [e for e in reference.process.env if not e.startswith("TERM=")]

    assert ours.linux.masked_paths == reference.linux.masked_paths
    assert ours.linux.readonly_paths == reference.linux.readonly_paths
    assert [n.type for n in ours.linux.namespaces] == [n.type for n in reference.linux.namespaces]
    assert ours.linux.resources == reference.linux.resources
    assert ours.mounts == reference.mounts


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"args": []}, "args must not be empty"),
        ({"args": [""]}, "args\\[0\\]"),
        ({"args": ["sh\x00"]}, "NUL"),
        ({"cwd": "tmp"}, "cwd must be an absolute path"),
        ({"cwd": ""}, "cwd must be an absolute path"),
        ({"namespaces": ["pid", "mount", "time"]}, "unknown namespace types"),
        ({"namespaces": ["pid", "pid", "mount"]}, "duplicate namespace"),
        ({"namespaces": ["pid", "uts"]}, "'mount' namespace is required"),
        ({"hostname": "h", "namespaces": ["mount"]}, "'uts' namespace"),
        ({"hostname": "x" * 65}, "hostname must be 1 to 64"),
        ({"memory_limit": -1}, "memory_limit"),
        ({"memory_limit": 0}, "memory_limit"),
        ({"pids_limit": -5}, "pids_limit"),
        ({"cpu_shares": -1}, "cpu_shares"),
        ({"cpu_quota": -1}, "cpu_quota"),
        ({"cpu_period": -1}, "cpu_period"),
        ({"cpu_period": 2_000_000}, "cpu_period"),
        ({"env": ["NOEQUALS"]}, "KEY=VALUE"),
        ({"env": ["=value"]}, "KEY=VALUE"),
        ({"user": (-1, 0)}, "uid"),
        ({"user": (0, 2**32)}, "gid"),
        ({"terminal": True, "console_size": (0, 80)}, "console_size"),
        ({"capabilities": ["CAP_KILL", "CAP_NOT_REAL"]}, "unknown capabilities: CAP_NOT_REAL"),
        ({"cgroups_path": ""}, "cgroups_path"),
        ({"extra_mounts": [Mount(destination="data")]}, "mount destination must be absolute"),
    ],
)
def test_build_spec_rejects_bad_input(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    args = kwargs.pop("args", ["true"])
    with pytest.raises(ValueError, match=message):
        build_spec(tmp_path, args, **kwargs)


def test_rootfs_must_be_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="existing directory"):
        build_spec(tmp_path / "missing", ["true"])
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(ValueError, match="existing directory"):
        build_spec(afile, ["true"])


def test_single_string_args_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="single string"):
        build_spec(tmp_path, "sh")
    with pytest.raises(TypeError, match="single string"):
        build_spec(tmp_path, ["sh"], env="A=1")


def test_build_process_matches_init_defaults(tmp_path: Path) -> None:
    spec = build_spec(tmp_path, ["sh"], user=(1000, 1000), cwd="/tmp")
    process = build_process(["sh"], user=(1000, 1000), cwd="/tmp")
    assert process == spec.process
    assert json.loads(encode_process(process))["user"] == {"uid": 1000, "gid": 1000}
    assert decode_process(encode_process(process)) == process


def test_exec_process_from_copies_identity_and_replaces_args(tmp_path: Path) -> None:
    spec = build_spec(tmp_path, ["/sbin/init"], user=(1000, 1001), env=["A=1", "B=2"], cwd="/srv")
    assert spec.process is not None
    spec.process.apparmor_profile = "containerd-actors-default"
    spec.process.user.additional_gids = [27]

    proc = exec_process_from(spec, ["sh", "-l"], terminal=True, console_size=(40, 120))
    assert proc.args == ["sh", "-l"]
    assert proc.terminal is True
    assert proc.console_size is not None
    assert (proc.console_size.height, proc.console_size.width) == (40, 120)
    assert proc.user == spec.process.user
    assert proc.capabilities == spec.process.capabilities
    assert proc.rlimits == spec.process.rlimits
    assert proc.no_new_privileges is True
    assert proc.apparmor_profile == "containerd-actors-default"
    assert proc.cwd == "/srv"
    assert proc.env == ["A=1", "B=2", DEFAULT_PATH_ENV, "TERM=xterm"]

    # The container spec is left untouched and shares no mutable state with the result.
    assert spec.process.args == ["/sbin/init"]
    assert spec.process.terminal is False
    proc.user.additional_gids.append(4)
    assert spec.process.user.additional_gids == [27]


def test_exec_process_from_overrides_env_and_cwd(tmp_path: Path) -> None:
    spec = build_spec(tmp_path, ["init"], env=["A=1", "B=2"])
    proc = exec_process_from(spec, ["env"], env=["B=3", "C=4"], cwd="/tmp")
    assert proc.env == ["A=1", "B=3", DEFAULT_PATH_ENV, "C=4"]
    assert proc.cwd == "/tmp"
    assert proc.terminal is False
    assert proc.console_size is None


def test_exec_process_from_rejects_bad_input(tmp_path: Path) -> None:
    spec = build_spec(tmp_path, ["init"])
    with pytest.raises(ValueError, match="args must not be empty"):
        exec_process_from(spec, [])
    with pytest.raises(ValueError, match="cwd must be an absolute path"):
        exec_process_from(spec, ["sh"], cwd="relative")
    with pytest.raises(ValueError, match="no process"):
        exec_process_from(Spec(oci_version=OCI_VERSION), ["sh"])


def test_decode_tolerates_unknown_fields() -> None:
    doc: dict[str, Any] = {
        "ociVersion": "1.2.0",
        "futureTopLevel": {"x": 1},
        "domainname": "example.org",
        "process": {
            "user": {"uid": 0, "gid": 0, "username": "root"},
            "args": ["sh"],
            "cwd": "/",
            "ioPriority": {"class": "IOPRIO_CLASS_IDLE"},
            "scheduler": {"policy": "SCHED_OTHER"},
        },
        "linux": {
            "resources": {"memory": {"limit": 1, "useHierarchy": True}, "rdma": {}},
            "intelRdt": {"closID": "x"},
            "timeOffsets": {},
            "seccomp": {
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": 1,
                "architectures": ["SCMP_ARCH_X86_64"],
                "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                "listenerPath": "/run/agent.sock",
                "syscalls": [
                    {
                        "names": ["clone"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [
                            {"index": 0, "value": 0, "valueTwo": 1, "op": "SCMP_CMP_MASKED_EQ"}
                        ],
                    },
                    {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                ],
            },
        },
    }
    spec = decode_spec(json.dumps(doc).encode())
    assert spec.oci_version == "1.2.0"
    assert spec.process is not None
    assert spec.process.args == ["sh"]
    assert spec.linux is not None
    assert spec.linux.resources is not None
    assert spec.linux.resources.memory is not None
    assert spec.linux.resources.memory.limit == 1
    # Every seccomp field runtime-spec 1.1 defines is modelled, so none is lost.
    assert spec.linux.seccomp is not None
    assert spec.linux.seccomp.syscalls[0].args[0].value_two == 1
    assert spec.linux.seccomp.syscalls[1].errno_ret == 38

    encoded = json.loads(encode_spec(spec))
    assert "futureTopLevel" not in encoded
    assert encoded["linux"]["seccomp"] == doc["linux"]["seccomp"]


def test_resources_codec() -> None:
    data = b'{"memory":{"limit":1048576,"disableOOMKiller":false},"pids":{"limit":5},"x":1}'
    resources = decode_resources(data)
    assert resources.memory is not None
    assert resources.memory.disable_oom_killer is False
    assert json.loads(encode_resources(resources)) == {
        "memory": {"limit": 1048576, "disableOOMKiller": False},
        "pids": {"limit": 5},
    }
    assert encode_resources(LinuxResources()) == b"{}"


def test_process_requires_args_on_decode() -> None:
    with pytest.raises(msgspec.ValidationError, match="args"):
        decode_process(b'{"user":{"uid":0,"gid":0},"cwd":"/"}')
    assert isinstance(decode_process(b'{"user":{"uid":0,"gid":0},"cwd":"/","args":["a"]}'), Process)
