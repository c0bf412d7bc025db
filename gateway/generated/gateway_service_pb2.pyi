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
