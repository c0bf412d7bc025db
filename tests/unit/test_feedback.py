"""The feedback store: prediction extraction, joins, outcomes, bounds, expiry and the windows."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.config.model_config import ModelConfigError, parse_model_config
from gateway.core.errors import InvalidInputError
from gateway.core.feedback import Feedback, FeedbackStore, Outcome, VersionAccuracy
from gateway.core.model import LoadedVersion, ModelPolicy, ModelSignature, TensorSpec
from gateway.core.prediction import (
    MAX_PREDICTION_VALUES,
    Prediction,
    PredictionRule,
    parse_label,
    predicted_values,
    prediction_rule,
)
from gateway.core.types import Tensor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def signature(*outputs: TensorSpec, batch: int = 8) -> ModelSignature:
    return ModelSignature((TensorSpec("X", "FP32", (4,)),), outputs, batch)


CLASSIFIER = signature(TensorSpec("label", "INT64", ()), TensorSpec("probabilities", "FP32", (10,)))


def version(
    number: int = 1,
    sig: ModelSignature = CLASSIFIER,
    parameters: Mapping[str, str] | None = None,
    name: str = "m",
) -> LoadedVersion:
    policy = ModelPolicy(name=name, parameters=dict(parameters or {}))
    return LoadedVersion(name, number, policy, sig, ("CPUExecutionProvider",), 1)


def labels(*values: int) -> list[Tensor]:
    probabilities = np.eye(10, dtype=np.float32)[list(values)]
    return [
        Tensor("label", "INT64", np.array(values, dtype=np.int64)),
        Tensor("probabilities", "FP32", probabilities),
    ]


def figures(store: FeedbackStore, model: str = "m", number: str = "1") -> VersionAccuracy:
    return next(f for f in store.snapshot(model) if f.version == number)


def one(store: FeedbackStore, request_id: str, label: Any, model: str = "m") -> Any:
    return store.submit(model, [Feedback(request_id, parse_label(label, "label"))], "")[0]


# -- which output holds the prediction --------------------------------------------------------
def test_automatic_rule_prefers_an_integer_label_of_shape_batch() -> None:
    rule = prediction_rule(CLASSIFIER, {})
    assert rule == PredictionRule("label", Prediction.LABEL)


def test_automatic_rule_takes_argmax_of_the_first_float_output() -> None:
    sig = signature(TensorSpec("ids", "INT64", (3,)), TensorSpec("logits", "FP32", (10,)))
    assert prediction_rule(sig, {}) == PredictionRule("logits", Prediction.ARGMAX)


def test_automatic_rule_reads_one_float_per_row_as_a_value() -> None:
    sig = signature(TensorSpec("y", "FP64", (1,)))
    assert prediction_rule(sig, {}) == PredictionRule("y", Prediction.VALUE)


def test_no_rule_without_a_numeric_output() -> None:
    assert prediction_rule(signature(TensorSpec("s", "BYTES", ())), {}) is None


def test_configured_rule_and_class_names() -> None:
    rule = prediction_rule(
        CLASSIFIER,
        {"prediction_output": "probabilities", "prediction": "argmax", "class_names": "a, b,c"},
    )
    assert rule == PredictionRule("probabilities", Prediction.ARGMAX, {"a": 0, "b": 1, "c": 2})


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"prediction_output": "nope"}, "'nope' is not an output"),
        ({"prediction_output": "probabilities", "prediction": "label"}, None),
    ],
)
def test_configured_rule_checks_the_output(parameters: dict[str, str], message: str | None) -> None:
    if message is None:
        assert prediction_rule(CLASSIFIER, parameters) is not None
        return
    with pytest.raises(ValueError, match=message):
        prediction_rule(CLASSIFIER, parameters)


def test_predicted_values_label_argmax_value() -> None:
    outputs = labels(3, 7)
    assert predicted_values(PredictionRule("label", Prediction.LABEL), outputs) == (3, 7)
    assert predicted_values(PredictionRule("probabilities", Prediction.ARGMAX), outputs) == (3, 7)
    value = [Tensor("y", "FP32", np.array([[1.5], [2.5]], np.float32))]
    assert predicted_values(PredictionRule("y", Prediction.VALUE), value) == (1.5, 2.5)


def test_predicted_values_absent_or_too_large() -> None:
    rule = PredictionRule("label", Prediction.LABEL)
    assert predicted_values(rule, [Tensor("other", "INT64", np.zeros(1, np.int64))]) is None
    big = [Tensor("label", "INT64", np.zeros(MAX_PREDICTION_VALUES + 1, np.int64))]
    assert predicted_values(rule, big) is None


# -- labels -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [3, 2.5, "cat", [1, 2], ["a", 3]])
def test_parse_label_accepts(value: Any) -> None:
    expected = tuple(value) if isinstance(value, list) else (value,)
    assert parse_label(value, "label") == expected


@pytest.mark.parametrize("value", [None, True, {"a": 1}, [], [[1]], "", float("nan"), [1] * 65])
def test_parse_label_refuses_naming_the_field(value: Any) -> None:
    with pytest.raises(InvalidInputError, match=r"^feedback\[2\]\.label"):
        parse_label(value, "feedback[2].label")


# -- joins and outcomes ---------------------------------------------------------------------------
def test_join_counts_correct_and_total_per_version() -> None:
    store = FeedbackStore()
    v1, v2 = version(1), version(2)
    store.record(v1, "a", labels(3))
    store.record(v2, "b", labels(4))
    store.record(v2, "c", labels(5, 6))
    assert one(store, "a", 3).outcome is Outcome.JOINED
    result = one(store, "b", 0)
    assert (result.outcome, result.version, result.correct) == (Outcome.JOINED, "2", 0)
    result = one(store, "c", [5, 0])
    assert (result.observations, result.correct) == (2, 1)
    first, second = figures(store, number="1"), figures(store, number="2")
    assert (first.correct, first.observations, first.accuracy) == (1, 1, 1.0)
    assert (second.correct, second.observations, second.accuracy) == (1, 3, 1 / 3)
    assert second.feedback == {"joined": 2}
    assert (second.recorded, second.prediction, second.output) == (2, "label", "label")


def test_unknown_and_duplicate_ids() -> None:
    store = FeedbackStore()
    store.record(version(), "a", labels(3))
    assert one(store, "nobody", 3).outcome is Outcome.UNKNOWN_ID
    assert one(store, "a", 3).outcome is Outcome.JOINED
    again = one(store, "a", 4)
    assert (again.outcome, again.version) == (Outcome.DUPLICATE, "1")
    assert figures(store).observations == 1  # counted once
    assert figures(store).feedback == {"joined": 1, "duplicate": 1}
    assert figures(store, number="").feedback == {"unknown_id": 1}


def test_ids_are_per_model() -> None:
    store = FeedbackStore()
    store.record(version(name="m"), "a", labels(3))
    assert one(store, "a", 3, model="other").outcome is Outcome.UNKNOWN_ID
    assert one(store, "a", 3, model="m").outcome is Outcome.JOINED


def test_expiry_by_age() -> None:
    clock = Clock()
    store = FeedbackStore(ttl_s=60, clock=clock)
    store.record(version(), "old", labels(1))
    clock.now += 30
    store.record(version(), "young", labels(2))
    clock.now += 31  # 'old' is 61 s old, 'young' 31 s
    assert one(store, "old", 1).outcome is Outcome.EXPIRED
    assert one(store, "young", 2).outcome is Outcome.JOINED
    clock.now += 100
    store.record(version(), "new", labels(3))  # prunes what is too old
    assert len(store) == 1
    assert one(store, "young", 2).outcome is Outcome.DUPLICATE
    assert figures(store).feedback == {"expired": 1, "joined": 1, "duplicate": 1}


def test_memory_bound_forgets_the_oldest() -> None:
    store = FeedbackStore(max_entries=3)
    for index in range(10):
        store.record(version(), f"r{index}", labels(index))
    assert len(store) == 3
    assert one(store, "r6", 6).outcome is Outcome.EXPIRED  # pushed out by newer ones
    assert one(store, "r9", 9).outcome is Outcome.JOINED
    assert figures(store).recorded == 10


def test_forgotten_ids_are_bounded_too() -> None:
    store = FeedbackStore(max_entries=2)
    for index in range(10):
        store.record(version(), f"r{index}", labels(index))
    # Entries r8, r9; traces of r6, r7; r0 is wholly forgotten.
    assert one(store, "r7", 7).outcome is Outcome.EXPIRED
    assert one(store, "r0", 0).outcome is Outcome.UNKNOWN_ID


def test_no_memory_and_no_id_remember_nothing() -> None:
    store = FeedbackStore(max_entries=0)
    store.record(version(), "a", labels(1))
    assert len(store) == 0
    store = FeedbackStore()
    store.record(version(), "", labels(1))
    assert len(store) == 0 and store.snapshot() == []


def test_reused_id_refers_to_the_latest_request() -> None:
    store = FeedbackStore()
    store.record(version(1), "a", labels(1))
    store.record(version(2), "a", labels(2))
    result = one(store, "a", 2)
    assert (result.version, result.correct) == ("2", 1)


def test_long_ids_are_not_remembered() -> None:
    store = FeedbackStore()
    store.record(version(), "x" * 1000, labels(1))
    assert len(store) == 0


def test_label_in_parameters_joins_at_once() -> None:
    store = FeedbackStore()
    store.record(version(), "a", labels(4), label=4)
    store.record(version(), "", labels(5), label=[6])
    assert (figures(store).observations, figures(store).correct) == (2, 1)
    assert one(store, "a", 4).outcome is Outcome.DUPLICATE
    with pytest.raises(InvalidInputError, match="parameter 'label'"):
        store.record(version(), "b", labels(4), label={"bad": 1})
    with pytest.raises(InvalidInputError, match="parameter 'label' has 2 value"):
        store.record(version(), "c", labels(4), label=[1, 2])


def test_invalid_feedback_does_not_consume_the_id() -> None:
    store = FeedbackStore()
    store.record(version(), "a", labels(3, 4))
    bad = one(store, "a", 3)
    assert bad.outcome is Outcome.INVALID and "has 1 value(s)" in bad.error
    bad = one(store, "a", ["cat", 4])
    assert bad.outcome is Outcome.INVALID and "configures no class_names" in bad.error
    bad = one(store, "a", [3.5, 4])
    assert bad.outcome is Outcome.INVALID and "integers" in bad.error
    assert one(store, "a", [3.0, 4]).outcome is Outcome.JOINED
    assert figures(store).feedback == {"invalid": 3, "joined": 1}


def test_class_names() -> None:
    store = FeedbackStore()
    named = version(parameters={"class_names": "cat,dog,bird"})
    store.record(named, "a", labels(1))
    store.record(named, "b", labels(2))
    assert one(store, "a", "dog").correct == 1
    bad = one(store, "b", "fish")
    assert bad.outcome is Outcome.INVALID and "not one of its class_names" in bad.error
    bad = one(store, "b", 3)  # an index past the names: no class, so not a wrong answer
    assert bad.outcome is Outcome.INVALID and "class index 3 is out of range" in bad.error


def test_a_negative_class_index_is_invalid_not_a_wrong_answer() -> None:
    store = FeedbackStore()
    store.record(version(), "a", labels(3))
    bad = one(store, "a", -1)
    assert bad.outcome is Outcome.INVALID and "class index -1 is out of range" in bad.error
    assert one(store, "a", 3).outcome is Outcome.JOINED  # the id was not consumed


def test_regression_mean_absolute_error_total_and_windowed() -> None:
    store = FeedbackStore(window=2)
    regressor = version(sig=signature(TensorSpec("y", "FP32", (1,))))
    for index, (predicted, truth) in enumerate([(1.0, 2.0), (5.0, 5.0), (0.0, 3.0)]):
        outputs = [Tensor("y", "FP32", np.array([[predicted]], np.float32))]
        store.record(regressor, str(index), outputs)
        result = one(store, str(index), truth)
        assert result.absolute_error == abs(predicted - truth)
    found = figures(store)
    assert found.prediction == "value" and found.accuracy is None
    assert found.mean_absolute_error == pytest.approx(4 / 3)
    assert found.window_mean_absolute_error == pytest.approx(3 / 2)
    assert one(store, "0", "x").outcome is Outcome.DUPLICATE


def test_regression_refuses_class_names() -> None:
    store = FeedbackStore()
    regressor = version(sig=signature(TensorSpec("y", "FP32", (1,))))
    store.record(regressor, "a", [Tensor("y", "FP32", np.array([[1.0]], np.float32))])
    assert one(store, "a", "cat").outcome is Outcome.INVALID


def test_window_holds_the_last_observations() -> None:
    store = FeedbackStore(window=4)
    for index in range(10):
        store.record(version(), str(index), labels(1))
        one(store, str(index), 1 if index < 6 else 0)  # right 6 times, then wrong 4 times
    found = figures(store)
    assert (found.correct, found.observations) == (6, 10)
    assert (found.window_correct, found.window_observations) == (0, 4)
    assert found.window_accuracy == 0.0 and found.accuracy == 0.6


def test_a_version_without_a_readable_prediction_records_nothing() -> None:
    store = FeedbackStore()
    strings = version(sig=signature(TensorSpec("s", "BYTES", ())))
    store.record(strings, "a", [Tensor("s", "BYTES", np.array([b"x"], object))])
    assert len(store) == 0
    with pytest.raises(InvalidInputError, match="no prediction output"):
        store.record(strings, "a", [], label=1)


def test_snapshot_filters_by_model() -> None:
    store = FeedbackStore()
    store.record(version(name="a"), "x", labels(1))
    store.record(version(name="b"), "x", labels(1))
    assert [f.model for f in store.snapshot()] == ["a", "b"]
    assert [f.model for f in store.snapshot("b")] == ["b"]


def test_recording_costs_a_few_microseconds() -> None:
    """The hot path: a batch-1 classifier answer with an id (a loose bound for slow CI)."""
    store = FeedbackStore(max_entries=10_000)
    loaded, outputs = version(), labels(3)
    count = 20_000
    started = time.perf_counter()
    for index in range(count):
        store.record(loaded, f"id-{index}", outputs)
    per_record_us = (time.perf_counter() - started) / count * 1e6
    assert len(store) == 10_000
    assert per_record_us < 50, per_record_us


# -- the model config keys ----------------------------------------------------------------------
def test_config_keeps_output_and_class_names_as_written() -> None:
    policy = parse_model_config(
        Path("config.pbtxt"),
        'parameters { key: "prediction_output" value: { string_value: "Probs" } }\n'
        'parameters { key: "prediction" value: { string_value: "ARGMAX" } }\n'
        'parameters { key: "class_names" value: { string_value: "Cat, Dog" } }\n',
        "m",
    )
    assert policy.parameters == {
        "prediction_output": "Probs",
        "prediction": "argmax",
        "class_names": "Cat, Dog",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('key: "prediction" value: { string_value: "mode" }', "one of label, argmax, value"),
        ('key: "class_names" value: { string_value: "a,,b" }', "comma-separated class names"),
        ('key: "class_names" value: { string_value: "a,a" }', "comma-separated class names"),
        ('key: "prediction_output" value: { string_value: "" }', "the name of an output"),
    ],
)
def test_config_refuses_bad_values(text: str, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        parse_model_config(Path("config.pbtxt"), f"parameters {{ {text} }}\n", "m")


def test_config_prediction_output_must_be_a_declared_output() -> None:
    text = (
        "max_batch_size: 8\n"
        'output [ { name: "Y", data_type: TYPE_FP32, dims: [ 4 ] } ]\n'
        'parameters { key: "prediction_output" value: { string_value: "Z" } }\n'
    )
    with pytest.raises(
        ModelConfigError, match="'prediction_output' is 'Z', which is not an output"
    ):
        parse_model_config(Path("config.pbtxt"), text, "m")
