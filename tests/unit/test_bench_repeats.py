"""loadtest/bench.py --repeat: which repeat stands for a row, and the latency verdict counted
over the repeats."""

from __future__ import annotations

from typing import Any

from loadtest.benchkit.analysis import annotate, repeats_met
from loadtest.benchkit.report import load_table, repeats_section
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
