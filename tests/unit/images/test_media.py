"""Manifest, index and config decoding with limits; digests; platform matching."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from actors.errors import DataLoss, InvalidArgument, NotFound, Unimplemented
from actors.images._digest import BlobVerifier, digest_of, parse_digest, verify_bytes
from actors.images._media import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MANIFEST_ACCEPT,
    MAX_LAYERS,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    decode_config,
    decode_manifest_or_index,
    is_layer_type,
)
from actors.images._platform import Platform, choose_manifest, host_platform, parse_platform


def _desc(media_type: str, seed: str, size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(seed.encode()), "size": size, **extra}


def _manifest(layers: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _desc(OCI_CONFIG, "config"),
        "layers": [_desc(OCI_LAYER_GZIP, f"layer{i}") for i in range(layers)],
        **extra,
    }


def _config(diff_ids: int = 2) -> dict[str, Any]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "User": "1000:1000",
            "Env": ["PATH=/bin", "A=1"],
            "Entrypoint": ["/bin/sh"],
            "Cmd": ["-c", "echo hi"],
            "WorkingDir": "/srv",
            "StopSignal": "SIGQUIT",
            "ExposedPorts": {"80/tcp": {}},
            "Labels": {"k": "v"},
            "Volumes": None,
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": [digest_of(f"d{i}".encode()) for i in range(diff_ids)],
        },
        "history": [{"created_by": "x", "empty_layer": True}],
    }


def test_accept_lists_every_type() -> None:
    for kind in (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX):
        assert kind in MANIFEST_ACCEPT


def test_decode_manifest_and_config() -> None:
    manifest = decode_manifest_or_index(json.dumps(_manifest()).encode(), OCI_MANIFEST)
    assert isinstance(manifest, Manifest)
    assert manifest.config.media_type == OCI_CONFIG and len(manifest.layers) == 2
    config = decode_config(json.dumps(_config()).encode(), manifest)
    run = config.config
    assert (run.user, run.entrypoint, run.cmd, run.working_dir, run.stop_signal) == (
        "1000:1000",
        ["/bin/sh"],
        ["-c", "echo hi"],
        "/srv",
        "SIGQUIT",
    )
    assert run.env == ["PATH=/bin", "A=1"] and run.labels == {"k": "v"}
    assert run.exposed_ports == {"80/tcp": {}}
    assert config.platform == Platform(os="linux", architecture="amd64")
    assert config.history is not None and config.history[0].empty_layer


def test_decode_index_and_sniffing() -> None:
    body = {
        "schemaVersion": 2,
        "manifests": [
            _desc(
                OCI_MANIFEST,
                "m",
                platform={"os": "linux", "architecture": "arm64", "variant": "v8"},
            )
        ],
    }
    data = json.dumps(body).encode()
    # Registries may serve a generic Content-Type: the body decides.
    for served in (OCI_INDEX, "application/json", None):
        index = decode_manifest_or_index(data, served)
        assert isinstance(index, Index)
        assert index.manifests[0].platform == Platform(
            os="linux", architecture="arm64", variant="v8"
        )
    assert isinstance(
        decode_manifest_or_index(json.dumps(_manifest()).encode(), "text/plain; charset=utf-8"),
        Manifest,
    )


def test_media_type_contradiction_is_refused() -> None:
    data = json.dumps(_manifest(mediaType=OCI_INDEX)).encode()
    with pytest.raises(InvalidArgument, match="declares mediaType"):
        decode_manifest_or_index(data, OCI_MANIFEST)


def test_limits() -> None:
    huge = b" " * (4 << 20) + json.dumps(_manifest()).encode()
    with pytest.raises(InvalidArgument, match="over the 4 MiB limit"):
        decode_manifest_or_index(huge, OCI_MANIFEST)
    with pytest.raises(
        InvalidArgument, match=f"lists {MAX_LAYERS + 1} layers, over the limit of 127"
    ):
        decode_manifest_or_index(json.dumps(_manifest(MAX_LAYERS + 1)).encode(), OCI_MANIFEST)
    assert isinstance(
        decode_manifest_or_index(json.dumps(_manifest(MAX_LAYERS)).encode(), OCI_MANIFEST), Manifest
    )
    with pytest.raises(InvalidArgument, match="lists 1 diff IDs but the manifest has 2 layers"):
        decode_config(json.dumps(_config(1)).encode(), Manifest(**_as_manifest()))


def _as_manifest() -> dict[str, Any]:
    decoded = decode_manifest_or_index(json.dumps(_manifest()).encode(), OCI_MANIFEST)
    assert isinstance(decoded, Manifest)
    return {"schema_version": 2, "config": decoded.config, "layers": decoded.layers}


@pytest.mark.parametrize(
    ("body", "served", "error", "message"),
    [
        (b"not json", OCI_MANIFEST, InvalidArgument, "not valid JSON"),
        (b"[]", OCI_MANIFEST, InvalidArgument, "invalid image manifest"),
        (json.dumps({"schemaVersion": 1, "name": "x"}).encode(), None, Unimplemented, "schema 1"),
        (
            b"{}",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            Unimplemented,
            "schema 1",
        ),
        (
            json.dumps(_manifest()).encode(),
            "application/x-evil",
            InvalidArgument,
            "unsupported manifest media type",
        ),
        (
            json.dumps(_manifest(schemaVersion=3)).encode(),
            OCI_MANIFEST,
            InvalidArgument,
            "schemaVersion 3",
        ),
        (json.dumps({"foo": 1}).encode(), None, InvalidArgument, "neither"),
    ],
)
def test_malformed_documents(
    body: bytes, served: str | None, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        decode_manifest_or_index(body, served)


def test_bad_descriptors() -> None:
    bad_digest = _manifest()
    bad_digest["layers"][0]["digest"] = "sha256:1234"
    with pytest.raises(InvalidArgument, match="wrong length"):
        decode_manifest_or_index(json.dumps(bad_digest).encode(), OCI_MANIFEST)
    negative = _manifest()
    negative["layers"][1]["size"] = -1
    with pytest.raises(InvalidArgument, match="negative size"):
        decode_manifest_or_index(json.dumps(negative).encode(), OCI_MANIFEST)
    bad_config = _config()
    bad_config["rootfs"]["type"] = "other"
    with pytest.raises(InvalidArgument, match="rootfs type"):
        decode_config(json.dumps(bad_config).encode())


def test_layer_types() -> None:
    assert is_layer_type(OCI_LAYER_GZIP)
    assert is_layer_type("application/vnd.docker.image.rootfs.diff.tar.gzip")
    assert is_layer_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
    assert not is_layer_type(OCI_CONFIG)


def test_digests() -> None:
    data = b"hello"
    digest = digest_of(data)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert parse_digest(digest) == ("sha256", digest[7:])
    sha512 = digest_of(data, "sha512")
    verify_bytes(data, sha512, 5, what="x")
    with pytest.raises(DataLoss, match="digest mismatch"):
        verify_bytes(b"hellO", digest, what="blob")
    for bad in ("sha256", "md5:" + "0" * 32, "sha256:" + "0" * 63, "sha256:" + "G" * 64):
        with pytest.raises(InvalidArgument):
            parse_digest(bad)


def test_blob_verifier_cuts_at_size_plus_one() -> None:
    verifier = BlobVerifier(digest_of(b"abc"), 3, what="blob x")
    verifier.update(b"abc")
    with pytest.raises(DataLoss, match="more than the expected 3 bytes"):
        verifier.update(b"d")
    short = BlobVerifier(digest_of(b"abc"), 3, what="blob x")
    short.update(b"ab")
    with pytest.raises(DataLoss, match="ended after 2 of 3 bytes"):
        short.finish()
    resumed = BlobVerifier(digest_of(b"abc"), 3, what="blob x", offset=1)
    resumed.update(b"zz")  # the digest is the content store's job after a resume
    resumed.finish()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("Linux/AARCH64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/armel", "linux/arm/v6"),
        ("linux/i386", "linux/386"),
    ],
)
def test_platform_normalisation(text: str, expected: str) -> None:
    assert str(parse_platform(text)) == expected


def test_platform_parse_errors() -> None:
    for bad in ("linux", "linux/", "a/b/c/d", ""):
        with pytest.raises(InvalidArgument, match="os/architecture"):
            parse_platform(bad)


def test_host_platform_is_linux() -> None:
    assert host_platform().os == "linux"
    assert host_platform().architecture in (
        "amd64",
        "arm64",
        "arm",
        "386",
        "ppc64le",
        "s390x",
        "riscv64",
    )


def _entry(platform: str | None, seed: str) -> Descriptor:
    parsed = parse_platform(platform) if platform else None
    return Descriptor(
        media_type=OCI_MANIFEST, digest=digest_of(seed.encode()), size=1, platform=parsed
    )


def test_choose_manifest_exact_then_fallbacks() -> None:
    entries = [
        _entry(None, "attestation"),
        _entry("linux/386", "386"),
        _entry("linux/amd64", "amd64"),
        _entry("linux/arm/v6", "armv6"),
        _entry("linux/arm/v7", "armv7"),
    ]
    assert (
        choose_manifest(entries, parse_platform("linux/amd64"), name="x").digest
        == entries[2].digest
    )
    # amd64 falls back to 386 when no amd64 entry exists.
    assert (
        choose_manifest(entries[:2], parse_platform("linux/amd64"), name="x").digest
        == entries[1].digest
    )
    assert (
        choose_manifest(entries, parse_platform("linux/arm/v7"), name="x").digest
        == entries[4].digest
    )
    assert (
        choose_manifest(entries, parse_platform("linux/arm64"), name="x").digest
        == entries[4].digest
    )
    assert (
        choose_manifest(entries[:4], parse_platform("linux/arm/v8"), name="x").digest
        == entries[3].digest
    )
    with pytest.raises(
        NotFound, match=r"x: no image for platform linux/s390x \(available: linux/386, linux/amd64"
    ):
        choose_manifest(entries, parse_platform("linux/s390x"), name="x")
    with pytest.raises(NotFound, match="none listed"):
        choose_manifest(entries[:1], parse_platform("linux/amd64"), name="x")
