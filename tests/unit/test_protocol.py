"""The control plane's sans-IO core: JSON-RPC decoding, error mapping, events, stdio frames."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import errors
from actors.control._frames import (
    STDIO_SUBPROTOCOLS,
    Channel,
    TerminalSize,
    close_frame,
    decode_frame,
    encode_frame,
    exit_status_message,
    failure_status_message,
    parse_close,
    parse_resize,
    resize_frame,
)
from actors.control._protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    METHODS,
    PARSE_ERROR,
    ContainerCreateParams,
    DecodeLimits,
    ErrorResponse,
    EventAction,
    EventFilter,
    EventFilters,
    EventMessage,
    ProcessKillParams,
    Request,
    TaskKillParams,
    UserParams,
    decode_request,
    encode_error,
    encode_notification,
    encode_result,
    error_response,
    event_message,
    parse_signal,
)
from actors.core._ids import is_valid_id
from actors.core.events import EventInfo, EventType, TaskEvent

# One valid params object per method; the test below insists every method is covered.
VALID_PARAMS: dict[str, dict[str, Any]] = {
    "version": {},
    "container.create": {
        "id": "web-1",
        "rootfs": "/srv/rootfs/busybox",
        "args": ["sh", "-c", "echo hi"],
        "env": ["A=1"],
        "cwd": "/tmp",
        "user": {"uid": 1000, "gid": 1000},
        "terminal": True,
        "hostname": "web-1",
        "labels": {"app": "web"},
        "memory_limit": 64 << 20,
        "pids_limit": 100,
        "cpu_shares": 512,
        "mounts": [{"source": "/srv/data", "destination": "/data", "readonly": False}],
        "namespaces": ["pid", "network", "ipc", "uts", "mount"],
        "capabilities_add": ["NET_ADMIN"],
        "privileged": False,
        "hooks": {"prestart": [{"path": "/bin/true"}]},
    },
    "container.list": {},
    "container.inspect": {"id": "c1"},
    "container.delete": {"id": "c1"},
    "task.start": {"id": "c1", "stdin": True},
    "task.kill": {"id": "c1", "signal": "SIGTERM", "all": True},
    "task.pause": {"id": "c1"},
    "task.resume": {"id": "c1"},
    "task.stats": {"id": "c1"},
    "task.pids": {"id": "c1"},
    "task.top": {"id": "c1"},
    "container.stop": {"id": "c1", "timeout": 2, "signal": "TERM"},
    "task.status": {"id": "c1", "refresh": True},
    "task.resize": {"id": "c1", "width": 80, "height": 24},
    "task.update": {"id": "c1", "memory_limit": 1 << 20},
    "task.delete": {"id": "c1"},
    "task.wait": {"id": "c1"},
    "process.exec": {
        "id": "c1",
        "exec_id": "e1",
        "args": ["ls"],
        "env": ["B=2"],
        "cwd": "/",
        "terminal": False,
        "stdin": True,
    },
    "process.kill": {"id": "c1", "exec_id": "e1", "signal": 9},
    "process.delete": {"id": "c1", "exec_id": "e1"},
    "process.wait": {"id": "c1", "exec_id": "e1"},
    "events.subscribe": {"filters": {"container": ["c1"], "event": ["die"], "label": ["a=b"]}},
    "events.unsubscribe": {"subscription": "s1"},
    "stdio.attach": {"id": "c1", "exec_id": "e1"},
    "image.pull": {
        "reference": "localhost:5000/app:1",
        "platform": "linux/amd64",
        "progress": "p1",
    },
    "image.list": {},
    "image.inspect": {"name": "busybox"},
    "image.remove": {"name": "busybox"},
    "image.load": {"data": "AAAA", "done": False},
    "image.save": {"names": ["busybox"]},
    "container.logs": {"id": "c1", "follow": True, "tail": 3, "since": 1, "timestamps": True},
}


def message(method: str = "version", params: Any = None, *, id: Any = 1, **extra: Any) -> bytes:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, **extra}
    if id is not ...:
        body["id"] = id
    if params is not None:
        body["params"] = params
    return json.dumps(body).encode()


def error_of(data: str | bytes, **kwargs: Any) -> ErrorResponse:
    result = decode_request(data, **kwargs)
    assert isinstance(result, ErrorResponse), result
    return result


# --- decoding -------------------------------------------------------------------------------


def test_every_method_has_a_sample() -> None:
    assert set(VALID_PARAMS) == set(METHODS)


@pytest.mark.parametrize("method", sorted(VALID_PARAMS))
def test_every_method_decodes(method: str) -> None:
    request = decode_request(message(method, VALID_PARAMS[method], id="r-1"))
    assert isinstance(request, Request)
    assert (request.id, request.method, request.notification) == ("r-1", method, False)
    assert type(request.params) is METHODS[method]


def test_create_params_values_and_defaults() -> None:
    request = decode_request(message("container.create", {"id": "a", "args": ["true"]}))
    assert isinstance(request, Request)
    params = request.params
    assert isinstance(params, ContainerCreateParams)
    assert params.args == ["true"]
    assert (params.rootfs, params.env, params.user, params.hooks, params.namespaces) == (None,) * 5
    assert (params.privileged, params.terminal, params.mounts, params.labels) == (
        False,
        False,
        [],
        {},
    )

    full = decode_request(message("container.create", VALID_PARAMS["container.create"]))
    assert isinstance(full, Request)
    assert isinstance(full.params, ContainerCreateParams)
    assert full.params.mounts[0].readonly is False
    assert isinstance(full.params.user, UserParams)
    assert full.params.user.uid == 1000


def test_signals_are_exposed_as_numbers() -> None:
    kill = decode_request(message("task.kill", {"id": "c", "signal": "KILL"}))
    assert isinstance(kill, Request)
    assert isinstance(kill.params, TaskKillParams)
    assert kill.params.signo == 9
    pkill = decode_request(message("process.kill", {"id": "c", "exec_id": "e", "signal": "15"}))
    assert isinstance(pkill, Request)
    assert isinstance(pkill.params, ProcessKillParams)
    assert pkill.params.signo == 15


def test_text_and_buffer_inputs_are_accepted() -> None:
    raw = message("version")
    for data in (raw.decode(), raw, bytearray(raw), memoryview(raw)):
        assert isinstance(decode_request(data), Request)


def test_notifications_and_null_ids() -> None:
    notification = decode_request(message("version", id=...))
    assert isinstance(notification, Request)
    assert notification.notification
    assert notification.id is None
    null_id = decode_request(message("version", id=None))
    assert isinstance(null_id, Request)
    assert not null_id.notification
    unknown = error_of(message("nope", id=...))
    assert unknown.notification


@pytest.mark.parametrize(
    "data",
    [b"{", b'{"jsonrpc": "2.0",', b"not json", b"", b'{"a":1} trailing', "{\"x\": 'single'}"],
)
def test_malformed_json_is_a_parse_error(data: str | bytes) -> None:
    error = error_of(data)
    assert (error.code, error.message, error.id) == (PARSE_ERROR, "Parse error", None)


@pytest.mark.parametrize(
    "data",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"version","x":"\xff"}',
        b"\xc3\x28",
        b'{"jsonrpc":"2.0","id":1,"method":"version","params":{"\xed\xa0\x80":1}}',
        '{"jsonrpc":"2.0","id":1,"method":"\ud800"}',
    ],
)
def test_invalid_utf8_is_a_parse_error(data: str | bytes) -> None:
    error = error_of(data)
    assert error.code == PARSE_ERROR
    assert error.data == {"reason": "invalid UTF-8"}


def test_batches_are_refused() -> None:
    error = error_of(b"[" + message("version") + b"]")
    assert error.code == INVALID_REQUEST
    assert error.data is not None
    assert "batch" in error.data["reason"]
    # An array that is not even JSON is still a parse error first.
    assert error_of(b"[1,").code == PARSE_ERROR


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (b'{"jsonrpc":"2.0","id":7}', "$"),
        (b'{"jsonrpc":"1.0","id":7,"method":"version"}', "$.jsonrpc"),
        (b'{"jsonrpc":"2.0","id":7,"method":5}', "$.method"),
        (b'{"jsonrpc":"2.0","id":7,"method":"version","extra":true}', "$"),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"version"}', "$.id"),
        (b'{"jsonrpc":"2.0","id":[1],"method":"version"}', "$.id"),
        (b'"just a string"', "$"),
    ],
)
def test_wrong_envelopes_are_invalid_requests(data: bytes, path: str) -> None:
    error = error_of(data)
    assert error.code == INVALID_REQUEST
    assert error.data is not None
    assert error.data["path"] == path
    # The id is echoed when it can be read, so the client can match the error to its call.
    assert error.id == (7 if b'"id":7' in data else None)


def test_huge_ids_are_not_echoed() -> None:
    assert error_of(message(id="x" * 300)).id is None
    assert error_of(message(id=2**60)).id is None


def test_unknown_method() -> None:
    error = error_of(message("container.explode", {"id": "c1"}, id=3))
    assert (error.code, error.id, error.data) == (
        METHOD_NOT_FOUND,
        3,
        {"method": "container.explode"},
    )


@pytest.mark.parametrize(
    ("method", "params", "path", "needle"),
    [
        ("container.inspect", {"id": 5}, "$.params.id", "Expected `str`"),
        ("container.inspect", {}, "$.params", "missing required field `id`"),
        ("container.inspect", {"id": "c", "force": True}, "$.params", "unknown field `force`"),
        ("container.inspect", {"id": "a" * 77}, "$.params.id", "length <= 76"),
        ("container.inspect", {"id": "../x"}, "$.params.id", "identifier"),
        ("container.inspect", {"id": "a\nb"}, "$.params.id", "identifier"),
        ("container.inspect", {"id": "abc\n"}, "$.params.id", "identifier"),
        ("container.inspect", [1], "$.params", "Expected `object`, got `array`"),
        ("container.inspect", "c1", "$.params", "Expected `object`"),
        ("process.wait", {"id": "c", "exec_id": "-rf"}, "$.params.exec_id", "identifier"),
        ("container.create", {"id": "c", "args": []}, "$.params.args", "length >= 1"),
        ("container.create", {"id": "c", "args": ["x" * 4097]}, "$.params.args[0]", "length"),
        ("container.create", {"id": "c", "args": ["a"] * 257}, "$.params.args", "length"),
        ("container.create", {"id": "c", "args": ["a\u0000"]}, "$.params.args[0]", "NUL"),
        ("container.create", {"id": "c", "args": ["a"], "env": ["NOEQ"]}, "$.params.env[0]", "KEY"),
        ("container.create", {"id": "c", "args": ["a"], "cwd": "rel"}, "$.params.cwd", "absolute"),
        (
            "container.create",
            {"id": "c", "args": ["a"], "mounts": [{"source": "/a", "dest": "/b"}]},
            "$.params.mounts[0]",
            "unknown field",
        ),
        (
            "container.create",
            {"id": "c", "args": ["a"], "user": {"uid": 2**32, "gid": 0}},
            "$.params.user.uid",
            "<=",
        ),
        (
            "container.create",
            {"id": "c", "args": ["a"], "terminal": "yes"},
            "$.params.terminal",
            "bool",
        ),
        (
            "container.create",
            {"id": "c", "args": ["a"], "namespaces": ["pid", "time"]},
            "$.params.namespaces[1]",
            "Invalid enum value",
        ),
        ("task.kill", {"id": "c", "signal": "SIGNOPE"}, "$.params.signal", "invalid signal"),
        ("task.kill", {"id": "c", "signal": 0}, "$.params.signal", "invalid signal"),
        ("task.kill", {"id": "c", "signal": True}, "$.params.signal", "got `bool`"),
        ("task.resize", {"id": "c", "width": 0, "height": 1}, "$.params.width", ">= 1"),
        ("task.update", {"id": "c"}, "$.params", "nothing to update"),
        ("events.subscribe", {"filters": {"image": ["x"]}}, "$.params.filters", "unknown field"),
        (
            "events.subscribe",
            {"filters": {"event": ["explode"]}},
            "$.params.filters.event[0]",
            "enum",
        ),
        ("events.unsubscribe", {"subscription": "../s"}, "$.params.subscription", "letters"),
        ("container.logs", {"id": "c", "tail": -1}, "$.params.tail", ">= 0"),
        ("container.logs", {"id": "c", "since": 5, "until": 4}, "$.params.since", "after until"),
        ("container.logs", {"id": "c", "stdout": False, "stderr": False}, "$.params", "nothing"),
        (
            "container.create",
            {"id": "c", "args": ["a"], "log": {"max_size": 10}},
            "$.params.log.max_size",
            ">= 4096",
        ),
        (
            "container.create",
            {"id": "c", "args": ["a"], "log": {"mode": "drop-everything"}},
            "$.params.log.mode",
            "Invalid enum value",
        ),
    ],
)
def test_invalid_params(method: str, params: Any, path: str, needle: str) -> None:
    error = error_of(message(method, params, id="q"))
    assert (error.code, error.message, error.id) == (INVALID_PARAMS, "Invalid params", "q")
    assert error.data is not None
    assert error.data["path"] == path
    assert needle in error.data["reason"]


def test_params_are_required_to_be_present_when_they_have_required_fields() -> None:
    assert error_of(message("task.start")).code == INVALID_PARAMS
    assert isinstance(decode_request(message("container.list")), Request)


def test_oversized_messages_are_refused_before_parsing() -> None:
    big = message("version", {"pad": "x" * (1 << 20)})
    error = error_of(big)
    assert error.code == INVALID_REQUEST
    assert error.data is not None
    assert "larger than" in error.data["reason"]
    assert error_of(big.decode()).code == INVALID_REQUEST
    small = DecodeLimits(max_message_bytes=64)
    assert error_of(message("container.inspect", {"id": "a" * 60}), limits=small).code == (
        INVALID_REQUEST
    )


def test_deep_nesting_is_refused() -> None:
    deep = {"id": "c", "args": ["a"], "hooks": {"x": json.loads("[" * 100 + "]" * 100)}}
    error = error_of(message("container.create", deep, id=4))
    assert error.code == INVALID_REQUEST
    assert error.data == {"reason": "nesting is deeper than 64"}
    assert error.id == 4
    # Far beyond the interpreter's recursion limit: still a clean error.
    very_deep = b'{"jsonrpc":"2.0","id":1,"method":"version","params":' + b"[" * 200_000
    assert error_of(very_deep + b"]" * 200_000 + b"}").code == INVALID_REQUEST
    # Brackets inside strings are not nesting.
    padded = {"id": "c", "args": ["[" * 500], "env": ["A=" + "{" * 500]}
    assert isinstance(decode_request(message("container.create", padded)), Request)


def test_huge_arrays_and_strings_are_refused() -> None:
    wide = {"id": "c", "args": ["a"], "hooks": {"x": [0] * 10_001}}
    error = error_of(message("container.create", wide))
    assert error.code == INVALID_REQUEST
    assert error.data is not None
    assert "more than 10000 items" in error.data["reason"]
    ok = {"id": "c", "args": ["a"], "hooks": {"x": [0] * 9_999}}
    assert isinstance(decode_request(message("container.create", ok)), Request)
    limits = DecodeLimits(max_string_length=100)
    long_string = message("container.create", {"id": "c", "args": ["a" * 101]})
    error = error_of(long_string, limits=limits)
    assert error.data is not None
    assert "longer than 100 bytes" in error.data["reason"]


def test_limits_scale_down() -> None:
    shallow = DecodeLimits(max_depth=2)
    assert isinstance(decode_request(message("container.list", {}), limits=shallow), Request)
    assert error_of(message("container.list", {"x": [1]}), limits=shallow).code == INVALID_REQUEST
    # Objects count as containers too: the envelope has four members.
    narrow = DecodeLimits(max_array_length=5)
    five = message("container.create", {"id": "c", "args": ["a"] * 5})
    assert isinstance(decode_request(five, limits=narrow), Request)
    six = message("container.create", {"id": "c", "args": ["a"] * 6})
    assert error_of(six, limits=narrow).code == INVALID_REQUEST


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_ids_agree_with_validate_id(candidate: str) -> None:
    result = decode_request(message("container.inspect", {"id": candidate}))
    assert isinstance(result, Request) == is_valid_id(candidate)


# --- signals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (9, 9),
        (1, 1),
        (64, 64),
        ("9", 9),
        ("SIGTERM", 15),
        ("TERM", 15),
        ("sigkill", 9),
        ("hup", 1),
        ("SIGRTMIN+3", 37),
        ("RTMAX-1", 63),
    ],
)
def test_parse_signal(value: int | str, expected: int) -> None:
    assert parse_signal(value) == expected


@pytest.mark.parametrize("value", [0, 65, -9, "0", "65", "", "SIG", "NOPE", "9x", "RTMIN+40", True])
def test_parse_signal_rejects(value: Any) -> None:
    with pytest.raises(errors.InvalidArgument, match="invalid signal"):
        parse_signal(value)


# --- replies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code", "status"),
    [
        (errors.NotFound("no such container: c1"), -32005, "NOT_FOUND"),
        (errors.AlreadyExists("c1 exists"), -32006, "ALREADY_EXISTS"),
        (errors.FailedPrecondition("task running"), -32009, "FAILED_PRECONDITION"),
        (errors.Unavailable("containerd down"), -32014, "UNAVAILABLE"),
        (errors.DeadlineExceeded("slow"), -32004, "DEADLINE_EXCEEDED"),
        (errors.InvalidArgument("bad", local=True), -32003, "INVALID_ARGUMENT"),
        (errors.PermissionDenied("no", local=True), -32007, "PERMISSION_DENIED"),
    ],
)
def test_domain_errors_keep_their_status(
    exc: errors.ContainerdError, code: int, status: str
) -> None:
    reply = json.loads(encode_error(error_response("r9", exc)))
    assert reply == {
        "jsonrpc": "2.0",
        "id": "r9",
        "error": {
            "code": code,
            "message": exc.message,
            "data": {"status": status, "grpc_code": exc.grpc_code, "local": exc.local},
        },
    }


def test_actor_crash_is_retryable() -> None:
    reply = error_response(1, errors.ActorCrashed("boom at /var/lib/secret"))
    assert reply.code == -32014
    assert reply.data == {"status": "UNAVAILABLE", "grpc_code": 14, "local": True}
    assert "/var/lib" not in reply.message


def test_unexpected_errors_leak_nothing() -> None:
    secret = "token=abc123 at /var/lib/containerd-actors/state"
    encoded = encode_error(error_response(5, RuntimeError(secret)))
    assert json.loads(encoded) == {
        "jsonrpc": "2.0",
        "id": 5,
        "error": {"code": INTERNAL_ERROR, "message": "Internal error"},
    }


def test_encode_error_never_raises() -> None:
    broken = ErrorResponse(id="\ud800", code=-32005, message="\ud800", data={"x": object()})
    assert json.loads(encode_error(broken)) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32005, "message": "Server error"},
    }


def test_result_and_notification_shapes() -> None:
    assert json.loads(encode_result(3, {"ok": True})) == {
        "jsonrpc": "2.0",
        "id": 3,
        "result": {"ok": True},
    }
    assert json.loads(encode_result("a", None)) == {"jsonrpc": "2.0", "id": "a", "result": None}
    assert json.loads(encode_notification("event", {"n": 1})) == {
        "jsonrpc": "2.0",
        "method": "event",
        "params": {"n": 1},
    }


# --- events ---------------------------------------------------------------------------------

STAMP = dt.datetime(2026, 8, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
STAMP_NS = 1_785_585_600_123_456_000


def task_event(kind: EventType, **info: Any) -> TaskEvent:
    info.setdefault("container_id", "c1")
    return TaskEvent(
        type=kind,
        info=EventInfo(**info),
        topic="/tasks/" + kind.value,
        namespace="ns1",
        timestamp=STAMP,
    )


@pytest.mark.parametrize(
    ("event", "action", "extra"),
    [
        (task_event(EventType.CREATE, process_id="c1", pid=10), "create", {"pid": "10"}),
        (task_event(EventType.START, process_id="c1", pid=10), "start", {"pid": "10"}),
        (
            task_event(EventType.EXIT, process_id="c1", pid=10, exit_code=3),
            "die",
            {"pid": "10", "exitCode": "3"},
        ),
        (
            task_event(EventType.EXIT, process_id="e1", pid=11, exit_code=0),
            "exec_die",
            {"pid": "11", "exitCode": "0", "execID": "e1"},
        ),
        (task_event(EventType.OOM), "oom", {}),
        (task_event(EventType.EXEC_ADDED, process_id="e1"), "exec_create", {"execID": "e1"}),
        (
            task_event(EventType.EXEC_STARTED, process_id="e1", pid=12),
            "exec_start",
            {"execID": "e1", "pid": "12"},
        ),
        (task_event(EventType.PAUSED), "pause", {}),
        (task_event(EventType.RESUMED), "unpause", {}),
    ],
)
def test_event_messages(event: TaskEvent, action: str, extra: dict[str, str]) -> None:
    wire = json.loads(msgspec.json.encode(event_message(event, {"app": "web"})))
    assert wire == {
        "Type": "container",
        "Action": action,
        "Actor": {"ID": "c1", "Attributes": {"app": "web", "name": "c1", **extra}},
        "scope": "local",
        "time": STAMP_NS // 10**9,
        "timeNano": STAMP_NS,
        "topic": event.topic,
        "namespace": "ns1",
    }


def test_every_event_type_has_an_action() -> None:
    for kind in EventType:
        assert event_message(task_event(kind, process_id="c1")).action in set(EventAction)


def test_event_labels_cannot_spoof_our_attributes() -> None:
    event = task_event(EventType.EXIT, process_id="c1", exit_code=1)
    attributes = event_message(
        event, {"exitCode": "0", "execID": "x", "name": "web"}
    ).actor.attributes
    assert attributes == {"exitCode": "1", "execID": "x", "name": "c1"}


def test_event_time_falls_back_to_exit_then_now() -> None:
    info = EventInfo(container_id="c1", process_id="c1", exited_at=STAMP)
    synthetic = TaskEvent(type=EventType.EXIT, info=info, topic="/tasks/exit", synthetic=True)
    assert event_message(synthetic).time_nano == STAMP_NS
    bare = TaskEvent(type=EventType.OOM, info=EventInfo(container_id="c1"), topic="/tasks/oom")
    assert event_message(bare, now_ns=5_000_000_123).time == 5
    assert event_message(bare).time > 1_700_000_000


def _msg(action: str, container: str = "c1", **attributes: str) -> EventMessage:
    event = {
        "create": EventType.CREATE,
        "die": EventType.EXIT,
        "oom": EventType.OOM,
        "pause": EventType.PAUSED,
    }[action]
    return event_message(task_event(event, container_id=container), attributes)


def test_filter_semantics() -> None:
    def build(**filters: list[str]) -> EventFilter:
        return EventFilter.from_params(msgspec.convert(filters, EventFilters))

    everything = EventFilter.from_params(None)
    assert everything.matches(_msg("die"))

    # Same key: any value.
    either = build(event=["die", "oom"])
    assert either.matches(_msg("die"))
    assert either.matches(_msg("oom"))
    assert not either.matches(_msg("create"))

    # Different keys: all of them.
    both = build(event=["die"], container=["c2"])
    assert both.matches(_msg("die", "c2"))
    assert not both.matches(_msg("die", "c1"))
    assert not both.matches(_msg("oom", "c2"))

    # Containers match by id (their name); a label "name" cannot claim another's events.
    named = build(container=["web"])
    assert named.matches(_msg("die", "web"))
    assert not named.matches(_msg("die", "c9", name="web"))

    # Labels: "key" means present, "key=value" exact; several labels must all match.
    assert build(label=["app"]).matches(_msg("die", app="web"))
    assert not build(label=["app"]).matches(_msg("die", tier="db"))
    assert build(label=["app=web"]).matches(_msg("die", app="web"))
    assert not build(label=["app=web"]).matches(_msg("die", app="webx"))
    assert build(label=["app=a=b"]).matches(_msg("die", app="a=b"))
    two = build(label=["app=web", "tier=db"])
    assert two.matches(_msg("die", app="web", tier="db"))
    assert not two.matches(_msg("die", app="web"))


# --- stdio frames ---------------------------------------------------------------------------


def test_subprotocols() -> None:
    assert STDIO_SUBPROTOCOLS == ("v5.channel.k8s.io", "v4.channel.k8s.io")


@pytest.mark.parametrize("channel", list(Channel))
def test_frames_round_trip(channel: Channel) -> None:
    frame = encode_frame(channel, b"payload\x00\xff")
    assert frame[0] == channel
    assert decode_frame(frame) == (channel, b"payload\x00\xff")
    assert decode_frame(bytearray(frame)) == (channel, b"payload\x00\xff")
    assert decode_frame(encode_frame(channel, b"")) == (channel, b"")


def test_frames_that_are_ignored() -> None:
    assert decode_frame(b"") is None
    assert decode_frame(b"\x05data") is None
    assert decode_frame(b"\xfe") is None
    # CLOSE only exists from v5 on.
    assert decode_frame(close_frame(0), subprotocol="v4.channel.k8s.io") is None
    assert decode_frame(close_frame(0)) == (Channel.CLOSE, b"\x00")


def test_encode_frame_rejects_bad_channels() -> None:
    with pytest.raises(errors.InvalidArgument):
        encode_frame(256, b"")
    with pytest.raises(errors.InvalidArgument):
        encode_frame(-1, b"")


def test_resize() -> None:
    decoded = decode_frame(resize_frame(120, 40))
    assert decoded is not None
    channel, payload = decoded
    assert channel is Channel.RESIZE
    assert json.loads(payload) == {"Width": 120, "Height": 40}
    assert parse_resize(payload) == TerminalSize(width=120, height=40)
    assert parse_resize(b'{"Height": 1, "Width": 65535}') == TerminalSize(width=65535, height=1)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{}",
        b'{"Width": 80}',
        b'{"Width": 0, "Height": 24}',
        b'{"Width": 65536, "Height": 24}',
        b'{"Width": "80", "Height": 24}',
        b'{"width": 80, "height": 24}',
        b'{"Width": 80, "Height": 24, "X": 1}',
        b"[80, 24]",
        b"\xff",
        b'{"Width": 80, "Height": 24}' + b" " * 300,
    ],
)
def test_resize_rejects(payload: bytes) -> None:
    with pytest.raises(errors.InvalidArgument, match="invalid resize"):
        parse_resize(payload)


def test_close() -> None:
    assert parse_close(b"\x00") is Channel.STDIN
    assert parse_close(b"\x02") is Channel.STDERR
    for payload in (b"", b"\x00\x00", b"\x03", b"\x04", b"\xff"):
        with pytest.raises(errors.InvalidArgument, match="invalid close"):
            parse_close(payload)


def test_exit_status_messages() -> None:
    assert json.loads(exit_status_message(0)) == {"metadata": {}, "status": "Success"}
    failure = json.loads(exit_status_message(3))
    assert failure["status"] == "Failure"
    assert failure["reason"] == "NonZeroExitCode"
    assert failure["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}
    other = json.loads(failure_status_message("exec failed"))
    assert (other["status"], other["message"]) == ("Failure", "exec failed")


# --- fuzzing --------------------------------------------------------------------------------


def _valid_messages() -> st.SearchStrategy[bytes]:
    return st.sampled_from([message(m, p, id=i) for i, (m, p) in enumerate(VALID_PARAMS.items())])


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(_valid_messages()))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data)))
        choice = draw(st.integers(0, 2))
        if choice == 0 and data:
            del data[min(position, len(data) - 1)]
        elif choice == 1:
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif data:
            data[min(position, len(data) - 1)] = draw(st.sampled_from(b'[]{},:"\\0a\xff'))
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200), _mutated()))
def test_decode_request_never_raises(data: str | bytes) -> None:
    result = decode_request(data)
    if isinstance(result, Request):
        # Whatever got through is fully validated: a known method with its own params.
        assert isinstance(result.params, METHODS[result.method])
    else:
        assert result.code != INTERNAL_ERROR
        json.loads(encode_error(result))


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=20,
    ),
    st.sampled_from(sorted(METHODS)),
)
def test_random_params_never_raise(params: Any, method: str) -> None:
    result = decode_request(message(method, params))
    # decode_request's catch-all answers INTERNAL_ERROR, so "it returned" proves nothing:
    # random params must be either accepted as the method's params or refused as bad
    # params (or a bad request: params that are not an object), never a decoder failure.
    if isinstance(result, Request):
        assert (result.id, result.method) == (1, method)
        assert isinstance(result.params, METHODS[method])
    else:
        assert result.code in (INVALID_PARAMS, INVALID_REQUEST), result
        assert result.id == 1
        assert result.message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.sampled_from(STDIO_SUBPROTOCOLS))
def test_decode_frame_never_raises(frame: bytes, subprotocol: str) -> None:
    decoded = decode_frame(frame, subprotocol=subprotocol)
    if decoded is not None:
        channel, payload = decoded
        assert encode_frame(channel, payload) == frame
        for parse in (parse_resize, parse_close):
            try:
                parse(payload)
            except errors.InvalidArgument:
                pass


@pytest.mark.parametrize(
    ("method", "params", "path"),
    [
        ("image.pull", {"reference": ""}, "$.params.reference"),
        ("image.pull", {"reference": "a\u0000"}, "$.params.reference"),
        ("image.pull", {"reference": "a", "platform": "linux"}, "$.params.platform"),
        ("image.pull", {"reference": "a", "progress": "a b"}, "$.params.progress"),
        ("image.load", {"data": "A" * 800_000}, "$.params.data"),
        ("image.save", {"names": ["a"], "offset": -1}, "$.params.offset"),
        ("container.create", {"id": "c", "image": ""}, "$.params.image"),
    ],
)
def test_image_params_are_checked(method: str, params: dict[str, Any], path: str) -> None:
    error = error_of(message(method, params))
    assert error.code == INVALID_PARAMS
    assert error.data is not None and error.data["path"] == path


def test_pull_params_never_show_the_password() -> None:
    from actors.control._protocol import ImagePullParams

    params = ImagePullParams(reference="r", username="u", password="s3cret-value")
    assert "s3cret" not in repr(params)
