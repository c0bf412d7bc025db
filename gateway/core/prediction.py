"""How a version's prediction is read from its answer, and what a true label may look like.

The reading runs on the request path for requests that carry an id, so it reduces an output to
a few Python numbers with one numpy call and keeps nothing else.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.core.errors import InvalidInputError
from gateway.core.model import ModelSignature
from gateway.core.types import Tensor

MAX_PREDICTION_VALUES = 64
"""A request whose prediction has more values (rows x values per row) is not remembered."""
Label = tuple[int | float | str, ...]
"""A true label as sent: one class index, class name or number per predicted value."""

_INTEGER = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_FLOAT = frozenset({"FP16", "FP32", "FP64"})


class Prediction(enum.Enum):
    """How a version's prediction is read from its outputs."""

    LABEL = "label"
    """The output holds class indices (one per row)."""
    ARGMAX = "argmax"
    """The class is the argmax over the output's last dimension (scores, probabilities)."""
    VALUE = "value"
    """The output holds numbers (regression): mean absolute error, no accuracy."""


@dataclass(frozen=True, slots=True)
class PredictionRule:
    """Which output holds a version's prediction, how to read it, and its class names."""

    output: str
    prediction: Prediction
    class_names: Mapping[str, int] = field(default_factory=dict)


def prediction_rule(
    signature: ModelSignature, parameters: Mapping[str, str]
) -> PredictionRule | None:
    """The configured rule (model parameters `prediction_output`, `prediction`, `class_names`),
    or the automatic one: an integer output of shape [batch] is the label; otherwise the first
    floating-point output, read as a value when it has one value per row and by argmax over its
    last dimension otherwise. None when no output fits; ValueError for a configured output that
    does not exist or cannot be read so."""
    names = [n.strip() for n in parameters.get("class_names", "").split(",") if n.strip()]
    classes = {name: index for index, name in enumerate(names)}
    wanted = parameters.get("prediction_output", "")
    how = parameters.get("prediction", "")
    specs = signature.outputs
    if wanted:
        spec = signature.outputs_by_name.get(wanted)
        if spec is None:
            known = ", ".join(t.name for t in specs)
            raise ValueError(f"prediction_output '{wanted}' is not an output (outputs: {known})")
        specs = (spec,)
    for spec in specs:
        numeric = spec.datatype in _INTEGER or spec.datatype in _FLOAT
        one_per_row = spec.dims in ((), (1,)) if signature.batched else len(spec.dims) <= 1
        if how and numeric:
            return PredictionRule(spec.name, Prediction(how), classes)
        if how:
            continue
        if spec.datatype in _INTEGER and one_per_row:
            return PredictionRule(spec.name, Prediction.LABEL, classes)
        if spec.datatype in _FLOAT:
            kind = Prediction.VALUE if one_per_row else Prediction.ARGMAX
            return PredictionRule(spec.name, kind, classes)
    if wanted:
        raise ValueError(
            f"prediction output '{wanted}' cannot be read "
            + ("(it is not numeric)" if how else "automatically: set the 'prediction' parameter")
        )
    return None


def predicted_values(rule: PredictionRule, outputs: Sequence[Tensor]) -> tuple[Any, ...] | None:
    """The prediction of one answered request as a few Python numbers (class indices or
    values, row-major); None when the output is absent or holds too many values."""
    for tensor in outputs:
        if tensor.name == rule.output:
            array = tensor.array
            break
    else:
        return None
    if rule.prediction is Prediction.ARGMAX:
        if array.ndim == 0 or array.shape[-1] == 0:
            return None
        array = array.argmax(axis=-1)
    if array.size > MAX_PREDICTION_VALUES:
        return None
    values = array.ravel().tolist()
    return tuple(values)


def parse_label(value: object, where: str) -> Label:
    """A label as sent in JSON or a request parameter: a class index, a class name or a number,
    or a non-empty list of them (one per row, or the values of a regression output)."""
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > MAX_PREDICTION_VALUES:
        raise InvalidInputError(
            f"{where} must hold 1 to {MAX_PREDICTION_VALUES} values, got {len(items)}"
        )
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float | str):
            raise InvalidInputError(
                f"{where} must be a class index, a class name or a number, or a list of them "
                f"(one per row); got {type(item).__name__} {item!r:.40}"
            )
        if isinstance(item, float) and not math.isfinite(item):
            raise InvalidInputError(f"{where} must be finite, got {item}")
        if isinstance(item, str) and not item:
            raise InvalidInputError(f"{where}: a class name must not be empty")
    return tuple(items)
