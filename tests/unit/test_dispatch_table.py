"""The gateway's dispatch: one table (proto.METHODS), each params class leading to its handler."""

from __future__ import annotations

from actors.control import _protocol as proto
from actors.control import gateway


def test_every_method_has_its_own_params_class_and_one_handler() -> None:
    classes = list(proto.METHODS.values())
    assert len(set(classes)) == len(classes)
    assert set(gateway._HANDLERS) == set(classes)


def test_decoded_params_lead_to_the_method_s_handler() -> None:
    decoded = proto.decode_request(
        '{"jsonrpc":"2.0","id":1,"method":"task.wait","params":{"id":"a"}}'
    )
    assert isinstance(decoded, proto.Request)
    assert type(decoded.params) is proto.TaskWaitParams
    assert gateway._HANDLERS[type(decoded.params)] is gateway.Gateway._task_wait
