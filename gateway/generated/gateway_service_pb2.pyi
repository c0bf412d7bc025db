from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetLabelsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class SetLabelRequest(_message.Message):
    __slots__ = ("model", "label", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    label: str
    version: str
    def __init__(self, model: _Optional[str] = ..., label: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class DeleteLabelRequest(_message.Message):
    __slots__ = ("model", "label")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    label: str
    def __init__(self, model: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class LabelsResponse(_message.Message):
    __slots__ = ("model", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    model: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, model: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FeedbackItem(_message.Message):
    __slots__ = ("id", "class_indices", "class_names", "values")
    ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDICES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    id: str
    class_indices: _containers.RepeatedScalarFieldContainer[int]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[str] = ..., class_indices: _Optional[_Iterable[int]] = ..., class_names: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("model", "items")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    model: str
    items: _containers.RepeatedCompositeFieldContainer[FeedbackItem]
    def __init__(self, model: _Optional[str] = ..., items: _Optional[_Iterable[_Union[FeedbackItem, _Mapping]]] = ...) -> None: ...

class FeedbackResult(_message.Message):
    __slots__ = ("id", "outcome", "version", "observations", "correct", "absolute_error", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    ABSOLUTE_ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    outcome: str
    version: str
    observations: int
    correct: int
    absolute_error: float
    error: str
    def __init__(self, id: _Optional[str] = ..., outcome: _Optional[str] = ..., version: _Optional[str] = ..., observations: _Optional[int] = ..., correct: _Optional[int] = ..., absolute_error: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("model", "results")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    results: _containers.RepeatedCompositeFieldContainer[FeedbackResult]
    def __init__(self, model: _Optional[str] = ..., results: _Optional[_Iterable[_Union[FeedbackResult, _Mapping]]] = ...) -> None: ...

class GetAccuracyRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class VersionAccuracy(_message.Message):
    __slots__ = ("version", "prediction", "output", "recorded", "feedback", "observations", "correct", "accuracy", "window_observations", "window_correct", "window_accuracy", "value_observations", "mean_absolute_error", "window_value_observations", "window_mean_absolute_error")
    class FeedbackEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_CORRECT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    VALUE_OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    MEAN_ABSOLUTE_ERROR_FIELD_NUMBER: _ClassVar[int]
    WINDOW_VALUE_OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_MEAN_ABSOLUTE_ERROR_FIELD_NUMBER: _ClassVar[int]
    version: str
    prediction: str
    output: str
    recorded: int
    feedback: _containers.ScalarMap[str, int]
    observations: int
    correct: int
    accuracy: float
    window_observations: int
    window_correct: int
    window_accuracy: float
    value_observations: int
    mean_absolute_error: float
    window_value_observations: int
    window_mean_absolute_error: float
    def __init__(self, version: _Optional[str] = ..., prediction: _Optional[str] = ..., output: _Optional[str] = ..., recorded: _Optional[int] = ..., feedback: _Optional[_Mapping[str, int]] = ..., observations: _Optional[int] = ..., correct: _Optional[int] = ..., accuracy: _Optional[float] = ..., window_observations: _Optional[int] = ..., window_correct: _Optional[int] = ..., window_accuracy: _Optional[float] = ..., value_observations: _Optional[int] = ..., mean_absolute_error: _Optional[float] = ..., window_value_observations: _Optional[int] = ..., window_mean_absolute_error: _Optional[float] = ...) -> None: ...

class AccuracyResponse(_message.Message):
    __slots__ = ("model", "window", "versions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    window: int
    versions: _containers.RepeatedCompositeFieldContainer[VersionAccuracy]
    def __init__(self, model: _Optional[str] = ..., window: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[VersionAccuracy, _Mapping]]] = ...) -> None: ...

class ShadowTarget(_message.Message):
    __slots__ = ("version", "percent")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    version: str
    percent: float
    def __init__(self, version: _Optional[str] = ..., percent: _Optional[float] = ...) -> None: ...

class TrafficPolicy(_message.Message):
    __slots__ = ("weights", "sticky_key", "shadows", "atol", "rtol")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    STICKY_KEY_FIELD_NUMBER: _ClassVar[int]
    SHADOWS_FIELD_NUMBER: _ClassVar[int]
    ATOL_FIELD_NUMBER: _ClassVar[int]
    RTOL_FIELD_NUMBER: _ClassVar[int]
    weights: _containers.ScalarMap[str, int]
    sticky_key: str
    shadows: _containers.RepeatedCompositeFieldContainer[ShadowTarget]
    atol: float
    rtol: float
    def __init__(self, weights: _Optional[_Mapping[str, int]] = ..., sticky_key: _Optional[str] = ..., shadows: _Optional[_Iterable[_Union[ShadowTarget, _Mapping]]] = ..., atol: _Optional[float] = ..., rtol: _Optional[float] = ...) -> None: ...

class GetTrafficRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class SetTrafficRequest(_message.Message):
    __slots__ = ("model", "policy")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    model: str
    policy: TrafficPolicy
    def __init__(self, model: _Optional[str] = ..., policy: _Optional[_Union[TrafficPolicy, _Mapping]] = ...) -> None: ...

class ClearTrafficRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class TrafficResponse(_message.Message):
    __slots__ = ("model", "has_policy", "policy")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HAS_POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    model: str
    has_policy: bool
    policy: TrafficPolicy
    def __init__(self, model: _Optional[str] = ..., has_policy: _Optional[bool] = ..., policy: _Optional[_Union[TrafficPolicy, _Mapping]] = ...) -> None: ...

class RolloutGates(_message.Message):
    __slots__ = ("max_error_rate_increase", "max_p99_ratio", "min_p99_increase_ms", "min_agreement", "max_accuracy_drop", "min_feedback")
    MAX_ERROR_RATE_INCREASE_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_P99_INCREASE_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    MIN_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    max_error_rate_increase: float
    max_p99_ratio: float
    min_p99_increase_ms: float
    min_agreement: float
    max_accuracy_drop: float
    min_feedback: int
    def __init__(self, max_error_rate_increase: _Optional[float] = ..., max_p99_ratio: _Optional[float] = ..., min_p99_increase_ms: _Optional[float] = ..., min_agreement: _Optional[float] = ..., max_accuracy_drop: _Optional[float] = ..., min_feedback: _Optional[int] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("model", "to", "steps", "step_interval_s", "min_requests", "shadow_percent", "gates")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_PERCENT_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    model: str
    to: str
    steps: _containers.RepeatedScalarFieldContainer[int]
    step_interval_s: float
    min_requests: int
    shadow_percent: float
    gates: RolloutGates
    def __init__(self, model: _Optional[str] = ..., to: _Optional[str] = ..., steps: _Optional[_Iterable[int]] = ..., step_interval_s: _Optional[float] = ..., min_requests: _Optional[int] = ..., shadow_percent: _Optional[float] = ..., gates: _Optional[_Union[RolloutGates, _Mapping]] = ..., **kwargs) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class AbortRolloutRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class GateResult(_message.Message):
    __slots__ = ("gate", "verdict", "detail", "figures")
    class FiguresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    GATE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    gate: str
    verdict: str
    detail: str
    figures: _containers.ScalarMap[str, float]
    def __init__(self, gate: _Optional[str] = ..., verdict: _Optional[str] = ..., detail: _Optional[str] = ..., figures: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RolloutTransition(_message.Message):
    __slots__ = ("at", "state", "step", "weight", "reason")
    AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    at: float
    state: str
    step: int
    weight: int
    reason: str
    def __init__(self, at: _Optional[float] = ..., state: _Optional[str] = ..., step: _Optional[int] = ..., weight: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RolloutResponse(_message.Message):
    __slots__ = ("model", "state", "to", "steps", "step_interval_s", "min_requests", "shadow_percent", "gates", "step", "weight", "step_started_at", "reason", "evaluation", "history")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_PERCENT_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEP_STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    model: str
    state: str
    to: str
    steps: _containers.RepeatedScalarFieldContainer[int]
    step_interval_s: float
    min_requests: int
    shadow_percent: float
    gates: RolloutGates
    step: int
    weight: int
    step_started_at: float
    reason: str
    evaluation: _containers.RepeatedCompositeFieldContainer[GateResult]
    history: _containers.RepeatedCompositeFieldContainer[RolloutTransition]
    def __init__(self, model: _Optional[str] = ..., state: _Optional[str] = ..., to: _Optional[str] = ..., steps: _Optional[_Iterable[int]] = ..., step_interval_s: _Optional[float] = ..., min_requests: _Optional[int] = ..., shadow_percent: _Optional[float] = ..., gates: _Optional[_Union[RolloutGates, _Mapping]] = ..., step: _Optional[int] = ..., weight: _Optional[int] = ..., step_started_at: _Optional[float] = ..., reason: _Optional[str] = ..., evaluation: _Optional[_Iterable[_Union[GateResult, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[RolloutTransition, _Mapping]]] = ..., **kwargs) -> None: ...
