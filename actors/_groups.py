"""Unwrapping the exception groups our own nurseries create.

Public context managers must raise the exception that happened, not a group around it
(trio-websocket's open_websocket does the same): callers write ``except NotFound``.
"""

from __future__ import annotations

import trio


def collapse(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The single meaningful exception inside ``group`` (ignoring Cancelled), else the group."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    interesting = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    if len(interesting) == 1:
        return interesting[0]
    if not interesting:
        return leaves[0]
    return group
