"""Crash a container's actor on purpose, to test supervision (a test tool, not an API).

The production mailbox has no "crash" command: a test makes the actor's next mailbox item
fail as a handler bug would (outside the per-command error handling, so the actor itself
stops and its supervisor restarts it from containerd's state).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core import _commands as cmd

if TYPE_CHECKING:
    from ..core._container import MailboxItem, Reply
    from ..core._handles import Container


async def crash_actor(container: Container, reason: str = "crash requested") -> None:
    """Make ``container``'s actor fail once, as if it had a bug, and return at once."""
    actor = container._actor

    async def crash(command: cmd.Command[object], reply: Reply | None) -> bool:
        del actor._serve_one  # one shot: the class's method is back for the restart
        raise RuntimeError(f"{actor.container_id}: {reason}")

    actor._serve_one = crash  # type: ignore[method-assign]
    # Any item wakes the actor; with no reply channel nobody waits for an answer.
    trigger: MailboxItem = (cmd.Pause(), None)
    await actor.mailbox.send_command(trigger)
