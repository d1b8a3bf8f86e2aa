"""Platforms (os/architecture/variant): normalising, the host default, and index choice.

containerd's rules (``platforms`` package): names are lowercased and normalised
(``x86_64`` -> ``amd64``, ``aarch64`` -> ``arm64``, arm without variant -> ``v7``, ``arm64/v8``
-> ``arm64``); a match compares os, architecture and variant exactly, and a wanted platform
also accepts fallbacks, best first: ``amd64/vN`` then lower ``amd64`` levels then ``386``;
``arm/vN`` then lower arm variants down to ``v5``; ``arm64`` then ``arm/v8`` .. ``arm/v5``.

API::

    host_platform()                        # Platform(os='linux', architecture='amd64')
    parse_platform("linux/arm/v7")
    choose_manifest(index.manifests, want) # the best entry, or NotFound listing what exists
"""

from __future__ import annotations

import platform as _host
from collections.abc import Sequence
from typing import Protocol, TypeVar

import msgspec

from ..errors import InvalidArgument, NotFound

__all__ = ["Platform", "choose_manifest", "host_platform", "parse_platform"]


class _IndexEntry(Protocol):
    """What choosing needs of an index entry (``_media.Descriptor``; typed structurally so
    this module does not import ``_media``, which imports it)."""

    @property
    def platform(self) -> Platform | None: ...


_Entry = TypeVar("_Entry", bound=_IndexEntry)


class Platform(msgspec.Struct, omit_defaults=True, frozen=True):
    architecture: str
    os: str
    os_version: str = msgspec.field(default="", name="os.version")
    os_features: list[str] | None = msgspec.field(default=None, name="os.features")
    variant: str = ""

    def __str__(self) -> str:
        out = f"{self.os}/{self.architecture}"
        return f"{out}/{self.variant}" if self.variant else out

    def normalized(self) -> Platform:
        arch, variant = _normalize_arch(self.architecture.lower(), self.variant.lower())
        return Platform(os=self.os.lower(), architecture=arch, variant=variant)


_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "i386": "386",
    "i686": "386",
    "aarch64": "arm64",
    "armhf": "arm",
    "armel": "arm",
}


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    arch = _ARCH_ALIASES.get(arch, arch)
    if (arch == "amd64" and variant == "v1") or (arch == "arm64" and variant in ("8", "v8")):
        variant = ""
    elif arch == "arm":
        variant = {"": "v7", "7": "v7", "5": "v5", "6": "v6", "8": "v8"}.get(variant, variant)
    return arch, variant


def host_platform() -> Platform:
    """The platform this host runs: linux plus the normalised machine architecture."""
    arch, variant = _normalize_arch(_host.machine().lower(), "")
    return Platform(os="linux", architecture=arch, variant=variant)


def parse_platform(text: str) -> Platform:
    """``os/arch[/variant]`` (``linux/amd64``, ``linux/arm/v7``), normalised."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgument(
            f"invalid platform {text!r}: expected os/architecture[/variant]", local=True
        )
    variant = parts[2] if len(parts) == 3 else ""
    return Platform(os=parts[0], architecture=parts[1], variant=variant).normalized()


def _candidates(want: Platform) -> list[Platform]:
    """``want`` then its fallbacks, best first (containerd's ``Only``)."""
    want = want.normalized()
    out = [want]
    if want.architecture == "amd64":
        level = int(want.variant[1:]) if want.variant[1:].isdigit() else 1
        out += [
            Platform(os=want.os, architecture="amd64", variant=f"v{n}" if n > 1 else "")
            for n in range(level - 1, 0, -1)
        ]
        out.append(Platform(os=want.os, architecture="386"))
    elif want.architecture == "arm" and want.variant[1:].isdigit():
        out += [
            Platform(os=want.os, architecture="arm", variant=f"v{n}")
            for n in range(int(want.variant[1:]) - 1, 4, -1)
        ]
    elif want.architecture == "arm64":
        out += [Platform(os=want.os, architecture="arm", variant=f"v{n}") for n in (8, 7, 6, 5)]
    return out


def match_rank(want: Platform, have: Platform) -> int | None:
    """0 for an exact match, higher for fallbacks, None when ``have`` cannot run."""
    have = have.normalized()
    for rank, candidate in enumerate(_candidates(want)):
        if (candidate.os, candidate.architecture, candidate.variant) == (
            have.os,
            have.architecture,
            have.variant,
        ):
            return rank
    return None


def choose_manifest(manifests: Sequence[_Entry], want: Platform, *, name: str) -> _Entry:
    """The index entry to pull for ``want``; entries without a platform are not chosen."""
    best: tuple[int, int] | None = None
    chosen: _Entry | None = None
    for position, entry in enumerate(manifests):
        if entry.platform is None:
            continue
        rank = match_rank(want, entry.platform)
        if rank is not None and (best is None or (rank, position) < best):
            best, chosen = (rank, position), entry
    if chosen is None:
        available = sorted({str(e.platform.normalized()) for e in manifests if e.platform})
        raise NotFound(
            f"{name}: no image for platform {want.normalized()} "
            f"(available: {', '.join(available) or 'none listed'})",
            local=True,
        )
    return chosen
