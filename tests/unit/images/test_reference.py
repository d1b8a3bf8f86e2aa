"""Docker reference normalisation and validation."""

from __future__ import annotations

import pytest

from actors.errors import InvalidArgument
from actors.images._reference import Reference, parse_reference

D64 = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "full", "familiar", "api_host"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest", "registry-1.docker.io"),
        ("alpine:3.20", "docker.io/library/alpine:3.20", "alpine:3.20", "registry-1.docker.io"),
        ("user/app", "docker.io/user/app:latest", "user/app:latest", "registry-1.docker.io"),
        (
            "docker.io/library/alpine",
            "docker.io/library/alpine:latest",
            "alpine:latest",
            "registry-1.docker.io",
        ),
        (
            "index.docker.io/foo",
            "docker.io/library/foo:latest",
            "foo:latest",
            "registry-1.docker.io",
        ),
        ("docker.io/a/b/c:t", "docker.io/a/b/c:t", "a/b/c:t", "registry-1.docker.io"),
        (
            "docker.io/library/a/b",
            "docker.io/library/a/b:latest",
            "library/a/b:latest",
            "registry-1.docker.io",
        ),
        (
            f"registry:5000/ns/app@{D64}",
            f"registry:5000/ns/app@{D64}",
            f"registry:5000/ns/app@{D64}",
            "registry:5000",
        ),
        (
            "localhost:5000/x",
            "localhost:5000/x:latest",
            "localhost:5000/x:latest",
            "localhost:5000",
        ),
        ("localhost/x", "localhost/x:latest", "localhost/x:latest", "localhost"),
        (
            "quay.io/org/img:v1.2_3-rc",
            "quay.io/org/img:v1.2_3-rc",
            "quay.io/org/img:v1.2_3-rc",
            "quay.io",
        ),
        ("[::1]:5000/x:y", "[::1]:5000/x:y", "[::1]:5000/x:y", "[::1]:5000"),
        (
            "a__b/c-d/e.f---g",
            "docker.io/a__b/c-d/e.f---g:latest",
            "a__b/c-d/e.f---g:latest",
            "registry-1.docker.io",
        ),
    ],
)
def test_normalisation(text: str, full: str, familiar: str, api_host: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == full
    assert ref.familiar == familiar
    assert ref.api_host == api_host
    # Normalising is idempotent.
    assert parse_reference(full) == ref


def test_tag_and_digest_pin_the_digest() -> None:
    ref = parse_reference(f"alpine:3.20@{D64}")
    assert ref.tag == "3.20" and ref.digest == D64
    assert ref.pin == D64
    assert str(ref) == f"docker.io/library/alpine:3.20@{D64}"
    only_digest = parse_reference(f"alpine@{D64}")
    assert only_digest.tag is None and only_digest.pin == D64


def test_parts_and_default_tag() -> None:
    ref = parse_reference("myhost.example:443/team/app")
    assert ref == Reference("myhost.example:443", "team/app", "latest", None)
    assert ref.name == "myhost.example:443/team/app"
    assert parse_reference("alpine", default_tag=False).tag is None
    assert ref.with_digest(D64).pin == D64


def test_sha512_digest_accepted() -> None:
    digest = "sha512:" + "b" * 128
    assert parse_reference(f"x@{digest}").digest == digest


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("Alpine", "must be lowercase"),
        ("user/Alpine", "must be lowercase"),
        ("a" * 64, "image ID"),
        ("alpine:", "tag ''"),
        ("alpine:tag!", "tag 'tag!'"),
        ("alpine:" + "t" * 129, "must match"),
        ("alpine:-x", "must match"),
        ("alpine@sha256:123", "digest must be"),
        ("alpine@sha256:" + "A" * 64, "digest must be"),
        ("alpine@md5:" + "a" * 32, "digest must be"),
        ("-a/b", "invalid repository component '-a'"),
        ("a//b", "invalid repository component ''"),
        ("a/b/", "invalid repository component ''"),
        ("ho_st:5000/x", "invalid registry host"),
        ("localhost:5000/", "empty repository"),
        (" alpine", "whitespace"),
        ("al pine", "whitespace"),
        ("x/" + "a" * 260, "longer than 255"),
    ],
)
def test_invalid_references(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_reference(text)
