"""Reading OCI layout and docker save archives, writing OCI archives; hostile archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from actors.errors import DataLoss, InvalidArgument, NotFound, Unimplemented
from actors.images._archive import (
    DockerSaveEntry,
    named_descriptor,
    read_archive,
    write_oci_archive,
)
from actors.images._digest import digest_of
from actors.images._media import (
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    MAX_LAYERS,
    Descriptor,
)
from actors.images._platform import host_platform
from tests.imagebuilder import BuiltImage, build_image, layout_tar, write_layout

HOST = str(host_platform())
OTHER = "linux/arm64" if HOST != "linux/arm64" else "linux/amd64"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return build_image(tmp_path_factory.mktemp("rootfs") / "rootfs", platforms=(HOST, OTHER))


def _tar(members: dict[str, bytes], *, links: dict[str, str] | None = None) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    out.seek(0)
    return out


def test_oci_layout_tar(image: BuiltImage, tmp_path: Path) -> None:
    write_layout(image, tmp_path / "layout", "v1")
    archive = read_archive(io.BytesIO(layout_tar(tmp_path / "layout")))
    assert archive.kind == "oci"
    (entry,) = archive.images
    assert entry.name is None and entry.tag == "v1"  # a bare tag names no repository
    assert entry.target.digest == image.target.digest
    assert entry.manifest_descriptor.digest == image.manifests[HOST].digest
    assert entry.config.rootfs.diff_ids == image.diff_ids
    assert entry.config.config.entrypoint == ["/bin/sh", "-c"]
    assert entry.layers == image.layers
    for layer in entry.layers:
        with archive.open_blob(layer) as stream:
            assert stream.read() == image.blob(layer)
    assert archive.read_blob(entry.config_descriptor) == image.blob(entry.config_descriptor)
    other = read_archive(
        io.BytesIO(layout_tar(tmp_path / "layout")),
        platform=host_platform().__class__(os="linux", architecture=OTHER.split("/")[1]),
    )
    assert other.images[0].manifest_descriptor.digest == image.manifests[OTHER].digest


def test_export_then_import_round_trip(image: BuiltImage) -> None:
    target = named_descriptor(image.target, "registry.example:5000/team/app:1.0")
    out = io.BytesIO()
    write_oci_archive(
        out,
        [target],
        blobs=[Descriptor(media_type="x", digest=d, size=len(b)) for d, b in image.blobs.items()],
        open_blob=lambda desc: io.BytesIO(image.blobs[desc.digest]),
    )
    out.seek(0)
    archive = read_archive(out)
    (entry,) = archive.images
    assert entry.name == "registry.example:5000/team/app:1.0" and entry.tag == "1.0"
    assert entry.target.annotations == {
        "io.containerd.image.name": "registry.example:5000/team/app:1.0",
        "org.opencontainers.image.ref.name": "1.0",
    }
    for layer in entry.layers:
        assert archive.read_blob(layer, limit=1 << 30) == image.blob(layer)
    # Reproducible: the same input gives the same bytes.
    again = io.BytesIO()
    write_oci_archive(
        again,
        [target],
        blobs=[Descriptor(media_type="x", digest=d, size=len(b)) for d, b in image.blobs.items()],
        open_blob=lambda desc: io.BytesIO(image.blobs[desc.digest]),
    )
    assert again.getvalue() == out.getvalue()


def test_export_refuses_a_blob_that_does_not_match(image: BuiltImage) -> None:
    layer = image.layers[0]
    with pytest.raises(DataLoss, match="digest mismatch"):
        write_oci_archive(
            io.BytesIO(),
            [image.target],
            blobs=[layer],
            open_blob=lambda desc: io.BytesIO(b"\0" * desc.size),
        )
    with pytest.raises(DataLoss, match="more than the expected"):
        write_oci_archive(
            io.BytesIO(),
            [image.target],
            blobs=[layer],
            open_blob=lambda desc: io.BytesIO(image.blobs[desc.digest] + b"extra"),
        )


def _docker_save(
    layers: list[bytes], *, repo_tags: list[str] | None, config: dict[str, Any] | None = None
) -> io.BytesIO:
    diff_ids = []
    members: dict[str, bytes] = {}
    names = []
    for i, layer in enumerate(layers):
        raw = gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        names.append(f"layer{i}/layer.tar")
        members[names[-1]] = layer
    config_doc = config or {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_bytes = json.dumps(config_doc).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    members[config_name] = config_bytes
    members["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": repo_tags, "Layers": names}]
    ).encode()
    members["repositories"] = b"{}"
    return _tar(members)


def _plain_layer(files: dict[str, bytes]) -> bytes:
    return _tar(files).getvalue()


def test_docker_save_archive() -> None:
    plain = _plain_layer({"a": b"1"})
    zipped = gzip.compress(_plain_layer({"b": b"2"}), mtime=0)
    archive = read_archive(_docker_save([plain, zipped], repo_tags=["busybox:latest", "me/app:v2"]))
    assert archive.kind == "docker"
    assert [i.name for i in archive.images] == [
        "docker.io/library/busybox:latest",
        "docker.io/me/app:v2",
    ]
    first = archive.images[0]
    assert first.manifest_descriptor.media_type == DOCKER_MANIFEST
    assert [layer.media_type for layer in first.layers] == [DOCKER_LAYER, DOCKER_LAYER_GZIP]
    assert first.layers[0].digest == digest_of(plain) and first.layers[1].digest == digest_of(
        zipped
    )
    assert archive.read_blob(first.layers[1], limit=1 << 20) == zipped
    manifest_bytes = archive.read_blob(first.manifest_descriptor)
    assert json.loads(manifest_bytes)["layers"][0]["digest"] == digest_of(plain)
    assert first.config.config.cmd == ["sh"]
    untagged = read_archive(_docker_save([plain], repo_tags=None))
    assert untagged.images[0].name is None


def test_not_an_image() -> None:
    with pytest.raises(InvalidArgument, match="not a tar archive"):
        read_archive(io.BytesIO(b"hello, this is not a tar" * 100))
    with pytest.raises(InvalidArgument, match=r"neither index\.json"):
        read_archive(_tar({"etc/passwd": b"root:x:0:0"}))
    with pytest.raises(
        InvalidArgument, match=r"archive index\.json: image index is not valid JSON"
    ):
        read_archive(_tar({"index.json": b"{nope"}))
    with pytest.raises(InvalidArgument, match=r"manifest\.json is malformed"):
        read_archive(_tar({"manifest.json": b'{"Config": 1}'}))
    with pytest.raises(InvalidArgument, match="contains no images"):
        read_archive(_tar({"index.json": b'{"schemaVersion":2,"manifests":[]}'}))
    with pytest.raises(Unimplemented, match="layout version"):
        read_archive(_tar({"oci-layout": b'{"imageLayoutVersion":"9"}', "index.json": b"{}"}))


def test_path_traversal_is_refused(image: BuiltImage) -> None:
    with pytest.raises(InvalidArgument, match="escapes the archive"):
        read_archive(_tar({"../evil": b"x", "index.json": b"{}"}))
    with pytest.raises(InvalidArgument, match="absolute path"):
        read_archive(_tar({"/etc/shadow": b"x", "manifest.json": b"[]"}))
    # A docker manifest.json pointing outside the archive.
    members = {"manifest.json": json.dumps([{"Config": "../../etc/passwd", "Layers": []}]).encode()}
    with pytest.raises(InvalidArgument, match="escapes the archive"):
        read_archive(_tar(members))
    # A blob that is a symlink (to another member, or anywhere) is not read.
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": image.target.media_type,
                    "digest": image.target.digest,
                    "size": image.target.size,
                }
            ],
        }
    ).encode()
    with pytest.raises(InvalidArgument, match="not a regular file"):
        read_archive(
            _tar(
                {"index.json": index},
                links={f"blobs/sha256/{image.target.digest[7:]}": "/etc/passwd"},
            )
        )


def test_missing_and_corrupt_blobs(image: BuiltImage, tmp_path: Path) -> None:
    entry = {
        "mediaType": image.target.media_type,
        "digest": image.target.digest,
        "size": image.target.size,
    }
    index = json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()
    with pytest.raises(NotFound, match=f"no blob {image.target.digest}"):
        read_archive(_tar({"index.json": index}))
    corrupt = {
        f"blobs/sha256/{image.target.digest[7:]}": image.blob(image.target).replace(b"2", b"3", 1),
        "index.json": index,
    }
    with pytest.raises(DataLoss, match="digest mismatch"):
        read_archive(_tar(corrupt))


def test_archive_limits() -> None:
    layer = _plain_layer({"a": b"1"})
    many = _docker_save([layer] * (MAX_LAYERS + 1), repo_tags=["x:y"])
    with pytest.raises(InvalidArgument, match="over the limit of 127"):
        read_archive(many)
    with pytest.raises(InvalidArgument, match="invalid RepoTag"):
        read_archive(_docker_save([layer], repo_tags=["Bad Tag"]))


def test_ref_names_that_are_full_names(image: BuiltImage, tmp_path: Path) -> None:
    for ref_name, name in [
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("quay.io/x/y:2", "quay.io/x/y:2"),
        ("v1.0", None),
    ]:
        write_layout(image, tmp_path / ref_name.replace("/", "_"), ref_name)
        archive = read_archive(io.BytesIO(layout_tar(tmp_path / ref_name.replace("/", "_"))))
        assert archive.images[0].name == name
        assert archive.images[0].tag == ref_name


def test_export_with_docker_manifest(image: BuiltImage) -> None:
    manifest = image.manifests[HOST]
    config = _config_of(image, manifest)
    blobs = [Descriptor(media_type="x", digest=d, size=len(b)) for d, b in image.blobs.items()]
    out = io.BytesIO()
    write_oci_archive(
        out,
        [named_descriptor(image.target, "busybox:v9")],
        blobs=blobs,
        open_blob=lambda desc: io.BytesIO(image.blobs[desc.digest]),
        docker=[
            DockerSaveEntry(
                config, image.layers, ["busybox:v9", "quay.io/a/b:c", f"x@{manifest.digest}"]
            )
        ],
    )
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        listing = json.loads(member.read())
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert listing == [
        {
            "Config": f"blobs/sha256/{config.digest[7:]}",
            "RepoTags": ["busybox:v9", "quay.io/a/b:c"],
            "Layers": [f"blobs/sha256/{layer.digest[7:]}" for layer in image.layers],
        }
    ]
    # What an old `docker load` sees: only manifest.json and the files it names.
    del members["index.json"], members["oci-layout"]
    archive = read_archive(_tar(members))
    assert archive.kind == "docker"
    assert [i.name for i in archive.images] == ["docker.io/library/busybox:v9", "quay.io/a/b:c"]
    assert [layer.digest for layer in archive.images[0].layers] == [
        layer.digest for layer in image.layers
    ]
    assert archive.images[0].layers[0].media_type == DOCKER_LAYER_GZIP
    with pytest.raises(InvalidArgument, match="not exported"):
        write_oci_archive(
            io.BytesIO(),
            [image.target],
            blobs=[],
            open_blob=lambda desc: io.BytesIO(image.blobs[desc.digest]),
            docker=[DockerSaveEntry(config, image.layers, ["busybox:v9"])],
        )


def _config_of(image: BuiltImage, manifest: Descriptor) -> Descriptor:
    config = json.loads(image.blob(manifest))["config"]
    return Descriptor(media_type=config["mediaType"], digest=config["digest"], size=config["size"])
