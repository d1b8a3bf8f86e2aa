"""Shim groups: the pool's assignment rules (sans-IO) and the client's use of them (fake)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from actors import InvalidArgument, ShimGroups, Unknown, build_spec
from actors.core._shimgroups import (
    GROUP_ANNOTATION,
    ShimGroupPool,
    group_annotation,
)
from actors.core._shimretry import GroupedRemote
from actors.core.spec import decode_spec, encode_spec
from actors.testing import FakeContainerd, FakeRemote, open_fake_client

if TYPE_CHECKING:
    from pathlib import Path

NS = "groups"


def pool(shims: int = 2, per_shim: int = 3) -> ShimGroupPool:
    return ShimGroupPool(ShimGroups(shims=shims, max_per_shim=per_shim), prefix="p")


# -- the pool alone -------------------------------------------------------------------------


def test_members_rotate_over_the_slots() -> None:
    p = pool(shims=2, per_shim=3)
    names = [p.assign(f"c{i}") for i in range(6)]
    assert names == ["p-0-1", "p-1-2", "p-0-1", "p-1-2", "p-0-1", "p-1-2"]
    assert p.statistics().groups == 2
    assert p.statistics().members == 6


def test_a_full_group_is_replaced_by_a_new_generation() -> None:
    p = pool(shims=1, per_shim=2)
    assert [p.assign(f"c{i}") for i in range(5)] == ["p-0-1", "p-0-1", "p-0-2", "p-0-2", "p-0-3"]
    stats = p.statistics()
    assert (stats.groups, stats.retired_full, stats.generations) == (3, 2, 3)
    # Freeing a place in a retired (full) group never reopens it.
    p.release("c0")
    assert p.assign("c9") == "p-0-3"


def test_no_group_ever_exceeds_its_bound() -> None:
    p = pool(shims=3, per_shim=4)
    members: dict[str, set[str]] = {}
    for i in range(200):
        name = p.assign(f"c{i}")
        members.setdefault(name, set()).add(f"c{i}")
        if i % 3 == 0:
            p.release(f"c{i // 2}")
            for group in members.values():
                group.discard(f"c{i // 2}")
        assert all(len(m) <= 4 for m in members.values())


def test_an_emptied_group_is_never_reused() -> None:
    # Its shim exits with its last task: a newcomer must not race that shutdown.
    p = pool(shims=1, per_shim=5)
    assert p.assign("a") == "p-0-1"
    p.release("a")
    assert p.assign("b") == "p-0-2"
    assert p.statistics().retired_empty == 1
    assert p.statistics().groups == 1


def test_a_dead_shim_retires_its_group_and_members_stay_counted() -> None:
    p = pool(shims=1, per_shim=5)
    assert p.assign("a") == p.assign("b") == "p-0-1"
    assert p.needs_shim_pid("a")
    p.shim_seen("a", 4242)
    assert not p.needs_shim_pid("b")
    assert p.shim_pid("b") == 4242
    p.shim_died("b")
    p.shim_died("a")  # every member's exit reports it: counted once
    assert p.statistics().retired_dead == 1
    assert p.shim_pid("a") == 0
    assert p.assign("c") == "p-0-2"  # a fresh shim
    assert p.group_of("a") == "p-0-1"
    assert p.statistics().members == 3
    p.release("a")
    p.release("b")
    assert p.statistics().groups == 1


def test_re_assigning_an_id_moves_it() -> None:
    p = pool(shims=2, per_shim=5)
    assert p.assign("a") == "p-0-1"
    assert p.assign("a") == "p-1-2"
    assert p.statistics().members == 1


def test_restored_members_are_counted_but_their_group_takes_no_newcomers() -> None:
    p = pool(shims=1, per_shim=5)
    p.adopt("old1", "earlier-0-7")
    p.adopt("old2", "earlier-0-7")
    assert p.group_of("old1") == "earlier-0-7"
    assert p.assign("new") == "p-0-1"
    assert p.statistics().groups == 2
    p.release("old1")
    p.release("old2")
    assert p.statistics().groups == 1
    assert p.statistics().retired_empty == 0  # never one of our slots


def test_each_pool_has_its_own_names() -> None:
    a = ShimGroupPool(ShimGroups())
    b = ShimGroupPool(ShimGroups())
    assert a.assign("x") != b.assign("x")


@pytest.mark.parametrize("kwargs", [{"shims": 0}, {"max_per_shim": 0}, {"shims": -1}])
def test_bad_policies_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(InvalidArgument, match="shim groups"):
        ShimGroups(**kwargs)


def test_group_annotation_reads_only_the_annotation() -> None:
    spec = build_spec("/", ["true"], annotations={GROUP_ANNOTATION: "g"})
    assert group_annotation(encode_spec(spec)) == "g"
    assert group_annotation(encode_spec(build_spec("/", ["true"]))) is None
    assert group_annotation(b"") is None
    assert group_annotation(b"not json") is None


# -- through a client on the fake --------------------------------------------------------


async def test_the_client_sets_the_annotation_and_releases_on_delete(tmp_path: Path) -> None:
    fake = FakeContainerd()
    policy = ShimGroups(shims=2, max_per_shim=2)
    with trio.fail_after(10):
        async with open_fake_client(
            fake, NS, state_dir=tmp_path / "io", shim_groups=policy
        ) as client:
            before = client.statistics().rpc.total
            containers = [
                await client.new_container(f"c{i}", build_spec("/", ["true"])) for i in range(4)
            ]
            # Grouping costs no RPC: one Containers.Create each, as without it.
            assert client.statistics().rpc.total - before == 4
            groups = [decode_spec(c.spec_json).annotations[GROUP_ANNOTATION] for c in containers]
            assert groups[0] == groups[2] != groups[1] == groups[3]
            stats = client.statistics().shim_groups
            assert stats is not None
            assert (stats.groups, stats.members) == (2, 4)
            for c in containers:
                await c.delete()
            with trio.fail_after(5):
                while client.statistics().actors:
                    await trio.sleep(0.01)
            stats = client.statistics().shim_groups
            assert stats is not None
            assert (stats.groups, stats.members) == (0, 0)


async def test_a_spec_setting_the_group_itself_is_refused(tmp_path: Path) -> None:
    fake = FakeContainerd()
    with trio.fail_after(10):
        async with open_fake_client(
            fake, NS, state_dir=tmp_path / "io", shim_groups=ShimGroups()
        ) as client:
            before = client.statistics().rpc.total
            for key in (GROUP_ANNOTATION, "io.kubernetes.cri.sandbox-id"):
                spec = build_spec("/", ["true"], annotations={key: "victim"})
                with pytest.raises(InvalidArgument, match="shim groups own"):
                    await client.new_container("c", spec)
            assert client.statistics().rpc.total == before  # nothing sent
            stats = client.statistics().shim_groups
            assert stats is not None
            assert stats.members == 0


async def test_without_a_pool_the_spec_is_left_alone(tmp_path: Path) -> None:
    fake = FakeContainerd()
    with trio.fail_after(10):
        async with open_fake_client(fake, NS, state_dir=tmp_path / "io") as client:
            plain = await client.new_container("plain", build_spec("/", ["true"]))
            assert GROUP_ANNOTATION not in decode_spec(plain.spec_json).annotations
            assert client.statistics().shim_groups is None


async def test_a_second_client_adopts_the_groups_and_opens_new_ones(tmp_path: Path) -> None:
    fake = FakeContainerd()
    policy = ShimGroups(shims=1, max_per_shim=8)
    with trio.fail_after(10):
        async with open_fake_client(fake, NS, state_dir=tmp_path / "io", shim_groups=policy) as c:
            first = await c.new_container("a", build_spec("/", ["true"]))
            old_group = decode_spec(first.spec_json).annotations[GROUP_ANNOTATION]
        async with open_fake_client(fake, NS, state_dir=tmp_path / "io", shim_groups=policy) as c:
            stats = c.statistics().shim_groups
            assert stats is not None
            assert (stats.groups, stats.members) == (1, 1)
            second = await c.new_container("b", build_spec("/", ["true"]))
            new_group = decode_spec(second.spec_json).annotations[GROUP_ANNOTATION]
            assert new_group != old_group


# -- Tasks.Create meeting a group's shim on its way out ----------------------------------


class _Flaky(FakeRemote):
    """A remote whose Tasks.Create fails with ``errors`` first."""

    def __init__(self, errors: list[Exception]) -> None:
        super().__init__(FakeContainerd(), "n")
        self.errors = errors
        self.calls = 0

    async def tasks_create(self, container_id: str, **_: object) -> int:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return 42


def _grouped(flaky: _Flaky) -> GroupedRemote:
    return GroupedRemote(flaky)


GONE = "Tasks.Create: failed to start shim: start failed: dial unix /run/x: connect: no such file"


async def test_a_create_that_met_the_shim_exiting_is_repeated() -> None:
    flaky = _Flaky([Unknown(GONE), Unknown("ttrpc: closed")])
    remote = _grouped(flaky)
    with trio.fail_after(5):
        assert await remote.tasks_create("c") == 42
    assert (flaky.calls, remote.retries) == (3, 2)
    assert remote.namespace == "n"  # everything else passes through
    with trio.fail_after(5):
        assert await remote.tasks_list() == []
    assert remote.statistics().calls == {"Tasks.List": 1}  # the wrapped remote's counters


async def test_a_create_answered_by_a_shim_shutting_down_is_repeated() -> None:
    shutting_down = (
        "failed to create shim task: OCI runtime create failed: unable to retrieve OCI runtime "
        "error (open <path>/log.json: no such file or directory): shutdown: unknown"
    )
    flaky = _Flaky([Unknown(shutting_down)])
    remote = _grouped(flaky)
    with trio.fail_after(5):
        assert await remote.tasks_create("c") == 42
    assert (flaky.calls, remote.retries) == (2, 1)


async def test_other_create_failures_are_not_repeated_and_retries_are_bounded() -> None:
    flaky = _Flaky([InvalidArgument("bad spec")])
    with trio.fail_after(5), pytest.raises(InvalidArgument):
        await _grouped(flaky).tasks_create("c")
    assert flaky.calls == 1
    flaky = _Flaky([Unknown(GONE) for _ in range(5)])
    with trio.fail_after(5), pytest.raises(Unknown):
        await _grouped(flaky).tasks_create("c")
    assert flaky.calls == 3


# -- the serve flags ---------------------------------------------------------------------


def test_serve_flags_build_the_policy() -> None:
    from actors._serve import shim_groups_from
    from actors.control._cli import build_parser

    parser = build_parser()
    assert shim_groups_from(parser.parse_args(["serve"])) is None
    args = parser.parse_args(["serve", "--shim-groups", "4", "--shim-group-size", "8"])
    assert shim_groups_from(args) == ShimGroups(shims=4, max_per_shim=8)
    assert shim_groups_from(parser.parse_args(["serve", "--shim-groups", "2"])) == ShimGroups(
        shims=2, max_per_shim=16
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--shim-groups", "2", "--shim-group-size", "0"])
