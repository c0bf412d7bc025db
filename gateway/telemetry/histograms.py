"""Histograms written by the event loop without locks, exported as Prometheus histograms.

prometheus_client's Histogram.observe takes a lock for the sum and another for the bucket it
finds by scanning the bounds; three of them a request cost about 8 us on this machine's one
server core. Every request and batch event is recorded on the event loop's thread, and
/metrics is served on the same loop, so an observation here is one bisect and two additions,
about 0.5 us, and a scrape reads a consistent state. The exposition is the same:
`<name>_bucket{le=...}` (cumulative), `<name>_count` and `<name>_sum`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString


class LoopHistogram:
    """One label set's counts: per bucket (the last is +Inf) and the sum of observations."""

    __slots__ = ("_bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Prometheus buckets are upper bounds, inclusive: `value` counts in the first bucket
        whose bound is >= value."""
        self.counts[bisect_left(self._bounds, value)] += 1
        self.total += value


class LoopHistogramFamily(Collector):
    """A histogram metric with labels; `labels(...)` returns the child to observe into."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label_names: Sequence[str],
        bounds: Sequence[float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        if list(bounds) != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError(f"histogram {name}: bucket bounds must be strictly increasing")
        self.name = name
        self._documentation = documentation
        self._label_names = tuple(label_names)
        self._bounds = tuple(float(b) for b in bounds)
        self._children: dict[tuple[str, ...], LoopHistogram] = {}
        if registry is not None:  # as prometheus_client's own metrics take `registry=`
            registry.register(self)

    def labels(self, *values: str) -> LoopHistogram:
        if len(values) != len(self._label_names):
            raise ValueError(f"histogram {self.name} takes labels {self._label_names}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = LoopHistogram(self._bounds)
        return child

    def counts(self) -> Iterator[tuple[tuple[str, ...], int]]:
        """(label values, observations) of each child, in label order."""
        for values, child in sorted(self._children.items()):
            yield values, sum(child.counts)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self._documentation, labels=self._label_names)
        bounds = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        names = [*bounds, "+Inf"]
        for values, child in sorted(self._children.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(names, child.counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(list(values), buckets, sum_value=child.total)
        yield family
