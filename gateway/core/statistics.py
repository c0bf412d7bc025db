"""Per-version inference statistics with Triton's meanings (its statistics extension).

Counts and cumulative nanoseconds: `inference_count` counts rows of successful requests,
`execution_count` model executions (batches); queue and compute durations are per request (a
request shares its batch's compute time); `batches` holds the same per executed batch size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns * count


@dataclass(slots=True)
class BatchSizeStatistics:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class VersionStatistics:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchSizeStatistics] = field(default_factory=dict)

    def record_request(self, ok: bool, rows: int, duration_ns: int) -> None:
        if ok:
            self.success.add(duration_ns)
            self.inference_count += rows
            self.last_inference_ms = time.time_ns() // 1_000_000
        else:
            self.fail.add(duration_ns)

    def record_batch(
        self, rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        self.execution_count += 1
        self.compute_input.add(input_ns, requests)
        self.compute_infer.add(infer_ns, requests)
        self.compute_output.add(output_ns, requests)
        by_size = self.batches.get(rows)
        if by_size is None:
            by_size = self.batches[rows] = BatchSizeStatistics()
        by_size.compute_input.add(input_ns)
        by_size.compute_infer.add(infer_ns)
        by_size.compute_output.add(output_ns)
