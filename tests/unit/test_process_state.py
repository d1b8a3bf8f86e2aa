# mypy: disable-error-code="unreachable, comparison-overlap"
# (mypy keeps an attribute narrowed across the state-changing calls these tests make.)
"""The process state machine alone: plain function calls, no event loop, no I/O.

Each test feeds inputs to :class:`ProcessMachine` and checks the effects it returns. The
mutants named in the docstrings (issue 11) are the changes each test exists to catch.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.core._process_state import (
    ENDED_WITH_TASK,
    EXIT_CODE_UNKNOWN,
    EXITS_REMEMBERED,
    VANISHED,
    Effect,
    Forget,
    ProcessMachine,
    ProcessRecord,
    ProcessState,
    Publish,
    TaskStatus,
    Wake,
    status_from_wire,
)
from actors.core.events import EventInfo, EventType, ExitStatus, TaskEvent

CID = "c1"
PID = 4242
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LATER = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)


def machine() -> ProcessMachine[ProcessRecord]:
    return ProcessMachine(CID, lambda pid, eid: ProcessRecord(process_id=pid, exec_id=eid))


def record(process_id: str = CID, exec_id: str = "") -> ProcessRecord:
    return ProcessRecord(process_id=process_id, exec_id=exec_id)


def running(pid: int = PID) -> ProcessMachine[ProcessRecord]:
    m = machine()
    m.created(record(), pid)
    m.started(CID, pid)
    return m


def event(kind: EventType, **info: object) -> TaskEvent:
    fields: dict[str, object] = {"container_id": CID, **info}
    return TaskEvent(type=kind, info=EventInfo(**fields), topic=f"/tasks/{kind}")  # type: ignore[arg-type]


def exit_event(code: int, *, pid: int = PID, process_id: str = CID) -> TaskEvent:
    return event(EventType.EXIT, process_id=process_id, pid=pid, exit_code=code, exited_at=NOW)


def published(effects: list[Effect]) -> list[TaskEvent]:
    return [e.event for e in effects if isinstance(e, Publish)]


def exits(effects: list[Effect]) -> list[tuple[str, int]]:
    return [(e.info.process_id, e.info.exit_code) for e in published(effects) if e.type == "exit"]


def woken(effects: list[Effect]) -> list[tuple[str, int]]:
    return [(e.process_id, e.exit.code) for e in effects if isinstance(e, Wake)]


# -- the table, row by row ----------------------------------------------------------------


def test_create_start_exit_delete() -> None:
    m = machine()
    init = record()
    m.created(init, PID)
    assert (init.status, init.pid, m.epoch) == (TaskStatus.CREATED, PID, 1)
    m.started(CID, PID)
    assert init.status is TaskStatus.RUNNING
    effects = m.event(exit_event(3))
    assert woken(effects) == [(CID, 3)]
    assert exits(effects) == [(CID, 3)]
    assert init.status is TaskStatus.STOPPED
    assert init.exit == ExitStatus(code=3, exited_at=NOW)
    status, effects = m.deleted(CID, 99, LATER)
    assert status.code == 3, "the exit event's status wins over Delete's"
    assert published(effects) == []
    assert [type(e) for e in effects] == [Forget]
    assert m.init is None
    assert m.epoch == 2


def test_every_event_but_a_duplicate_exit_is_published_in_order() -> None:
    m = running()
    for kind in (EventType.CREATE, EventType.START, EventType.PAUSED, EventType.RESUMED):
        assert published(m.event(event(kind, pid=PID))) == [event(kind, pid=PID)]
    unknown = event(EventType.UNKNOWN)
    assert published(m.event(unknown)) == [unknown]


def test_duplicate_exit_with_another_code_is_ignored() -> None:
    """Mutant: deleting the "exit already recorded" check."""
    m = running()
    assert exits(m.event(exit_event(1))) == [(CID, 1)]
    assert m.event(exit_event(137)) == []
    assert m.init is not None and m.init.exit is not None
    assert m.init.exit.code == 1
    assert m.duplicate_exits == 1


def test_exit_with_a_wrong_pid_is_ignored() -> None:
    """Mutant: deleting the "pid differs" check."""
    m = running()
    assert m.event(exit_event(9, pid=PID + 1)) == []
    assert m.init is not None and m.init.exit is None
    assert m.init.status is TaskStatus.RUNNING
    assert m.stale_exits == 1
    assert exits(m.event(exit_event(0))) == [(CID, 0)]


def test_exit_without_a_pid_is_taken() -> None:
    m = running()
    assert exits(m.event(exit_event(4, pid=0))) == [(CID, 4)]


def test_stale_epoch_reconcile_is_ignored() -> None:
    """Mutant: deleting the epoch check in reconcile."""
    m = running()
    stale = m.epoch - 1
    assert m.reconcile(stale, found=False, now=NOW) == []
    assert m.reconcile(stale, found=True, pid=PID, status=TaskStatus.STOPPED, now=NOW) == []
    assert m.init is not None and m.init.exit is None
    assert m.reconciled_exits == 0


def test_reconcile_reports_a_missed_exit_once() -> None:
    m = running()
    effects = m.reconcile(
        m.epoch,
        found=True,
        pid=PID,
        status=TaskStatus.STOPPED,
        exit_code=42,
        exited_at=NOW,
        now=LATER,
    )
    assert exits(effects) == [(CID, 42)]
    assert woken(effects) == [(CID, 42)]
    (synthetic,) = published(effects)
    assert synthetic.synthetic
    assert synthetic.info.exited_at == NOW
    assert synthetic.info.error == ""
    assert m.reconciled_exits == 1
    again = m.reconcile(m.epoch, found=True, pid=PID, status=TaskStatus.STOPPED, now=NOW)
    assert again == []
    assert m.event(exit_event(42)) == []  # the real event, late: a duplicate


def test_task_vanished_during_an_outage_gets_a_synthetic_exit() -> None:
    """Mutant: resync no longer synthesising an exit for a task that vanished."""
    m = running()
    m.exec_added(record("e1", "e1"))
    m.started("e1", PID + 1)
    effects = m.reconcile(m.epoch, found=False, now=LATER)
    assert sorted(exits(effects)) == [(CID, EXIT_CODE_UNKNOWN), ("e1", EXIT_CODE_UNKNOWN)]
    errors = {e.info.process_id: e.info.error for e in published(effects)}
    assert errors == {CID: VANISHED, "e1": ENDED_WITH_TASK}
    assert all(e.info.exited_at == LATER for e in published(effects))
    assert sorted(woken(effects)) == [(CID, 255), ("e1", 255)]


def test_reconcile_of_another_task_under_the_id_is_ignored() -> None:
    m = running()
    assert m.reconcile(m.epoch, found=True, pid=PID + 5, status=TaskStatus.STOPPED, now=NOW) == []
    assert m.init is not None and m.init.exit is None


@pytest.mark.parametrize("status", [TaskStatus.RUNNING, TaskStatus.PAUSED])
def test_reconcile_of_a_live_task_records_its_status(status: TaskStatus) -> None:
    m = running()
    assert m.reconcile(m.epoch, found=True, pid=PID, status=status, now=NOW) == []
    assert m.init is not None and m.init.status is status


def test_reconcile_without_a_task_or_after_its_exit_does_nothing() -> None:
    m = machine()
    assert m.reconcile(m.epoch, found=False, now=NOW) == []
    m = running()
    m.event(exit_event(0))
    assert m.reconcile(m.epoch, found=False, now=NOW) == []


def test_status_refresh_that_reveals_a_stop_publishes_the_exit() -> None:
    """The bug of issue 11: an exit first seen through status(refresh=True) was recorded
    without being published, and the later resync treated it as already delivered."""
    m = running()
    effects = m.refreshed(CID, status=TaskStatus.STOPPED, pid=PID, exit_code=6, exited_at=NOW)
    assert exits(effects) == [(CID, 6)]
    assert woken(effects) == [(CID, 6)]
    assert m.reconcile(m.epoch, found=True, pid=PID, status=TaskStatus.STOPPED, now=NOW) == []
    assert m.event(exit_event(6)) == []


def test_status_refresh_of_a_live_process_records_its_status() -> None:
    m = running()
    assert m.refreshed(CID, status=TaskStatus.PAUSED, pid=PID, exit_code=0, exited_at=None) == []
    assert m.init is not None and m.init.status is TaskStatus.PAUSED
    m.refreshed(CID, status=TaskStatus.UNKNOWN, pid=PID, exit_code=0, exited_at=None)
    assert m.init.status is TaskStatus.PAUSED, "UNKNOWN (shim unreachable) says nothing"
    assert (
        m.refreshed(CID, status=TaskStatus.STOPPED, pid=PID + 1, exit_code=1, exited_at=None) == []
    )
    m.event(exit_event(0))
    m.refreshed(CID, status=TaskStatus.RUNNING, pid=PID, exit_code=0, exited_at=None)
    assert m.init.status is TaskStatus.STOPPED


def test_delete_response_publishes_an_exit_never_heard() -> None:
    m = running()
    status, effects = m.deleted(CID, 137, NOW)
    assert status == ExitStatus(code=137, exited_at=NOW)
    assert exits(effects) == [(CID, 137)]
    assert published(effects)[0].synthetic
    # Its real exit event, arriving after the task is gone, is a duplicate.
    assert m.event(exit_event(137)) == []
    assert m.duplicate_exits == 1


def test_deleting_the_init_forgets_its_execs() -> None:
    m = running()
    m.exec_added(record("e1", "e1"))
    m.event(exit_event(0))
    _, effects = m.deleted(CID, 0, None)
    forgotten = [e.process_id for e in effects if isinstance(e, Forget)]
    assert forgotten == [CID, "e1"]
    assert m.execs == {}


def test_deleting_an_exec_keeps_the_init() -> None:
    m = running()
    m.exec_added(record("e1", "e1"))
    m.started("e1", PID + 1)
    assert exits(m.event(exit_event(2, pid=PID + 1, process_id="e1"))) == [("e1", 2)]
    status, effects = m.deleted("e1", 0, None)
    assert status.code == 2
    assert [e.process_id for e in effects if isinstance(e, Forget)] == ["e1"]
    assert m.init is not None and "e1" not in m.execs
    with pytest.raises(KeyError):
        m.deleted("e1", 0, None)


def test_exit_of_an_unknown_process_is_published_once_and_remembered() -> None:
    m = machine()
    assert exits(m.event(exit_event(5))) == [(CID, 5)]
    assert m.event(exit_event(5)) == []
    assert m.published_exit(CID, PID) == ExitStatus(code=5, exited_at=NOW)


def test_adopting_a_task_whose_exit_was_published_takes_it_as_known() -> None:
    m = machine()
    m.event(exit_event(5))
    init = record()
    m.adopt(init, pid=PID, status=TaskStatus.STOPPED)
    assert init.exit is not None and init.exit.code == 5
    assert init.status is TaskStatus.STOPPED
    assert m.reconcile(m.epoch, found=True, pid=PID, status=TaskStatus.STOPPED, now=NOW) == []


def test_adopting_another_task_under_the_id_does_not_take_an_old_exit() -> None:
    """Mutant: deleting the pid match when adopting a task."""
    m = machine()
    m.event(exit_event(5, pid=PID))
    init = record()
    epoch = m.adopt(init, pid=PID + 1, status=TaskStatus.STOPPED)
    assert init.exit is None
    assert init.status is TaskStatus.RUNNING, "stopped is reported by the reconcile"
    effects = m.reconcile(
        epoch, found=True, pid=PID + 1, status=TaskStatus.STOPPED, exit_code=7, now=NOW
    )
    assert exits(effects) == [(CID, 7)]


def test_adopting_a_live_task_keeps_its_status() -> None:
    m = machine()
    init = record()
    assert m.adopt(init, pid=PID, status=TaskStatus.PAUSED) == m.epoch == 1
    assert init.status is TaskStatus.PAUSED


def test_replayed_events_change_state_but_publish_nothing() -> None:
    m = running()
    assert m.event(event(EventType.PAUSED), replayed=True) == []
    assert m.init is not None and m.init.status is TaskStatus.PAUSED
    effects = m.event(exit_event(3), replayed=True)
    assert published(effects) == [] and woken(effects) == [(CID, 3)]
    assert m.event(exit_event(3)) == []
    m2 = machine()
    assert m2.event(exit_event(3), replayed=True) == []
    assert m2.published_exit(CID, PID) is not None


def test_oom_is_recorded_and_carried_by_the_exit() -> None:
    m = running()
    assert published(m.event(event(EventType.OOM))) == [event(EventType.OOM)]
    assert m.init is not None and m.init.oom_killed
    m.event(exit_event(137))
    assert m.init.exit is not None and m.init.exit.oom_killed
    assert m.init.snapshot(CID).oom_killed


def test_one_oom_per_task_is_published() -> None:
    # The shim repeats OOM on every change of memory.events once a kill happened.
    m = running()
    assert published(m.event(event(EventType.OOM))) == [event(EventType.OOM)]
    assert [m.event(event(EventType.OOM)) for _ in range(50)] == [[]] * 50
    assert m.duplicate_ooms == 50


def test_the_init_exit_wake_says_whether_it_was_learned_from_an_event() -> None:
    m = running()
    wake = next(e for e in m.event(exit_event(1)) if isinstance(e, Wake))
    assert not wake.synthetic


def test_oom_after_the_exit_updates_what_we_keep() -> None:
    m = running()
    m.event(exit_event(137))
    m.event(event(EventType.OOM))
    assert m.init is not None and m.init.exit is not None and m.init.exit.oom_killed
    assert machine().event(event(EventType.OOM)) == [Publish(event(EventType.OOM))]


def test_pause_resume_and_kill_acknowledged_show_at_once() -> None:
    m = running()
    m.paused()
    assert m.init is not None and m.init.status is TaskStatus.PAUSED
    m.resumed()
    assert m.init.status is TaskStatus.RUNNING
    m.exec_added(record("e1", "e1"))
    m.killed(CID, 15)
    assert (m.init.signalled, m.execs["e1"].signalled) == (15, 0)
    m.killed(CID, 9, all=True)
    assert (m.init.signalled, m.execs["e1"].signalled) == (9, 9)
    m.killed("nope", 9)
    m.event(exit_event(137))
    m.paused()
    m.resumed()
    m.killed(CID, 2)
    assert (m.init.status, m.init.signalled) == (TaskStatus.STOPPED, 9)
    snapshot = m.init.snapshot(CID)
    assert (snapshot.status, snapshot.signalled) == (TaskStatus.STOPPED, 9)


def test_events_of_a_task_we_never_created_are_tracked() -> None:
    """Another client (``ctr run``) created it: its events build its state."""
    m = machine()
    m.event(event(EventType.CREATE, process_id=CID, pid=PID))
    assert m.init is not None and (m.init.status, m.init.pid) == (TaskStatus.CREATED, PID)
    m.event(event(EventType.START, process_id=CID, pid=PID))
    assert m.init.status is TaskStatus.RUNNING
    m.event(event(EventType.EXEC_ADDED, process_id="e1"))
    assert m.execs["e1"].status is TaskStatus.CREATED
    m.event(event(EventType.EXEC_STARTED, process_id="e1", pid=PID + 1))
    assert (m.execs["e1"].status, m.execs["e1"].pid) == (TaskStatus.RUNNING, PID + 1)
    m.event(event(EventType.EXEC_STARTED, process_id="e2", pid=PID + 2))
    assert m.execs["e2"].status is TaskStatus.RUNNING
    m.event(event(EventType.EXEC_ADDED, process_id=""))
    assert set(m.execs) == {"e1", "e2"}


def test_late_create_of_a_task_we_let_go_of_is_ignored() -> None:
    m = running()
    m.event(exit_event(0))
    m.deleted(CID, 0, None)
    assert published(m.event(event(EventType.CREATE, pid=PID)))  # still heard by the Backend
    assert m.init is None
    m.created(record(), PID + 1)
    assert m.start_failed(CID) != []
    m.event(event(EventType.START, pid=PID + 1))
    assert m.init is None


def test_start_event_of_another_pid_does_not_change_the_task() -> None:
    m = running()
    m.event(event(EventType.START, pid=PID + 3))
    assert m.init is not None and m.init.pid == PID


def test_started_after_its_exit_stays_stopped() -> None:
    m = machine()
    m.created(record(), PID)
    m.event(exit_event(0))
    m.started(CID, PID)
    assert m.init is not None and m.init.status is TaskStatus.STOPPED
    m.started("nope", 1)
    assert m.start_failed("nope") == []


def test_reset_keeps_published_exits() -> None:
    m = running()
    m.event(exit_event(8))
    m.reset()
    assert m.init is None and m.epoch == 2
    init = record()
    m.adopt(init, pid=PID, status=TaskStatus.STOPPED)
    assert init.exit is not None and init.exit.code == 8, "not reported a second time"


def test_published_exits_are_bounded() -> None:
    m = machine()
    for i in range(EXITS_REMEMBERED + 10):
        m.event(exit_event(0, pid=i + 1, process_id=f"x{i}"))
    assert len(m.published_keys()) == EXITS_REMEMBERED
    assert m.published_exit("x0", 1) is None


def test_status_from_wire() -> None:
    assert [status_from_wire(i) for i in range(7)] == [
        TaskStatus.UNKNOWN,
        TaskStatus.CREATED,
        TaskStatus.RUNNING,
        TaskStatus.STOPPED,
        TaskStatus.PAUSED,
        TaskStatus.PAUSING,
        TaskStatus.UNKNOWN,
    ]


# -- every path that learns of an exit, in any order ----------------------------------------

_report = st.one_of(
    st.tuples(st.just("event"), st.sampled_from([PID, PID + 1, 0]), st.integers(0, 255)),
    st.tuples(st.just("reconcile"), st.sampled_from([0, 1]), st.integers(0, 255)),
    st.tuples(st.just("vanished"), st.sampled_from([0, 1]), st.just(0)),
    st.tuples(st.just("refresh"), st.sampled_from([PID, PID + 1]), st.integers(0, 255)),
    st.tuples(st.just("replayed"), st.sampled_from([PID, PID + 1]), st.integers(0, 255)),
    st.tuples(st.just("oom"), st.just(0), st.just(0)),
    st.tuples(st.just("pause"), st.just(0), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_report, max_size=12), st.booleans())
def test_an_exit_is_published_at_most_once_and_waiters_agree(
    reports: list[tuple[str, int, int]], delete_at_end: bool
) -> None:
    m = running()
    publishes: list[TaskEvent] = []
    wakes: list[tuple[str, int]] = []
    should_have_exited = False
    learned_by_replay = False
    for kind, arg, code in reports:
        epoch = m.epoch - arg if kind in ("reconcile", "vanished") else m.epoch
        effects: list[Effect]
        if kind == "event":
            effects = m.event(exit_event(code, pid=arg))
            should_have_exited |= arg != PID + 1
        elif kind == "replayed":
            effects = m.event(exit_event(code, pid=arg), replayed=True)
            should_have_exited |= arg == PID
        elif kind == "reconcile":
            effects = m.reconcile(
                epoch, found=True, pid=PID, status=TaskStatus.STOPPED, exit_code=code, now=NOW
            )
            should_have_exited |= arg == 0
        elif kind == "vanished":
            effects = m.reconcile(epoch, found=False, now=NOW)
            should_have_exited |= arg == 0
        elif kind == "refresh":
            effects = m.refreshed(
                CID, status=TaskStatus.STOPPED, pid=arg, exit_code=code, exited_at=NOW
            )
            should_have_exited |= arg == PID
        elif kind == "oom":
            effects = m.event(event(EventType.OOM))
        else:
            m.paused()
            effects = []
        publishes += [e for e in published(effects) if e.type is EventType.EXIT]
        if woken(effects) and not wakes:
            learned_by_replay = kind == "replayed"
        wakes += woken(effects)
    init = m.init
    assert init is not None
    assert len(wakes) <= 1
    assert len(publishes) <= 1
    if should_have_exited:
        assert init.exit is not None and init.status is TaskStatus.STOPPED
        assert wakes == [(CID, init.exit.code)]
        # Exactly one publish, unless the exit was first learned from a replayed event
        # (already published by the client when it was first heard).
        assert len(publishes) == (0 if learned_by_replay else 1)
        assert m.published_exit(CID, PID) == init.exit
        if publishes:
            assert publishes[0].info.exit_code == init.exit.code
            assert publishes[0].info.pid in (PID, 0)
    else:
        assert init.exit is None and publishes == [] and wakes == []
    if delete_at_end:
        status, effects = m.deleted(CID, 1, NOW)
        after = [e for e in published(effects) if e.type is EventType.EXIT]
        assert len(publishes) + len(after) == 1 or (should_have_exited and not publishes)
        assert status == (init.exit or ExitStatus(code=1, exited_at=NOW))


# -- exact effects (each of these killed a surviving mutmut mutant) ---------------------------


def test_synthetic_exits_carry_the_whole_event_info() -> None:
    m = running()
    (event_r,) = published(
        m.reconcile(
            m.epoch,
            found=True,
            pid=PID,
            status=TaskStatus.STOPPED,
            exit_code=3,
            exited_at=NOW,
            now=LATER,
        )
    )
    assert event_r == TaskEvent(
        type=EventType.EXIT,
        info=EventInfo(container_id=CID, process_id=CID, pid=PID, exit_code=3, exited_at=NOW),
        topic="/tasks/exit",
        synthetic=True,
    )
    m = running()
    (event_f,) = published(
        m.refreshed(CID, status=TaskStatus.STOPPED, pid=0, exit_code=4, exited_at=NOW)
    )
    assert event_f.info == EventInfo(
        container_id=CID, process_id=CID, pid=PID, exit_code=4, exited_at=NOW
    )
    assert (event_f.topic, event_f.synthetic) == ("/tasks/exit", True)
    m = running()
    _, effects = m.deleted(CID, 137, NOW)
    (event_d,) = published(effects)
    assert event_d.info == EventInfo(
        container_id=CID, process_id=CID, pid=PID, exit_code=137, exited_at=NOW
    )
    m = running()
    (event_v,) = published(m.reconcile(m.epoch, found=False, now=LATER))
    assert event_v.info == EventInfo(
        container_id=CID,
        process_id=CID,
        pid=PID,
        exit_code=EXIT_CODE_UNKNOWN,
        exited_at=LATER,
        error=VANISHED,
    )


def test_a_real_exit_is_published_as_the_very_event_received() -> None:
    m = running()
    real = exit_event(1)
    assert published(m.event(real))[0] is real
    unknown = exit_event(2, process_id="other", pid=7)
    assert published(m.event(unknown))[0] is unknown


def test_reconcile_defaults_and_counts() -> None:
    m = running()
    effects = m.reconcile(m.epoch, found=True, pid=PID, status=TaskStatus.STOPPED, now=NOW)
    assert exits(effects) == [(CID, 0)], "no exit status given means 0, as on the wire"
    m.deleted(CID, 0, None)
    m.created(record(), PID + 1)
    m.reconcile(m.epoch, found=False, now=NOW)
    assert m.reconciled_exits == 2


def test_reconcile_skips_execs_already_exited_and_still_reports_the_init() -> None:
    m = running()
    m.exec_added(record("e1", "e1"))
    m.started("e1", PID + 1)
    m.event(exit_event(0, pid=PID + 1, process_id="e1"))
    m.exec_added(record("e2", "e2"))
    effects = m.reconcile(m.epoch, found=False, now=NOW)
    assert sorted(exits(effects)) == [(CID, EXIT_CODE_UNKNOWN), ("e2", EXIT_CODE_UNKNOWN)]


def test_counters_count_every_occurrence() -> None:
    m = running()
    m.event(exit_event(0))
    m.event(exit_event(1))
    m.event(exit_event(2))
    assert m.duplicate_exits == 2
    m = running()
    m.event(exit_event(0, pid=1))
    m.event(exit_event(0, pid=2))
    assert m.stale_exits == 2
    m = machine()
    m.event(exit_event(0))
    m.event(exit_event(0))
    m.event(exit_event(0))
    assert m.duplicate_exits == 2


def test_epochs_move_by_one_per_identity_change() -> None:
    m = machine()
    m.created(record(), PID)
    m.deleted(CID, 0, None)
    m.created(record(), PID + 1)
    assert m.epoch == 3
    m.reset()
    assert m.adopt(record(), pid=PID + 1, status=TaskStatus.RUNNING) == 5
    m = machine()
    m.event(event(EventType.CREATE, pid=PID + 2))
    assert m.epoch == 1


def test_snapshot_says_everything_the_record_knows() -> None:
    m = running()
    m.event(event(EventType.OOM))
    m.killed(CID, 9)
    m.event(exit_event(137))
    assert m.init is not None
    assert m.init.snapshot(CID) == ProcessState(
        container_id=CID,
        process_id=CID,
        pid=PID,
        status=TaskStatus.STOPPED,
        exit=ExitStatus(code=137, exited_at=NOW, oom_killed=True),
        oom_killed=True,
        signalled=9,
    )


def test_forget_reasons_name_what_happened() -> None:
    m = running()
    m.exec_added(record("e1", "e1"))
    m.event(exit_event(0))
    _, effects = m.deleted(CID, 0, None)
    assert [(f.process_id, f.reason) for f in effects if isinstance(f, Forget)] == [
        (CID, "was deleted"),
        ("e1", "ended with its task"),
    ]
    m.created(record(), PID + 1)
    (failed,) = m.start_failed(CID)
    assert isinstance(failed, Forget)
    assert (failed.record.pid, failed.reason) == (PID + 1, "failed to start")
    with pytest.raises(KeyError, match="nope"):
        m.deleted("nope", 0, None)


def test_a_start_event_of_a_task_we_do_not_know_makes_it_running() -> None:
    m = machine()
    m.event(event(EventType.START, process_id=CID, pid=PID))
    assert m.init is not None
    assert (m.init.process_id, m.init.exec_id, m.init.status) == (CID, "", TaskStatus.RUNNING)
    assert m.epoch == 1


def test_events_fill_in_a_pid_we_lacked_and_keep_one_we_had() -> None:
    m = machine()
    m.created(record(), 0)
    m.event(event(EventType.START, pid=PID))
    assert m.init is not None and m.init.pid == PID
    m.event(event(EventType.START, pid=0))
    assert m.init.pid == PID
    m.event(event(EventType.PAUSED))
    m.event(event(EventType.RESUMED))
    assert m.init.status is TaskStatus.RUNNING


def test_exec_events_keep_our_record_and_name_new_ones() -> None:
    m = running()
    ours = record("e1", "e1")
    m.exec_added(ours)
    m.event(event(EventType.EXEC_ADDED, process_id="e1"))
    m.event(event(EventType.EXEC_STARTED, process_id="e1", pid=PID + 1))
    assert m.execs["e1"] is ours and ours.pid == PID + 1
    m.event(event(EventType.EXEC_ADDED, process_id="e2"))
    assert (m.execs["e2"].process_id, m.execs["e2"].exec_id) == ("e2", "e2")
    m.event(exit_event(0))
    m.event(event(EventType.EXEC_ADDED, process_id="e3"))
    assert "e3" not in m.execs, "no new exec in a task that exited"


def test_a_published_exit_of_an_untracked_init_blocks_its_late_create() -> None:
    m = machine()
    m.event(exit_event(0))
    m.event(event(EventType.CREATE, pid=PID))
    assert m.init is None


def test_retired_pids_are_bounded_oldest_first() -> None:
    m = machine()
    for i in range(EXITS_REMEMBERED + 1):
        m.created(record(), 1000 + i)
        m.start_failed(CID)
    m.event(event(EventType.CREATE, pid=1000 + EXITS_REMEMBERED))
    assert m.init is None, "the newest is remembered"
    m.event(event(EventType.CREATE, pid=1001))
    assert m.init is None, f"{EXITS_REMEMBERED} are remembered"
    m.event(event(EventType.CREATE, pid=1000))
    assert m.init is not None and m.init.pid == 1000, "the oldest was forgotten"


def test_more_exact_edges() -> None:
    m = running()
    effects = m.reconcile(m.epoch, found=True, status=TaskStatus.STOPPED, exit_code=2, now=NOW)
    assert exits(effects) == [(CID, 2)], "a reconcile that names no pid is about our task"
    m = machine()
    m.event(exit_event(0, pid=0))
    init = record()
    m.adopt(init, pid=0, status=TaskStatus.RUNNING)
    assert init.exit is None, "a pid-less exit is never matched to an adopted task"
    m = running()
    m.event(exit_event(0))
    m.deleted(CID, 0, None)
    m.event(event(EventType.CREATE, pid=PID + 9))
    assert m.epoch == 3
