"""Identifier validation, done locally before any RPC or path join.

containerd accepts ids of at most 76 characters matching
``[A-Za-z0-9]+([._-][A-Za-z0-9]+)*``. We check the same rule up front: a bad id then costs no
RPC, and since FIFO paths are built from ids, it can never escape our state directory.
"""

from __future__ import annotations

import re

from ..errors import InvalidArgument

MAX_ID_LENGTH = 76
_ID_PATTERN = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")


def is_valid_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and _ID_PATTERN.fullmatch(value) is not None
    )


def validate_id(value: object, *, kind: str = "container id") -> str:
    """Return ``value`` if it is a valid containerd identifier, else raise InvalidArgument."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{kind} must be a string, not {type(value).__name__}", local=True)
    if is_valid_id(value):
        return value
    shown = value if len(value) <= 80 else value[:77] + "..."
    if not value:
        reason = "it is empty"
    elif len(value) > MAX_ID_LENGTH:
        reason = f"it is {len(value)} characters long (at most {MAX_ID_LENGTH})"
    else:
        reason = (
            "it must be letters and digits, optionally joined by single '.', '_' or '-' "
            "(no leading, trailing or doubled separators)"
        )
    raise InvalidArgument(f"invalid {kind} {shown!r}: {reason}", local=True)
