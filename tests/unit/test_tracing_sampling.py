"""The gateway draws the ratio sampler's decision for new traces itself (cheaply); it must keep
the configured share, keep nothing with ratio 0, and never export its marker."""

from __future__ import annotations

import pytest

from gateway.telemetry.tracing import _PRESAMPLED, tracing_from_env


@pytest.mark.parametrize(
    ("sampler", "ratio", "expected"),
    [
        ("parentbased_traceidratio", "0.25", 0.25),
        ("traceidratio", "0.5", 0.5),
        ("parentbased_always_off", "", 0.0),
        ("always_on", "", 1.0),
    ],
)
def test_new_traces_are_kept_in_the_configured_share(
    sampler: str, ratio: str, expected: float
) -> None:
    environ = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_TRACES_SAMPLER": sampler,
        "OTEL_TRACES_SAMPLER_ARG": ratio,
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in environ.items():
            patch.setenv(key, value)
        tracing = tracing_from_env("test", environ)
    assert tracing is not None
    try:
        spans = [tracing.begin(None, None, "m", "primary") for _ in range(4000)]
        kept = [span for span in spans if span is not None]
        assert abs(len(kept) / 4000 - expected) < 0.04  # binomial sd <= 0.008
        for span in kept:
            assert _PRESAMPLED not in span._span.attributes  # type: ignore[attr-defined]
            assert span._span.attributes["gateway.model.name"] == "m"  # type: ignore[attr-defined]
    finally:
        tracing.shutdown()


def test_a_caller_that_sampled_its_trace_is_followed_whatever_the_ratio() -> None:
    environ = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in environ.items():
            patch.setenv(key, value)
        tracing = tracing_from_env("test", environ)
    assert tracing is not None
    try:
        sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        assert tracing.begin(sampled, None, "m", "primary") is not None
        assert tracing.begin(unsampled, None, "m", "primary") is None
        assert tracing.begin(None, None, "m", "primary") is None
    finally:
        tracing.shutdown()
