"""docker's ``~/.docker/config.json``: stored credentials and credential helpers (sans-IO).

- :func:`load_docker_config` reads the file (``$DOCKER_CONFIG`` honoured; a missing file is an
  empty config); :func:`lookup_credentials` finds a registry's ``auths`` entry (a base64
  ``auth`` or ``username``/``password``, ``identitytoken``, ``registrytoken``): the exact key
  first, then any key whose host part matches. The Hub's key is
  ``https://index.docker.io/v1/``; ``docker.io``, ``index.docker.io`` and
  ``registry-1.docker.io`` all find it.
- Credential helpers take precedence, like docker (``credHelpers`` for the host, else
  ``credsStore``): :func:`credential_helper` names the program (``docker-credential-NAME``),
  :func:`helper_server_url` is what it reads on stdin, :func:`parse_helper_response` reads
  its answer; the Trio shell (:mod:`._registry`) runs it.

Errors about a malformed entry name the registry, never the value; the parser's own messages
(which may quote the file) are dropped.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from ..errors import InvalidArgument, Unauthenticated
from ._auth import Credentials

__all__ = [
    "HUB_CONFIG_KEY",
    "DockerConfig",
    "credential_helper",
    "credentials_from_mapping",
    "docker_config_path",
    "helper_server_url",
    "load_docker_config",
    "lookup_credentials",
    "parse_helper_response",
]

HUB_CONFIG_KEY = "https://index.docker.io/v1/"
_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


class _AuthEntry(msgspec.Struct, omit_defaults=True):
    auth: str = ""
    username: str = ""
    password: str = ""
    identitytoken: str = ""
    registrytoken: str = ""

    def __repr__(self) -> str:
        return "_AuthEntry(<redacted>)"


class DockerConfig(msgspec.Struct, omit_defaults=True):
    auths: dict[str, _AuthEntry] = {}
    credsStore: str = ""
    credHelpers: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"DockerConfig(registries={sorted(self.auths)})"


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def load_docker_config(path: str | os.PathLike[str] | None = None) -> DockerConfig:
    """Read docker's config file; a missing file is an empty config."""
    file = Path(path) if path is not None else docker_config_path()
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return DockerConfig()
    except OSError as exc:
        raise InvalidArgument(
            f"cannot read the docker config file: {exc.strerror}", local=True
        ) from None
    try:
        return msgspec.json.decode(data, type=DockerConfig)
    except (msgspec.DecodeError, msgspec.ValidationError):
        # The parser's message may quote a fragment of the file, which holds secrets.
        raise InvalidArgument(
            "the docker config file is not valid JSON of the expected shape", local=True
        ) from None


def _host_of(key: str) -> str:
    if "://" not in key:
        key = "//" + key
    parts = urlsplit(key)
    return parts.netloc or parts.path.split("/", 1)[0]


def lookup_credentials(config: DockerConfig, host: str) -> Credentials | None:
    """The credentials docker would use for registry ``host`` (``host[:port]``)."""
    candidates = [host]
    if host in _HUB_HOSTS:
        candidates = [HUB_CONFIG_KEY, *sorted(_HUB_HOSTS)]
    entry: _AuthEntry | None = None
    matched = ""
    for key in candidates:
        if key in config.auths:
            entry, matched = config.auths[key], key
            break
    if entry is None:
        wanted = {_host_of(c) for c in candidates}
        for key, value in config.auths.items():
            if _host_of(key) in wanted:
                entry, matched = value, key
                break
    if entry is None:
        return None
    return _entry_credentials(entry, matched)


def _entry_credentials(entry: _AuthEntry, key: str) -> Credentials | None:
    username, password = entry.username, entry.password
    if entry.auth:
        try:
            decoded = base64.b64decode(entry.auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidArgument(
                f"docker config: the auth entry for {_host_of(key)!r} is not valid base64",
                local=True,
            ) from None
        user, sep, secret = decoded.partition(":")
        if not sep:
            raise InvalidArgument(
                f"docker config: the auth entry for {_host_of(key)!r} is not user:password",
                local=True,
            )
        username, password = user, secret.rstrip("\x00")
    if not (username or password or entry.identitytoken or entry.registrytoken):
        return None
    return Credentials(
        username,
        password,
        identity_token=entry.identitytoken,
        registry_token=entry.registrytoken,
    )


_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def credential_helper(config: DockerConfig, host: str) -> str | None:
    """The program docker would ask for ``host``'s credentials (``docker-credential-NAME``):
    ``credHelpers[host]`` first, then ``credsStore``; None when the config names none."""
    keys = [host, *(sorted(_HUB_HOSTS | {HUB_CONFIG_KEY}) if host in _HUB_HOSTS else [])]
    name = next((config.credHelpers[k] for k in keys if k in config.credHelpers), None)
    name = name or config.credsStore or None
    if name is None:
        return None
    if not _HELPER_NAME.fullmatch(name):
        raise InvalidArgument(
            f"docker config: invalid credential helper name {name[:64]!r}", local=True
        )
    return f"docker-credential-{name}"


def helper_server_url(host: str) -> bytes:
    """What a credential helper is given on stdin: the Hub's legacy URL, else the host."""
    return (HUB_CONFIG_KEY if host in _HUB_HOSTS else host).encode()


class _HelperAnswer(msgspec.Struct):
    Username: str = ""
    Secret: str = ""


def parse_helper_response(stdout: bytes) -> Credentials | None:
    """A helper's ``get`` answer; the username ``<token>`` means an identity token."""
    try:
        answer = msgspec.json.decode(stdout, type=_HelperAnswer)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise Unauthenticated(
            "the docker credential helper answered with malformed JSON", local=True
        ) from None
    if not answer.Secret:
        return None
    if answer.Username == "<token>":
        return Credentials(identity_token=answer.Secret)
    return Credentials(answer.Username, answer.Secret)


def credentials_from_mapping(values: Mapping[str, Credentials], host: str) -> Credentials | None:
    """Look ``host`` up in an explicit ``{host: Credentials}`` map (Hub aliases included)."""
    if host in values:
        return values[host]
    if host in _HUB_HOSTS:
        for key in (HUB_CONFIG_KEY, *sorted(_HUB_HOSTS)):
            if key in values:
                return values[key]
    return None
