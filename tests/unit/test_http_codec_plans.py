"""A repeated binary JSON header is decoded from its plan: the same tensors, and the same errors,
as decoding it afresh, whatever the header's length (aligned or not) and the inputs' types."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from gateway.adapters.http import codec
from gateway.core.errors import InvalidInputError
from gateway.core.types import InferRequest

INPUTS = {
    "F": np.arange(6, dtype="<f4").reshape(2, 3),
    "I": np.array([[7], [-8]], dtype="<i8"),
    "EMPTY": np.zeros((2, 0), dtype="<i4"),
    "B": np.array([[True], [False]]),
}
DATATYPES = {"F": "FP32", "I": "INT64", "EMPTY": "INT32", "B": "BOOL"}


def header(names: list[str], padding: int = 0, **extra: Any) -> bytes:
    document = {
        "inputs": [
            {
                "name": name,
                "datatype": DATATYPES[name],
                "shape": list(INPUTS[name].shape),
                "parameters": {"binary_data_size": INPUTS[name].nbytes},
            }
            for name in names
        ],
        "parameters": {"pad": "x" * padding},
        **extra,
    }
    return orjson.dumps(document)


def decode(head: bytes, binary: bytes) -> InferRequest:
    request, _ = codec.decode_request(head + binary, str(len(head)), "m", "")
    return request


def arrays(request: InferRequest) -> dict[str, tuple[str, Any]]:
    return {t.name: (t.datatype, t.array) for t in request.inputs}


@pytest.mark.parametrize("padding", range(8))  # every alignment of the binary part
@pytest.mark.parametrize("names", [["F"], ["F", "I", "EMPTY", "B"], ["B", "F"]])
def test_a_planned_header_gives_the_same_tensors_as_a_fresh_one(
    names: list[str], padding: int
) -> None:
    codec._plans.clear()
    head = header(names, padding)
    binary = b"".join(INPUTS[name].tobytes() for name in names)
    fresh = decode(head, binary)
    assert head in codec._plans
    for _ in range(2):
        planned = decode(head, binary)
        assert planned.parameters == fresh.parameters
        assert planned.requested_outputs == fresh.requested_outputs
        got, want = arrays(planned), arrays(fresh)
        assert list(got) == names
        for name in names:
            assert got[name][0] == want[name][0]
            np.testing.assert_array_equal(got[name][1], INPUTS[name])
            assert got[name][1].dtype == INPUTS[name].dtype
            assert got[name][1].flags.aligned


def test_the_plan_reads_each_body_not_the_first() -> None:
    codec._plans.clear()
    head = header(["F", "I"], 1)
    decode(head, INPUTS["F"].tobytes() + INPUTS["I"].tobytes())
    other = decode(head, (INPUTS["F"] + 1).tobytes() + (INPUTS["I"] * 3).tobytes())
    np.testing.assert_array_equal(other.inputs[0].array, INPUTS["F"] + 1)
    np.testing.assert_array_equal(other.inputs[1].array, INPUTS["I"] * 3)


@pytest.mark.parametrize("cut", [-1, 1, -9, 9])
def test_a_body_too_short_or_too_long_gets_the_error_a_fresh_decode_gives(cut: int) -> None:
    codec._plans.clear()
    head = header(["F", "I"], 3)
    binary = INPUTS["F"].tobytes() + INPUTS["I"].tobytes()
    body = binary[:cut] if cut < 0 else binary + b"\0" * cut
    with pytest.raises(InvalidInputError) as fresh:
        decode(head, body)
    assert head not in codec._plans  # a failed decode leaves no plan
    decode(head, binary)
    assert head in codec._plans
    with pytest.raises(InvalidInputError) as planned:
        decode(head, body)
    assert planned.value.message == fresh.value.message
