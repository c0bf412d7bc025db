"""How long and where a request may wait (service._queueing): Triton's `timeout` override,
priority levels, DELAY, and which limit is the caller's (a rollout leaves out a pinned request
that expired under a limit its caller chose, never one the version's own policy set)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.config.model_config import parse_model_config
from gateway.core.service import _queueing
from gateway.core.types import InferRequest, RequestContext

PATH = Path("/repo/m/config.pbtxt")


def queueing(config: str, parameters: dict[str, Any], deadline_in_s: float | None = None) -> Any:
    loaded: Any = SimpleNamespace(policy=parse_model_config(PATH, config, "m"))
    deadline_s = None if deadline_in_s is None else time.monotonic() + deadline_in_s
    request = InferRequest("m", "", [], parameters=parameters)
    return _queueing(request, RequestContext("grpc", deadline_s=deadline_s), loaded)


DEFAULT_1MS = "dynamic_batching { default_queue_policy { default_timeout_microseconds: 1000 } }"
DEFAULT_1S = "dynamic_batching { default_queue_policy { default_timeout_microseconds: 1000000 } }"
OVERRIDABLE = (
    "dynamic_batching { default_queue_policy { default_timeout_microseconds: 1000,"
    " allow_timeout_override: true } }"
)
DELAYING = (
    "dynamic_batching { default_queue_policy { default_timeout_microseconds: 1000,"
    " timeout_action: DELAY, allow_timeout_override: true } }"
)


@pytest.mark.parametrize(
    ("config", "timeout_us", "deadline_in_s", "refused_s", "delayed_s", "callers_s"),
    [
        ("", 500, None, 0.0005, None, 0.0005),  # no dynamic_batching: the timeout applies
        ("", None, None, None, None, None),
        (DEFAULT_1MS, 500, None, 0.001, None, None),  # no override allowed: the policy's
        (OVERRIDABLE, 500, None, 0.0005, None, 0.0005),  # shortens: the caller's
        (OVERRIDABLE, 5000, None, 0.001, None, None),  # would lengthen: ignored
        (DEFAULT_1S, None, 10.0, 1.0, None, None),  # the policy binds, not the deadline
        (DEFAULT_1S, None, 0.5, 0.5, None, 0.5),  # the deadline binds
        (DELAYING, 500, None, None, 0.0005, None),  # DELAY: the timeout delays, never refuses
        (DELAYING, None, 2.0, 2.0, 0.001, 2.0),  # ... and the deadline still refuses
    ],
)
def test_the_wait_limits_and_which_is_the_callers(
    config: str,
    timeout_us: int | None,
    deadline_in_s: float | None,
    refused_s: float | None,
    delayed_s: float | None,
    callers_s: float | None,
) -> None:
    parameters = {} if timeout_us is None else {"timeout": timeout_us}
    got = queueing(config, parameters, deadline_in_s)
    assert got.level == 0
    for name, value, want in (
        ("timeout_s", got.timeout_s, refused_s),
        ("delay_s", got.delay_s, delayed_s),
        ("caller_limit_s", got.caller_limit_s, callers_s),
    ):
        if want is None:
            assert value is None, name
        else:
            assert value == pytest.approx(want, rel=0.05), name  # a deadline: less the time since


def test_each_priority_level_has_its_own_queue_policy() -> None:
    config = """
    dynamic_batching {
      priority_levels: 2
      default_priority_level: 2
      default_queue_policy { default_timeout_microseconds: 1000 }
      priority_queue_policy { key: 1 value { default_timeout_microseconds: 3000 } }
    }
    """
    first, second = (queueing(config, {"priority": p}) for p in (1, 0))
    assert (first.level, second.level) == (1, 2)
    assert first.timeout_s == pytest.approx(0.003) and second.timeout_s == pytest.approx(0.001)
