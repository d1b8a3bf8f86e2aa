"""Control-plane labels: stored under our own prefix, never under a key something interprets.

containerd and its neighbours act on container labels: the restart monitor (on by default
in containerd 1.6) runs ``containerd.io/restart.loguri=binary://...`` as root on the host,
``restart.logpath`` appends to any host file, nerdctl and dockerd remove the directory a
label names. A control-plane client is not root, so none of its label keys reach containerd
as given: each is stored as ``USER_LABEL_PREFIX + key`` and shown back without the prefix;
labels that lack the prefix (ours, or set by ``ctr`` and other clients) are never shown.

Keys in the reserved namespaces are refused outright as well, with a message naming the
key, so a client learns at once that such a label cannot work (and the rule would still hold
if the prefix were ever lost on some path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "BINDS_LABEL",
    "INTERNAL_LABEL_PREFIX",
    "OWNER_LABEL",
    "OWNER_VALUE",
    "RESERVED_LABEL_PREFIXES",
    "USER_LABEL_PREFIX",
    "is_ours",
    "reserved_prefix",
    "store_user_labels",
    "user_labels",
]

#: Every label key this project writes starts with this.
INTERNAL_LABEL_PREFIX: Final = "io.containerd-actors."
#: Set (to ``"gateway"``) on every container the control plane creates, and on no other; the
#: gateway acts only on containers that carry it. Clients cannot set it (reserved prefix).
OWNER_LABEL: Final = INTERNAL_LABEL_PREFIX + "owner"
OWNER_VALUE: Final = "gateway"
#: Where the gateway staged a container's bind sources (``actors.control._binds``).
BINDS_LABEL: Final = INTERNAL_LABEL_PREFIX + "binds"
#: A control-plane client's label ``KEY`` is stored in containerd as ``USER_LABEL_PREFIX + KEY``.
USER_LABEL_PREFIX: Final = INTERNAL_LABEL_PREFIX + "user/"
#: Namespaces whose keys containerd, its plugins, shims, runc or other clients interpret
#: (compared case-insensitively; ``com.docker`` covers ``com.docker/`` and ``com.docker.``).
RESERVED_LABEL_PREFIXES: Final = (
    "containerd.io/",
    "io.containerd.",
    "io.cri-containerd",
    "io.kubernetes.",
    "k8s.io/",
    "nerdctl/",
    "com.docker",
    "org.opencontainers.",
    "org.systemd.",
    "org.criu.",
    INTERNAL_LABEL_PREFIX,
)
# containerd's labels/validate.go: key plus value, in bytes.
_MAX_LABEL_BYTES: Final = 4096


def reserved_prefix(key: str) -> str | None:
    """The reserved namespace ``key`` falls in, or None."""
    lowered = key.lower()
    return next((p for p in RESERVED_LABEL_PREFIXES if lowered.startswith(p)), None)


def store_user_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A client's labels as they are stored in containerd (each key under our prefix).

    Raises:
        InvalidArgument: a key or value is empty, a key is in a reserved namespace, or a
            label would exceed containerd's 4096-byte limit once prefixed (nothing is
            stored).
    """
    stored: dict[str, str] = {}
    for key, value in labels.items():
        if not key:
            raise InvalidArgument("label keys must not be empty", local=True)
        if not value:
            # containerd drops a label with an empty value; refusing beats losing it quietly.
            raise InvalidArgument(
                f"label {key!r} has an empty value; containerd does not keep such labels",
                local=True,
            )
        prefix = reserved_prefix(key)
        if prefix is not None:
            raise InvalidArgument(
                f"label {key!r} is in the reserved namespace {prefix!r}: containerd or "
                "another runtime component interprets such labels, so clients may not set them",
                local=True,
            )
        full = USER_LABEL_PREFIX + key
        if len(full.encode()) + len(value.encode()) > _MAX_LABEL_BYTES:
            limit = _MAX_LABEL_BYTES - len(USER_LABEL_PREFIX)
            raise InvalidArgument(
                f"label {key!r}: key and value together must be at most {limit} bytes",
                local=True,
            )
        stored[full] = value
    return stored


def is_ours(stored: Mapping[str, str]) -> bool:
    """Whether a container record was created by the control plane."""
    return stored.get(OWNER_LABEL) == OWNER_VALUE


def user_labels(stored: Mapping[str, str]) -> dict[str, str]:
    """The labels a client set, with their own keys; every other label is left out."""
    size = len(USER_LABEL_PREFIX)
    return {k[size:]: v for k, v in stored.items() if k.startswith(USER_LABEL_PREFIX)}
