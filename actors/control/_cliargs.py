"""Docker's flag syntaxes for the command line, checked before anything is sent.

Pure functions: each turns one flag's text into what the control plane takes, or raises
:class:`~actors.errors.InvalidArgument` with docker's wording where docker has one, naming
the flag and the value.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Final

from ..core._ids import _ID_PATTERN, MAX_ID_LENGTH
from ..errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "DEFAULT_DETACH_KEYS",
    "DetachScanner",
    "parse_bytes",
    "parse_detach_keys",
    "parse_time",
    "parse_user",
    "resolve_env",
    "validate_name",
    "validate_workdir",
]

DEFAULT_DETACH_KEYS: Final = "ctrl-p,ctrl-q"

_UNITS: Final = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_BYTES_RE: Final = re.compile(r"\A([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?\Z", re.I)
_DURATION_RE: Final = re.compile(r"\A([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)\Z")
_DURATION_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_ENV_KEY_RE: Final = re.compile(r"\A[^=\x00]+\Z")


def parse_bytes(text: str, *, flag: str = "--memory") -> int:
    """Docker's RAMInBytes: ``64m``, ``1g``, ``512k``, ``1.5GiB`` or bytes (powers of 1024)."""
    match = _BYTES_RE.match(text.strip())
    if match is None:
        raise InvalidArgument(
            f"invalid value {text!r} for {flag}: expected a size such as 64m, 1g or 1048576"
        )
    value = int(float(match[1]) * _UNITS[match[2].lower()])
    if value < 1:
        raise InvalidArgument(f"invalid value {text!r} for {flag}: must be positive")
    return value


def resolve_env(
    entries: Iterable[str], env_files: Iterable[str], environ: Mapping[str, str]
) -> list[str]:
    """``-e KEY=VALUE``, ``-e KEY`` (copied from ``environ``, left out when unset, as docker
    does) and ``--env-file`` lines (``#`` comments and blank lines skipped); ``-e`` wins."""
    result: list[str] = []
    for path in env_files:
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            raise InvalidArgument(f"--env-file {path}: {exc.strerror}") from None
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            entry = _env_entry(line, environ, f"--env-file {path} line {number}")
            if entry is not None:
                result.append(entry)
    for raw in entries:
        entry = _env_entry(raw, environ, "-e")
        if entry is not None:
            result.append(entry)
    return result


def _env_entry(text: str, environ: Mapping[str, str], where: str) -> str | None:
    key, sep, _ = text.partition("=")
    if not key or "\x00" in text or (not sep and key.strip() != key):
        raise InvalidArgument(
            f"invalid environment variable {text!r} in {where}: expected KEY=VALUE or KEY"
        )
    if sep:
        return text
    value = environ.get(key)
    return None if value is None else f"{key}={value}"


def parse_user(text: str, *, flag: str = "--user") -> tuple[int, int]:
    """``UID``, ``UID:GID``, or ``root``. Names other than root would need the container's
    /etc/passwd, which the server does not read on a client's behalf."""
    user, _, group = text.partition(":")

    def number(part: str, what: str) -> int:
        if part == "root":
            return 0
        if not part.isdigit() or int(part) > 2**32 - 2:
            raise InvalidArgument(
                f"invalid {flag} {text!r}: the {what} must be a number (names other than "
                "root are not resolved; use UID[:GID])"
            )
        return int(part)

    uid = number(user, "user")
    gid = number(group, "group") if group else (0 if uid == 0 else uid)
    return uid, gid


def user_param(text: str) -> dict[str, int] | str:
    """``--user`` of run/create: numeric ids as they are, or a name the server resolves in
    the image's /etc/passwd and /etc/group (``app``, ``www-data:www-data``, ``1000:staff``)."""
    user, _, group = text.partition(":")
    if all(not part or part == "root" or part.isdigit() for part in (user, group)):
        uid, gid = parse_user(text)
        return {"uid": uid, "gid": gid}
    if not user or len(text) > 130 or "\x00" in text:
        raise InvalidArgument(f"invalid --user {text!r}: expected USER[:GROUP]")
    return text


def validate_name(name: str) -> str:
    """Docker's wording for a bad ``--name``; our rule is the id pattern of containerd.

    The message also names the field as the server would (``$.params.id``), so it reads
    the same whichever side refuses it.
    """
    if len(name) > MAX_ID_LENGTH or _ID_PATTERN.fullmatch(name) is None:
        raise InvalidArgument(
            f"Invalid container name ({name}): Expected an identifier at $.params.id: only "
            f"letters and digits joined by single '.', '_' or '-' are allowed (at most "
            f"{MAX_ID_LENGTH} characters)"
        )
    return name


def validate_workdir(path: str) -> str:
    if not path.startswith("/"):
        raise InvalidArgument(
            f"the working directory '{path}' is invalid, it needs to be an absolute path"
        )
    return path


def parse_time(text: str, *, flag: str, now: dt.datetime | None = None) -> int:
    """``--since``/``--until``: RFC 3339, a unix timestamp, or a duration ago (``10m``);
    returns unix nanoseconds."""
    now = now or dt.datetime.now(dt.UTC)
    match = _DURATION_RE.match(text)
    if match is not None:
        when = now - dt.timedelta(seconds=float(match[1]) * _DURATION_UNITS[match[2]])
        return _nanos(when)
    try:
        return int(float(text) * 1e9)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"invalid value {text!r} for {flag}: expected RFC 3339 (2026-01-02T15:04:05Z), "
            "a unix timestamp, or a duration such as 10m"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return _nanos(when)


def _nanos(when: dt.datetime) -> int:
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1_000


def parse_detach_keys(text: str) -> bytes:
    """Docker's ``--detach-keys``: comma-separated ``ctrl-<c>`` or single characters."""
    keys = bytearray()
    for part in text.split(","):
        if len(part) == 1:
            keys.append(ord(part))
        elif part.lower().startswith("ctrl-") and len(part) == 6:
            char = part[5].upper()
            if not ("@" <= char <= "_"):
                raise InvalidArgument(f"invalid detach key {part!r} in {text!r}")
            keys.append(ord(char) - 64)
        else:
            raise InvalidArgument(
                f"invalid detach keys {text!r}: use e.g. ctrl-p,ctrl-q or ctrl-a,a"
            )
    if not keys:
        raise InvalidArgument("--detach-keys must not be empty")
    return bytes(keys)


class DetachScanner:
    """Finds the detach sequence in typed input, holding back a partial match (sans-IO).

    :meth:`feed` returns the bytes to forward and whether the sequence was completed (what
    came before it in the same chunk is still forwarded; the sequence itself never is).
    """

    def __init__(self, keys: bytes) -> None:
        self._keys = keys
        self._held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        out = bytearray()
        for byte in data:
            candidate = self._held + bytes([byte])
            if self._keys.startswith(candidate):
                if candidate == self._keys:
                    return bytes(out), True
                self._held = candidate
                continue
            # Not the sequence after all: release what was held, then re-check this byte.
            out += self._held
            self._held = b""
            if self._keys.startswith(bytes([byte])):
                if len(self._keys) == 1:
                    return bytes(out), True
                self._held = bytes([byte])
            else:
                out.append(byte)
        return bytes(out), False
