"""Docker image references: parse, normalise, validate, and print the familiar form.

The rules are docker's (distribution's ``reference`` package), written from the grammar:

- ``busybox`` -> ``docker.io/library/busybox:latest``;
  ``user/app`` -> ``docker.io/user/app:latest``; ``index.docker.io/x`` -> ``docker.io/library/x``.
- The first path component is a registry host only when the reference has a ``/`` and that
  component contains ``.`` or ``:`` or is ``localhost`` (``registry:5000/ns/app``,
  ``localhost/x``, ``[::1]:5000/x``).
- Repository components are lowercase ``[a-z0-9]+`` joined by ``.``, ``_``, ``__`` or dashes;
  the whole name is at most 255 characters; a bare 64-hex string is refused as a name (it
  looks like an image ID).
- A tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`` and defaults to ``latest`` when neither tag
  nor digest is given. A digest is ``sha256:<64 hex>`` or ``sha512:<128 hex>``; with both tag
  and digest the digest is what gets pulled (:attr:`Reference.pin`).

API::

    ref = parse_reference("alpine:3.20")
    ref.domain, ref.path, ref.tag      # 'docker.io', 'library/alpine', '3.20'
    str(ref)                           # 'docker.io/library/alpine:3.20'
    ref.familiar                       # 'alpine:3.20'
    ref.api_host                       # 'registry-1.docker.io'
    ref.pin                            # '3.20' (the tag, or the digest when there is one)

Every malformed reference raises :class:`~actors.errors.InvalidArgument` naming the part that
is wrong.
"""

from __future__ import annotations

import re

import msgspec

from ..errors import InvalidArgument

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "Reference",
    "parse_reference",
    "registry_api_host",
]

DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"
# The Hub's API lives on another host than the name users type.
_HUB_API_HOST = "registry-1.docker.io"
_LEGACY_HUB = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
_MAX_NAME = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?"
)
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
_IMAGE_ID_RE = re.compile(r"[a-f0-9]{64}")


class Reference(msgspec.Struct, frozen=True):
    """A normalised reference. ``tag`` is None only when a digest pins the image."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``domain/path`` without tag or digest (``docker.io/library/alpine``)."""
        return f"{self.domain}/{self.path}"

    @property
    def pin(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        if self.digest is not None:
            return self.digest
        return self.tag or DEFAULT_TAG

    @property
    def api_host(self) -> str:
        """The host (with port) serving the registry API for this reference."""
        return registry_api_host(self.domain)

    @property
    def familiar_name(self) -> str:
        """The name as docker prints it (``alpine``, ``user/app``, ``host:5000/app``)."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        path = self.path
        if path.startswith(_OFFICIAL_PREFIX) and "/" not in path[len(_OFFICIAL_PREFIX) :]:
            return path[len(_OFFICIAL_PREFIX) :]
        return path

    @property
    def familiar(self) -> str:
        """The whole reference as docker prints it (``alpine:3.20``)."""
        return self.familiar_name + self._suffix()

    def with_digest(self, digest: str) -> Reference:
        """The same name pinned to ``digest`` (the tag is kept for display)."""
        if not _DIGEST_RE.fullmatch(digest):
            raise InvalidArgument(f"invalid digest {digest!r}", local=True)
        return Reference(self.domain, self.path, self.tag, digest)

    def _suffix(self) -> str:
        out = ""
        if self.tag is not None:
            out += ":" + self.tag
        if self.digest is not None:
            out += "@" + self.digest
        return out

    def __str__(self) -> str:
        return self.name + self._suffix()


def registry_api_host(domain: str) -> str:
    """``docker.io`` is served by ``registry-1.docker.io``; every other domain by itself."""
    return _HUB_API_HOST if domain in (DEFAULT_DOMAIN, _LEGACY_HUB) else domain


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise ``text`` the way ``docker pull`` does.

    ``default_tag=False`` leaves ``tag`` None when the text has neither tag nor digest (for
    commands such as ``docker images NAME`` that mean every tag).
    """
    if not isinstance(text, str) or not text:
        raise InvalidArgument("empty image reference", local=True)
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidArgument(f"invalid image reference {text!r}: contains whitespace", local=True)
    if _IMAGE_ID_RE.fullmatch(text):
        raise InvalidArgument(
            f"invalid image reference {text!r}: a 64-hex string is an image ID, not a name",
            local=True,
        )
    remainder = text
    digest: str | None = None
    if "@" in remainder:
        remainder, digest = remainder.split("@", 1)
        if not _DIGEST_RE.fullmatch(digest):
            raise InvalidArgument(
                f"invalid image reference {text!r}: digest must be sha256:<64 hex> "
                "or sha512:<128 hex> in lowercase",
                local=True,
            )
    tag: str | None = None
    # A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidArgument(
                f"invalid image reference {text!r}: tag {tag!r} must match "
                "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
                local=True,
            )
    domain, path = _split_domain(remainder, text)
    for component in path.split("/"):
        if not _PATH_COMPONENT_RE.fullmatch(component):
            if component.lower() != component and _PATH_COMPONENT_RE.fullmatch(component.lower()):
                reason = "repository name must be lowercase"
            else:
                reason = f"invalid repository component {component!r}"
            raise InvalidArgument(f"invalid image reference {text!r}: {reason}", local=True)
    if len(domain) + 1 + len(path) > _MAX_NAME:
        raise InvalidArgument(
            f"invalid image reference: name longer than {_MAX_NAME} characters", local=True
        )
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def _split_domain(name: str, text: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    is_domain = bool(sep) and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    )
    if not is_domain:
        domain, path = DEFAULT_DOMAIN, name
    else:
        if not _DOMAIN_RE.fullmatch(first):
            raise InvalidArgument(
                f"invalid image reference {text!r}: invalid registry host {first!r}", local=True
            )
        domain, path = first, rest
    if domain == _LEGACY_HUB:
        domain = DEFAULT_DOMAIN
    if not path:
        raise InvalidArgument(f"invalid image reference {text!r}: empty repository", local=True)
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = _OFFICIAL_PREFIX + path
    return domain, path
