"""The spec policy for image-based containers: an image config cannot ask for what a request
may not (only argv, env, cwd and user come from it)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from actors import errors
from actors.control._policy import SpecPolicy, build_container_spec
from actors.control._protocol import ContainerCreateParams
from actors.core.spec import DEFAULT_CAPABILITIES
from actors.images._media import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    ContainerConfig,
    Descriptor,
    ImageConfig,
    Manifest,
    RootFS,
)
from actors.images._model import image_of

NS = "ns1"
DIGEST = "sha256:" + "ab" * 32


def image(config: ContainerConfig) -> Any:
    layer = Descriptor(media_type=OCI_LAYER_GZIP, digest=DIGEST, size=10)
    cfg = Descriptor(media_type=OCI_CONFIG, digest=DIGEST, size=10)
    manifest = Manifest(schema_version=2, media_type=OCI_MANIFEST, config=cfg, layers=[layer])
    desc = Descriptor(media_type=OCI_MANIFEST, digest=DIGEST, size=10)
    full = ImageConfig(
        architecture="amd64", os="linux", rootfs=RootFS(type="layers", diff_ids=[DIGEST]),
        config=config,
    )  # fmt: skip
    return image_of("docker.io/library/x:latest", desc, desc, manifest, cfg, full)


def create(**fields: Any) -> ContainerCreateParams:
    return msgspec.convert({"id": "c1", **fields}, ContainerCreateParams)


HOSTILE = ContainerConfig(
    entrypoint=["/bin/sh", "-c"],
    cmd=["echo hi"],
    env=["A=1"],
    working_dir="/data",
    user="0:0",
    volumes={"/etc": {}, "/var/run/docker.sock": {}},
    exposed_ports={"22/tcp": {}},
    labels={"containerd.io/restart.loguri": "binary:///bin/sh", "privileged": "true"},
    stop_signal="SIGKILL",
)


def test_image_config_only_gives_process_fields() -> None:
    policy = SpecPolicy()
    spec = build_container_spec(create(), policy, namespace=NS, image=image(HOSTILE))
    assert spec.root is not None and spec.root.path == "rootfs"
    assert spec.process is not None
    assert spec.process.args == ["/bin/sh", "-c", "echo hi"]
    assert "A=1" in spec.process.env and spec.process.cwd == "/data"
    destinations = {m.destination for m in spec.mounts}
    assert "/etc" not in destinations and "/var/run/docker.sock" not in destinations
    assert all(m.type != "bind" for m in spec.mounts)
    assert spec.annotations == {}
    caps = spec.process.capabilities
    assert caps is not None and sorted(caps.bounding) == sorted(DEFAULT_CAPABILITIES)
    assert spec.hooks is None
    assert spec.linux is not None and spec.linux.seccomp is not None


def test_request_rules_still_apply_with_an_image() -> None:
    policy = SpecPolicy()
    img = image(HOSTILE)
    with pytest.raises(errors.PermissionDenied):
        build_container_spec(create(privileged=True), policy, namespace=NS, image=img)
    with pytest.raises(errors.PermissionDenied):
        build_container_spec(
            create(capabilities_add=["CAP_SYS_ADMIN"]), policy, namespace=NS, image=img
        )
    with pytest.raises(errors.InvalidArgument, match="either an image or a rootfs"):
        build_container_spec(create(rootfs="/tmp"), policy, namespace=NS, image=img)


def test_request_overrides_the_image() -> None:
    spec = build_container_spec(
        create(args=["date"], env=["A=2"], cwd="/tmp", user={"uid": 5, "gid": 6}),
        SpecPolicy(),
        namespace=NS,
        image=image(HOSTILE),
    )
    assert spec.process is not None
    assert spec.process.args == ["/bin/sh", "-c", "date"]
    assert spec.process.env[0] == "A=2" and "A=1" not in spec.process.env
    assert spec.process.cwd == "/tmp"
    assert spec.process.user is not None
    assert (spec.process.user.uid, spec.process.user.gid) == (5, 6)
    spec = build_container_spec(
        create(entrypoint=["/bin/echo"]), SpecPolicy(), namespace=NS, image=image(HOSTILE)
    )
    assert spec.process is not None and spec.process.args == ["/bin/echo"]


def test_directory_rootfs_needs_args_and_is_read_only_under_serve_policy(tmp_path: Any) -> None:
    root = tmp_path / "roots" / "r1"
    root.mkdir(parents=True)
    policy = SpecPolicy(allowed_rootfs_roots=(str(tmp_path / "roots"),), readonly_rootfs_dirs=True)
    with pytest.raises(errors.InvalidArgument, match="args are required"):
        build_container_spec(create(rootfs=str(root)), policy, namespace=NS)
    spec = build_container_spec(create(rootfs=str(root), args=["sh"]), policy, namespace=NS)
    assert spec.root is not None and spec.root.readonly is True
    with pytest.raises(errors.FailedPrecondition):
        build_container_spec(create(args=["sh"]), policy, namespace=NS)
