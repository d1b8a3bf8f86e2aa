"""Unwrapping the exception groups our own nurseries create.

Public context managers must raise the exception that happened, not a group around it
(trio-websocket's open_websocket does the same): callers write ``except NotFound``.
"""

from __future__ import annotations

import trio

from ..errors import ContainerdActorsError


def collapse(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The single meaningful exception inside ``group`` (ignoring Cancelled), else the group."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))  # keep the raising order
        else:
            leaves.append(exc)
    interesting = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    if len(interesting) == 1:
        return interesting[0]
    if not interesting:
        return leaves[0]
    # Several tasks hit the same outage (e.g. every RPC in flight sees Unavailable): the
    # first of our errors tells the story. An unexpected exception (a bug) wins over ours.
    others = [e for e in interesting if not isinstance(e, ContainerdActorsError)]
    if not others:
        return interesting[0]
    if len(others) == 1:
        return others[0]
    return group
