"""Shim groups: packing containers into a bounded pool of runc shims (sans-IO).

containerd's runc v2 shim serves every container whose spec carries the same
``io.containerd.runc.v2.group`` annotation (in one namespace) from one process, as CRI does per
pod. One shim per container costs ~13 MB each; one shim for everything serialises the work.
The pool sits between: ``shims`` groups filled in rotation, at most ``max_per_shim`` members
each.

The annotation is ours alone: with a pool configured, a spec that already carries it is
refused (the control plane never lets a request set annotations at all), so no caller can
join another tenant's shim.

Generations: a group name is never reused once retired. A slot's group is retired when it
is full, when its last member is released (its shim shuts down once its tasks are gone, and
a newcomer must not race that shutdown), and when its shim is found dead (members' exits
arrive; the next container must get a fresh shim, not the dead one's stale socket). Retired
groups keep their members until they are released; they only take no new ones.

This module decides; the client (``_client.py``) does the I/O: it reads a member's shim pid
from ``/proc`` once per group and checks it when a member exits.
"""

from __future__ import annotations

import secrets
from typing import Final

import msgspec

from ..errors import InvalidArgument

__all__ = [
    "GROUP_ANNOTATION",
    "RESERVED_ANNOTATIONS",
    "ShimGroupPool",
    "ShimGroupStatistics",
    "ShimGroups",
]

GROUP_ANNOTATION: Final = "io.containerd.runc.v2.group"
# The runc shim also groups by CRI's sandbox id: reserved too, or it would bypass the pool.
RESERVED_ANNOTATIONS: Final = (GROUP_ANNOTATION, "io.kubernetes.cri.sandbox-id")


class ShimGroups(msgspec.Struct, frozen=True, kw_only=True):
    """Pool containers into ``shims`` runc shims in rotation, ``max_per_shim`` members each.

    ``shims`` is how many groups take new members at once (each shim handles its members'
    RPCs one by one, so more shims keep concurrent lifecycles parallel); when a group is full
    a fresh one replaces it, so the number of shims is about ``max(shims, containers /
    max_per_shim)``.
    """

    max_per_shim: int = 16
    shims: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.max_per_shim, int) or self.max_per_shim < 1:
            raise InvalidArgument(
                f"shim groups: max_per_shim must be a positive integer, not {self.max_per_shim!r}",
                local=True,
            )
        if not isinstance(self.shims, int) or self.shims < 1:
            raise InvalidArgument(
                f"shim groups: shims must be a positive integer, not {self.shims!r}", local=True
            )


class ShimGroupStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """The pool's counters: live groups and members, and generations opened or retired."""

    groups: int
    members: int
    generations: int
    retired_full: int
    retired_empty: int
    retired_dead: int
    create_retries: int = 0  # Tasks.Create repeated after meeting a group's shim exiting


class _Group:
    __slots__ = ("dead", "members", "name", "shim_pid", "slot")

    def __init__(self, name: str, slot: int | None) -> None:
        self.name = name
        self.slot = slot  # None once retired (or adopted at restore): takes no new members
        self.members: set[str] = set()
        self.shim_pid = 0
        self.dead = False


class ShimGroupPool:
    """Which group each container joins. Pure bookkeeping: no I/O, no clock."""

    def __init__(self, policy: ShimGroups, *, prefix: str | None = None) -> None:
        self.policy = policy
        # A fresh prefix per pool: a second supervisor never hands out a group name that
        # containers restored from the first one still use.
        self._prefix = prefix if prefix is not None else f"ca-{secrets.token_hex(4)}"
        self._slots: list[_Group | None] = [None] * policy.shims
        self._next_slot = 0
        self._generation = 0
        self._groups: dict[str, _Group] = {}
        self._member_of: dict[str, _Group] = {}
        self._retired_full = 0
        self._retired_empty = 0
        self._retired_dead = 0

    # -- assignment ------------------------------------------------------------------------

    def assign(self, container_id: str) -> str:
        """The group name ``container_id`` joins (round-robin over the slots)."""
        self.release(container_id)  # a re-created id starts over
        slot = self._next_slot
        self._next_slot = (slot + 1) % len(self._slots)
        group = self._slots[slot]
        if group is None or len(group.members) >= self.policy.max_per_shim:
            if group is not None:
                self._retired_full += 1
                group.slot = None
            group = self._open(slot)
        group.members.add(container_id)
        self._member_of[container_id] = group
        return group.name

    def adopt(self, container_id: str, name: str) -> None:
        """Count a restored member of ``name`` (a group this pool never gives new members)."""
        self.release(container_id)
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = _Group(name, None)
        group.members.add(container_id)
        self._member_of[container_id] = group

    def release(self, container_id: str) -> None:
        """``container_id`` was deleted (or is no longer supervised): free its place."""
        group = self._member_of.pop(container_id, None)
        if group is None:
            return
        group.members.discard(container_id)
        if group.members:
            return
        del self._groups[group.name]
        if group.slot is not None:
            # Its shim exits with its last task: the slot's next member starts a new one.
            self._slots[group.slot] = None
            group.slot = None
            self._retired_empty += 1

    # -- the shim's health, as the client observes it ------------------------------------

    def group_of(self, container_id: str) -> str | None:
        group = self._member_of.get(container_id)
        return group.name if group is not None else None

    def needs_shim_pid(self, container_id: str) -> bool:
        """True when ``container_id``'s group has no known shim pid yet (read it once)."""
        group = self._member_of.get(container_id)
        return group is not None and not group.shim_pid and not group.dead

    def shim_seen(self, container_id: str, shim_pid: int) -> None:
        group = self._member_of.get(container_id)
        if group is not None and not group.dead and shim_pid > 0:
            group.shim_pid = shim_pid

    def shim_pid(self, container_id: str) -> int:
        """The pid of ``container_id``'s shim as last seen (0: unknown)."""
        group = self._member_of.get(container_id)
        return group.shim_pid if group is not None and not group.dead else 0

    def shim_died(self, container_id: str) -> None:
        """``container_id``'s shim is gone: its group takes no new members from now on."""
        group = self._member_of.get(container_id)
        if group is None or group.dead:
            return
        group.dead = True
        group.shim_pid = 0
        self._retired_dead += 1
        if group.slot is not None:
            self._slots[group.slot] = None
            group.slot = None

    def statistics(self) -> ShimGroupStatistics:
        return ShimGroupStatistics(
            groups=len(self._groups),
            members=len(self._member_of),
            generations=self._generation,
            retired_full=self._retired_full,
            retired_empty=self._retired_empty,
            retired_dead=self._retired_dead,
        )

    def _open(self, slot: int) -> _Group:
        self._generation += 1
        group = _Group(f"{self._prefix}-{slot}-{self._generation}", slot)
        self._groups[group.name] = group
        self._slots[slot] = group
        return group


def check_unreserved(annotations: dict[str, str] | None) -> None:
    """Refuse a spec that sets the annotations the pool owns."""
    for key in RESERVED_ANNOTATIONS:
        if annotations and key in annotations:
            raise InvalidArgument(
                f"the spec sets annotation {key!r}, which the client's shim groups own",
                local=True,
            )


class _Annotations(msgspec.Struct):
    annotations: dict[str, str] = msgspec.field(default_factory=dict)


def group_annotation(spec: bytes) -> str | None:
    """The group annotation of an OCI spec's JSON (unknown fields skipped: cheap at restore)."""
    if not spec:
        return None
    try:
        return msgspec.json.decode(spec, type=_Annotations).annotations.get(GROUP_ANNOTATION)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
