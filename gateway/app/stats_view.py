"""`gateway stats`: a per-version table of a running gateway, computed from two scrapes of its
/metrics (so it shows the last interval, as `rate()` would, and needs no endpoint of its own).
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, str]
"""(model, version)"""


@dataclass
class Scrape:
    """The figures of one /metrics scrape, summed over protocols and roles per version."""

    at: float
    requests: dict[Key, float] = field(default_factory=lambda: defaultdict(float))
    failures: dict[Key, float] = field(default_factory=lambda: defaultdict(float))
    buckets: dict[Key, dict[float, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )
    batch_sum: dict[Key, float] = field(default_factory=lambda: defaultdict(float))
    batch_count: dict[Key, float] = field(default_factory=lambda: defaultdict(float))
    state: dict[Key, str] = field(default_factory=dict)
    weight: dict[Key, float] = field(default_factory=dict)
    accuracy: dict[Key, float] = field(default_factory=dict)
    agreement: dict[Key, float] = field(default_factory=dict)


def parse(text: str, at: float) -> Scrape:
    scrape = Scrape(at)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if "model" not in labels or "version" not in labels:
                continue
            key = (labels["model"], labels["version"])
            name, value = sample.name, sample.value
            if name == "gateway_requests_total":
                scrape.requests[key] += value
                if labels.get("code") != "ok":
                    scrape.failures[key] += value
            elif name == "gateway_request_duration_seconds_bucket" and labels.get("code") == "ok":
                scrape.buckets[key][float(labels["le"])] += value
            elif name == "gateway_batch_size_sum":
                scrape.batch_sum[key] += value
            elif name == "gateway_batch_size_count":
                scrape.batch_count[key] += value
            elif name == "gateway_model_state" and value == 1:
                scrape.state[key] = labels["state"]
            elif name == "gateway_traffic_weight":
                scrape.weight[key] = value
            elif name == "gateway_accuracy_ratio":
                scrape.accuracy[key] = value
            elif name == "gateway_shadow_agreement_ratio":
                scrape.agreement[key] = value
    return scrape


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus's histogram_quantile over cumulative bucket counts (le -> count)."""
    edges = sorted(buckets)
    if not edges or buckets[edges[-1]] <= 0:
        return None
    total = buckets[edges[-1]]
    rank = q * total
    lower_edge, lower_count = 0.0, 0.0
    for edge in edges:
        count = buckets[edge]
        if count >= rank:
            if math.isinf(edge):
                return lower_edge  # the highest finite bucket, as Prometheus does
            inside = count - lower_count
            fraction = (rank - lower_count) / inside if inside else 1.0
            return lower_edge + (edge - lower_edge) * fraction
        lower_edge, lower_count = edge, count
    return None


@dataclass(frozen=True)
class Row:
    model: str
    version: str
    state: str
    weight: float | None
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    mean_batch: float | None
    error_rate: float | None
    accuracy: float | None
    agreement: float | None


def rows(before: Scrape, after: Scrape, model: str | None = None) -> list[Row]:
    """The table between two scrapes (rates and percentiles of that interval)."""
    seconds = max(after.at - before.at, 1e-9)
    keys = set(after.state) | set(after.requests)
    table: list[Row] = []
    for key in sorted(keys, key=lambda k: (k[0], int(k[1]) if k[1].isdigit() else 0)):
        if model is not None and key[0] != model:
            continue
        requests = after.requests.get(key, 0.0) - before.requests.get(key, 0.0)
        failures = after.failures.get(key, 0.0) - before.failures.get(key, 0.0)
        delta = {
            edge: count - before.buckets.get(key, {}).get(edge, 0.0)
            for edge, count in after.buckets.get(key, {}).items()
        }
        p50, p99 = quantile(0.5, delta), quantile(0.99, delta)
        batches = after.batch_count.get(key, 0.0) - before.batch_count.get(key, 0.0)
        batch_rows = after.batch_sum.get(key, 0.0) - before.batch_sum.get(key, 0.0)
        # Requests refused before a version was chosen count with version '' (and names the
        # gateway does not know with model ''): shown as '-' and '(unknown)', state 'refused'.
        table.append(
            Row(
                model=key[0] or "(unknown)",
                version=key[1] or "-",
                state=after.state.get(key, "?" if key[1] else "refused"),
                weight=after.weight.get(key),
                requests_per_s=requests / seconds,
                p50_ms=None if p50 is None else p50 * 1e3,
                p99_ms=None if p99 is None else p99 * 1e3,
                mean_batch=batch_rows / batches if batches else None,
                error_rate=failures / requests if requests else None,
                accuracy=after.accuracy.get(key),
                agreement=after.agreement.get(key),
            )
        )
    return table


COLUMNS = (
    "MODEL",
    "VERSION",
    "STATE",
    "WEIGHT%",
    "REQ/S",
    "P50 MS",
    "P99 MS",
    "BATCH",
    "ERRORS",
    "ACCURACY",
    "AGREEMENT",
)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def render(table: Iterable[Row]) -> str:
    lines = [
        [
            row.model,
            row.version,
            row.state,
            _number(row.weight, 0),
            _number(row.requests_per_s, 1),
            _number(row.p50_ms, 2),
            _number(row.p99_ms, 2),
            _number(row.mean_batch, 1),
            _percent(row.error_rate),
            _percent(row.accuracy),
            _percent(row.agreement),
        ]
        for row in table
    ]
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(COLUMNS)]
    out = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    out += [
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    return "\n".join(out) if lines else out[0] + "\n(no model versions)"


def fetch(url: str, timeout_s: float) -> Scrape:
    """Scrape `url`/metrics; raises OSError (urllib's errors) when it cannot."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=timeout_s) as response:
        text = response.read().decode()
    return parse(text, time.monotonic())


def watch(
    url: str,
    model: str | None,
    interval_s: float,
    timeout_s: float,
    show: Callable[[list[Row]], None],
    times: int | None = None,
) -> None:
    """Show the table of every interval, `times` times (None: until interrupted)."""
    before = fetch(url, timeout_s)
    shown = 0
    while times is None or shown < times:
        time.sleep(interval_s)
        after = fetch(url, timeout_s)
        show(rows(before, after, model))
        before, shown = after, shown + 1
