"""Prometheus metrics of the gateway, on a registry it owns (never the process-global one).

Per request and per batch the observer updates histograms and counters (a cached child per
label set, so the hot path does one dict lookup per metric). The histograms are written by the
event loop without locks (telemetry/histograms.py). Gauges that describe state (queue
depth, model state, traffic share) are read from the model registry when Prometheus scrapes.

Labels are bounded: model and version come from the repository, role from a fixed set,
protocol from the front ends, code from ErrorCode values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.core.feedback import FeedbackStore
from gateway.core.registry import ModelRegistry, VersionState
from gateway.core.rollout import RolloutController
from gateway.core.rollout_state import ACTIVE, STATES
from gateway.core.shadow import ShadowDispatcher
from gateway.core.telemetry import OK, BatchEvent, RequestEvent
from gateway.telemetry.histograms import LoopHistogramFamily

# Seconds: from a tenth of a millisecond (a small model on a warm CPU) to tens of seconds.
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
NS = 1e-9
REQUEST_LABELS = ("model", "version", "role", "protocol", "code")


class GatewayMetrics:
    """The gateway's metrics: an Observer for the telemetry events, plus a state collector."""

    def __init__(self, models: ModelRegistry) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        version_labels = ("model", "version", "role")
        self._failures = Counter(
            "gateway_request_failures",
            "Inference requests that failed, by reason (the error code).",
            ("model", "version", "role", "reason"),
            registry=self.registry,
        )
        self._duration = LoopHistogramFamily(
            "gateway_request_duration_seconds",
            "Time from the request reaching the service to its answer.",
            REQUEST_LABELS,
            DURATION_BUCKETS,
            registry=self.registry,
        )
        self._queue = LoopHistogramFamily(
            "gateway_queue_duration_seconds",
            "Time a request waited in its version's batcher before its batch started.",
            version_labels,
            DURATION_BUCKETS,
            registry=self.registry,
        )
        self._compute = LoopHistogramFamily(
            "gateway_compute_duration_seconds",
            "Time of the batch that ran the request: merging inputs, the model, splitting.",
            version_labels,
            DURATION_BUCKETS,
            registry=self.registry,
        )
        # Every answered request is one duration observation: the request counter is read
        # from the histogram's counts at scrape, not incremented (with a lock) per request.
        self.add_collector(self._request_counts)
        self._batch_size = LoopHistogramFamily(
            "gateway_batch_size",
            "Rows of each model execution.",
            ("model", "version"),
            BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, ...], tuple[Any, ...]] = {}
        self.registry.register(_StateCollector(models))

    # -- Observer -----------------------------------------------------------------------
    def request_finished(self, event: RequestEvent) -> None:
        key = (event.model, event.version, event.role, event.protocol, event.code)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = self._make_children(key)
        duration, queue, compute, failures = children
        duration.observe((event.ended_ns - event.started_ns) * NS)
        timing = event.timing
        if timing.launched_ns:  # it reached a batch (not refused or expired in line)
            queue.observe(timing.queue_ns * NS)
            compute.observe(timing.compute_ns * NS)
        if failures is not None:
            failures.inc()

    def _make_children(self, key: tuple[str, ...]) -> tuple[Any, ...]:
        model, version, role, _, code = key
        return (
            self._duration.labels(*key),
            self._queue.labels(model, version, role),
            self._compute.labels(model, version, role),
            None if code == OK else self._failures.labels(model, version, role, code),
        )

    def batch_finished(self, event: BatchEvent) -> None:
        self._batch_size.labels(event.model, event.version).observe(event.rows)

    def _request_counts(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "gateway_requests",
            "Inference requests answered, by outcome code ('ok' or the error code).",
            labels=REQUEST_LABELS,
        )
        for values, count in self._duration.counts():
            family.add_metric(list(values), count)
        yield family

    def add_collector(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Another part of the gateway (feedback, shadows) contributes metrics at scrape."""
        self.registry.register(_FunctionCollector(collect))


class _FunctionCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()


class _StateCollector(Collector):
    """Gauges read from the model registry at scrape time."""

    def __init__(self, models: ModelRegistry) -> None:
        self._models = models

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            "gateway_queue_depth",
            "Requests waiting in the version's batcher.",
            labels=("model", "version"),
        )
        running = GaugeMetricFamily(
            "gateway_batches_running",
            "Batches of the version executing now.",
            labels=("model", "version"),
        )
        state = GaugeMetricFamily(
            "gateway_model_state",
            "1 for the state each known version is in (LOADING, READY, DRAINING, UNLOADED, "
            "FAILED), 0 for the others.",
            labels=("model", "version", "state"),
        )
        weight = GaugeMetricFamily(
            "gateway_traffic_weight",
            "Percent of the model's unversioned requests routed to the version.",
            labels=("model", "version"),
        )
        splits = CounterMetricFamily(
            "gateway_batch_splits",
            "Executions of several requests that failed on a caller's values and that the "
            "version's batcher put back in line to run apart (in halves, or the one caller "
            "left alone), to find the requests that fail alone (counted since it loaded).",
            labels=("model", "version"),
        )
        load_failures = CounterMetricFamily(
            "gateway_model_load_failures",
            "Loads of the model (or of one of its versions) that failed.",
            labels=("model",),
        )
        for entry in self._models.models():
            load_failures.add_metric((entry.name,), entry.load_failures)
            ready = entry.ready_versions()
            latest = ready[-1].version if ready else None
            policy = entry.traffic
            total = sum(policy.weights.values()) if policy is not None else 0
            for number, version in sorted(entry.versions.items()):
                labels = (entry.name, str(number))
                for candidate in VersionState:
                    value = 1.0 if version.state is candidate else 0.0
                    state.add_metric((*labels, candidate.value), value)
                if version.ready:
                    if policy is not None:
                        share = 100.0 * policy.weights.get(number, 0) / total
                    else:
                        share = 100.0 if number == latest else 0.0
                    weight.add_metric(labels, share)
                batcher = version.batcher
                if batcher is not None:
                    waiting.add_metric(labels, batcher.waiting)
                    running.add_metric(labels, batcher.running)
                    splits.add_metric(labels, batcher.stats.split)
        yield from (waiting, running, splits, state, weight, load_failures)


def feedback_metrics(store: FeedbackStore) -> Callable[[], Iterable[Metric]]:
    """Accuracy from ground truth, read from the feedback store at scrape time."""

    def collect() -> Iterator[Metric]:
        labels = ("model", "version")
        feedback = CounterMetricFamily(
            "gateway_feedback",
            "Ground-truth feedback items by outcome (joined, unknown_id, expired, duplicate, "
            "invalid); version '' for ids no version answered.",
            labels=(*labels, "outcome"),
        )
        window = GaugeMetricFamily(
            "gateway_accuracy_ratio",
            "Share of correct predictions among the version's latest feedback (the window of "
            "--accuracy-window observations).",
            labels=labels,
        )
        total = GaugeMetricFamily(
            "gateway_accuracy_total_ratio",
            "Share of correct predictions among all the version's feedback since start.",
            labels=labels,
        )
        observations = CounterMetricFamily(
            "gateway_accuracy_observations",
            "Predictions of the version judged against feedback.",
            labels=labels,
        )
        error = GaugeMetricFamily(
            "gateway_mean_absolute_error",
            "Mean absolute error of numeric predictions over the window.",
            labels=labels,
        )
        for figures in store.snapshot():
            key = (figures.model, figures.version)
            for outcome, count in sorted(figures.feedback.items()):
                feedback.add_metric((*key, outcome), count)
            if not figures.version:
                continue
            observations.add_metric(key, figures.observations + figures.value_observations)
            if figures.window_accuracy is not None:
                window.add_metric(key, figures.window_accuracy)
            if figures.accuracy is not None:
                total.add_metric(key, figures.accuracy)
            if figures.window_mean_absolute_error is not None:
                error.add_metric(key, figures.window_mean_absolute_error)
        yield from (feedback, window, total, observations, error)

    return collect


def shadow_metrics(shadows: ShadowDispatcher) -> Callable[[], Iterable[Metric]]:
    """Shadow comparisons per (model, shadow version, primary version), read at scrape time."""

    def collect() -> Iterator[Metric]:
        labels = ("model", "version", "primary")
        comparisons = CounterMetricFamily(
            "gateway_shadow_comparisons",
            "Shadow copies by outcome: agree, disagree (compared with the primary's answer), "
            "error (the shadow failed).",
            labels=(*labels, "outcome"),
        )
        dropped = CounterMetricFamily(
            "gateway_shadow_dropped",
            "Shadow copies dropped because the gateway was busy (never at a caller's cost).",
            labels=labels,
        )
        agreement = GaugeMetricFamily(
            "gateway_shadow_agreement_ratio",
            "Share of compared shadow answers that agree with the primary's, since start.",
            labels=labels,
        )
        for (model, primary, shadow), pair in sorted(shadows.pairs.items()):
            key = (model, shadow, primary)
            comparisons.add_metric((*key, "agree"), pair.agree)
            comparisons.add_metric((*key, "disagree"), pair.disagree)
            comparisons.add_metric((*key, "error"), pair.error)
            dropped.add_metric(key, pair.dropped)
            if pair.agreement is not None:
                agreement.add_metric(key, pair.agreement)
        yield from (comparisons, dropped, agreement)

    return collect


def rollout_metrics(rollouts: RolloutController) -> Callable[[], Iterable[Metric]]:
    """Progressive rollouts: each model's latest one, and how rollouts ended, at scrape time."""

    def collect() -> Iterator[Metric]:
        weight = GaugeMetricFamily(
            "gateway_rollout_step_weight",
            "Percent of routed requests a running rollout gives each of its two versions now.",
            labels=("model", "version"),
        )
        step = GaugeMetricFamily(
            "gateway_rollout_step",
            "The step (1-based) a running rollout is at.",
            labels=("model",),
        )
        state = GaugeMetricFamily(
            "gateway_rollout_state",
            "1 for the state of the model's latest rollout (running, holding, promoted, "
            "rolled_back, aborted), 0 for the others.",
            labels=("model", "state"),
        )
        outcomes = CounterMetricFamily(
            "gateway_rollout_outcomes",
            "Rollouts that ended, by outcome (promoted, rolled_back, aborted).",
            labels=("model", "outcome"),
        )
        for rollout in rollouts.rollouts():
            for candidate in STATES:
                value = 1.0 if rollout.state == candidate else 0.0
                state.add_metric((rollout.model, candidate), value)
            if rollout.state in ACTIVE:
                plan = rollout.plan
                weight.add_metric((rollout.model, str(plan.to)), rollout.weight)
                weight.add_metric((rollout.model, str(plan.from_version)), 100 - rollout.weight)
                step.add_metric((rollout.model,), rollout.step + 1)
        for (model, outcome), count in sorted(rollouts.outcomes.items()):
            outcomes.add_metric((model, outcome), count)
        yield from (weight, step, state, outcomes)

    return collect
