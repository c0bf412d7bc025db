"""loadtest/bench.py --repeat: which repeat stands for a row, and the latency verdict counted
over the repeats."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.benchkit.analysis import annotate, latency_targets, repeats_met
from loadtest.benchkit.report import latency_section, load_table, repeats_section
from loadtest.benchkit.sweep import median_row


def row(
    samples_per_s: float, p50_ms: float | None, errors: int = 0, **extra: Any
) -> dict[str, Any]:
    return {
        "target": "gateway",
        "protocol": "grpc",
        "concurrency": 1,
        "samples_per_s": samples_per_s,
        "requests_per_s": samples_per_s,
        "requests": int(samples_per_s * 5),
        "latency_ms": {"p50": p50_ms, "p90": p50_ms, "p99": p50_ms},
        "server_cpu_pct": 70.0,
        "server_stats": {"mean_batch_size": 1.0, "status": "ok"},
        "server_cpu_us_per_request": 1e6 / samples_per_s if samples_per_s else None,
        "errors": errors,
        "warmup_errors": 0,
        "client_cpu_pct": 30.0,
        "other_cpu_pct": 0.0,
        "steal_pct": 0.0,
        **extra,
    }


def test_the_median_repeat_is_the_middle_one_by_samples_per_s() -> None:
    repeats = [row(1000, 0.9, window="a"), row(1200, 0.8, window="b"), row(900, 1.1, window="c")]
    median = median_row(repeats)
    assert (median["window"], median["samples_per_s"], median["latency_ms"]["p50"]) == (
        "a",
        1000,
        0.9,
    )
    # Every repeat's headline figures, in the order measured.
    assert [r["samples_per_s"] for r in median["repeats"]] == [1000, 1200, 900]
    assert [r["p50_ms"] for r in median["repeats"]] == [0.9, 0.8, 1.1]
    # Of an even count, the lower middle one; the repeats given are not changed.
    assert median_row(repeats[:2])["window"] == "a"
    assert "repeats" not in repeats[0]


def test_one_repeat_is_the_row_as_measured() -> None:
    only = row(1000, 0.9)
    assert median_row([only]) == only


def test_errors_in_any_repeat_flag_the_row() -> None:
    median = median_row([row(1000, 0.9), row(1100, 0.9), row(1200, 0.9, errors=3)])
    assert median["errors"] == 0
    annotate([median], {})
    assert median["flagged"]


def test_the_latency_verdict_is_counted_pair_by_pair() -> None:
    gateway = median_row([row(1000, 0.90), row(1000, 0.80), row(1000, 0.85)])
    echo = median_row([row(2000, 0.50), row(2000, 0.55), row(2000, 0.70)])
    # Allowance 0.3 ms: 0.90 > 0.80, 0.80 <= 0.85, 0.85 <= 1.00.
    assert repeats_met(gateway, echo, 0.3) == {"repeats": 3, "repeats_met": 2}
    # Without repeats on both sides (or with unequal counts) there is no count.
    assert repeats_met(row(1000, 0.9), echo, 0.3) == {"repeats": None, "repeats_met": None}
    assert repeats_met(gateway, None, 0.3) == {"repeats": None, "repeats_met": None}
    two = median_row([row(2000, 0.5), row(2000, 0.5)])
    assert repeats_met(gateway, two, 0.3) == {"repeats": None, "repeats_met": None}
    # A round where either side has no p50 (no answers) is left out of the count.
    empty = median_row([row(1000, 0.90), row(1000, 0.80), row(0, None)])
    assert repeats_met(empty, echo, 0.3) == {"repeats": 2, "repeats_met": 1}


def test_a_row_flagged_by_another_repeat_says_which() -> None:
    median = median_row([row(1000, 0.9), row(1100, 0.9), row(1200, 0.9, errors=3)])
    annotate([median], {})
    median["error_samples"] = []
    notes = [line for line in load_table([median], gateway=False) if line.startswith("- `")]
    assert notes == [
        "- `grpc` x 1: 0 errors in the window, 0 in the warm-up; e.g. []; errors by repeat "
        "(window and warm-up): 0, 0, 3"
    ]


def test_a_disturbed_repeat_is_marked() -> None:
    quiet, busy = row(1000, 0.9), row(1100, 0.8, other_cpu_pct=40.0)
    lines = repeats_section({"runs": [median_row([quiet, busy])]})
    assert "| gateway | grpc | 1 | 1,000, 1,100 | 0.900, 0.800 ~ | 1.10 |" in lines


def test_the_report_lists_every_repeat() -> None:
    gateway = median_row([row(1000, 0.90), row(1250, 0.80), row(1100, 0.85)])
    lines = repeats_section({"runs": [gateway], "echo_runs": [row(2000, 0.5)]})
    assert lines[0] == "## Repeats"
    assert "| gateway | grpc | 1 | 1,000, 1,250, 1,100 | 0.900, 0.800, 0.850 | 1.25 |" in lines
    assert repeats_section({"runs": [row(1000, 0.9)], "echo_runs": []}) == []


def test_each_repeat_can_have_an_allowance_of_its_own() -> None:
    gateway = median_row([row(1000, 0.90), row(1000, 0.80), row(1000, 0.85)])
    echo = median_row([row(2000, 0.50), row(2000, 0.55), row(2000, 0.70)])
    # 0.90 <= 0.50 + 0.45, 0.80 > 0.55 + 0.2, 0.85 <= 0.70 + 0.2.
    assert repeats_met(gateway, echo, [0.45, 0.2, 0.2]) == {"repeats": 3, "repeats_met": 2}
    # A round without an allowance is not counted; a count that differs counts nothing.
    assert repeats_met(gateway, echo, [0.45, None, 0.2]) == {"repeats": 2, "repeats_met": 2}
    assert repeats_met(gateway, echo, [0.45, 0.2]) == {"repeats": None, "repeats_met": None}


def latency_rows(
    gateway_p50s: list[float], echo_p50s: list[float]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    gateway = median_row([row(1000 + i, p50) for i, p50 in enumerate(gateway_p50s)])
    echo = median_row([row(2000 + i, p50, target="echo-grpc") for i, p50 in enumerate(echo_p50s)])
    return [gateway], [echo]


BASELINE = {"batch1": {"latency_ms": {"p50": 0.10}}, "huge_pages": None}


def test_the_latency_target_takes_the_bare_runs_beside_the_rows() -> None:
    runs, echoes = latency_rows([0.80, 0.95, 0.85], [0.50, 0.50, 0.50])
    beside = {
        "grpc": [
            {"p50_ms": 0.10, "huge_pages_p50_ms": 0.09},
            {"p50_ms": 0.30, "huge_pages_p50_ms": 0.20},
            {"p50_ms": 0.12, "huge_pages_p50_ms": 0.11},
        ]
    }
    (check,) = latency_targets(runs, echoes, BASELINE, beside)
    assert check["ort_batch1_measured"] == "beside the rows"
    assert check["ort_batch1_rounds"] == 3
    # The median of the rounds' p50s, not the baseline's.
    assert check["ort_batch1_p50_ms"] == 0.12
    assert check["ort_batch1_huge_pages_p50_ms"] == 0.11
    # The median row is the middle repeat by samples/s (p50 0.95): 0.95 > 0.50 + 0.12 + 0.2.
    assert check["target_ms"] == pytest.approx(0.82)
    assert check["met"] is False
    # Each repeat against its own round: 0.80 <= 0.80, 0.95 <= 1.00, 0.85 > 0.82.
    assert (check["repeats"], check["repeats_met"]) == (3, 2)
    # In huge pages: 0.80 > 0.79, 0.95 > 0.90, 0.85 > 0.81.
    assert check["repeats_met_huge_pages"] == 0
    lines = latency_section([check])
    assert "measured beside each round" in lines[0]
    assert "median of the 3 rounds'" in lines[0]


def test_without_bare_runs_beside_the_rows_the_target_takes_the_baseline() -> None:
    runs, echoes = latency_rows([0.80, 0.95, 0.85], [0.50, 0.50, 0.50])
    for beside in (None, {}, {"http-binary": [{"p50_ms": 9.0, "huge_pages_p50_ms": None}]}):
        (check,) = latency_targets(runs, echoes, BASELINE, beside)
        assert check["ort_batch1_measured"] == "the run's start"
        assert check["ort_batch1_p50_ms"] == 0.10
        assert check["target_ms"] == pytest.approx(0.80)
        assert (check["repeats"], check["repeats_met"]) == (3, 1)
        assert check["target_huge_pages_ms"] is None
    assert "measured at the run's start" in latency_section([check])[0]
