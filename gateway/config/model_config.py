"""Reads a model's config.pbtxt (protobuf text format) into a frozen ModelPolicy.

The accepted grammar is the subset of Triton's ModelConfig in protos/inference/model_config.proto:
a field outside it fails to parse, with the file, line and field named. Fields inside it whose
values the gateway cannot honour are rejected here too, never silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format

from gateway.core.errors import clipped
from gateway.core.model import (
    BatchingPolicy,
    DeviceKind,
    ModelPolicy,
    PlacementPolicy,
    QueuePolicy,
    TensorSpec,
    VersionPolicy,
    WarmupInput,
    WarmupSample,
)
from gateway.core.ports import SourceError
from gateway.generated import model_config_pb2 as pb

CONFIG_FILENAME = "config.pbtxt"
ONNX_PLATFORMS = frozenset({"onnxruntime_onnx"})
ONNX_BACKENDS = frozenset({"onnxruntime"})
GPU_ACCELERATORS = frozenset({"tensorrt", "cuda"})

# Model parameters the gateway understands, with a check for each value.
_TRUE_FALSE = frozenset({"true", "false"})
_GRAPH_LEVELS = frozenset({"disable_all", "basic", "extended", "all"})
_EXECUTION_MODES = frozenset({"sequential", "parallel"})
KNOWN_PARAMETERS: dict[str, str] = {
    "intra_op_thread_count": "a non-negative integer",
    "inter_op_thread_count": "a non-negative integer",
    "graph_optimization_level": "one of disable_all, basic, extended, all",
    "execution_mode": "sequential or parallel",
    "allow_cpu_fallback": "true or false",
    "enable_mem_arena": "true or false",
    "enable_mem_pattern": "true or false",
    "prediction_output": "the name of an output (which output holds the prediction)",
    "prediction": "one of label, argmax, value (how the prediction is read)",
    "class_names": "comma-separated class names, in class index order",
    "returning_wait_microseconds": "a non-negative integer (see README, Dynamic batching)",
}
_PREDICTIONS = frozenset({"label", "argmax", "value"})
_VERBATIM = frozenset({"prediction_output", "class_names"})
"""Parameters whose value is kept as written (names), not lower-cased."""


class ModelConfigError(SourceError):
    """A config.pbtxt that cannot be served; the message names the file and the field."""


def _v2_datatype(path: Path, where: str, data_type: int) -> str:
    name: str = pb.DataType.Name(data_type)
    if name == "TYPE_INVALID":
        raise ModelConfigError(f"{path}: {where}: data_type is missing")
    if name == "TYPE_STRING":
        return "BYTES"
    if name == "TYPE_BF16":
        raise ModelConfigError(f"{path}: {where}: data_type TYPE_BF16 is not supported")
    return name.removeprefix("TYPE_")


def _tensor(path: Path, where: str, message: Any, is_input: bool) -> TensorSpec:
    if not message.name:
        raise ModelConfigError(f"{path}: {where}: name is missing")
    where = f"{where} '{message.name}'"
    if message.HasField("reshape"):
        raise ModelConfigError(f"{path}: {where}: 'reshape' is not supported")
    if message.is_shape_tensor:
        raise ModelConfigError(f"{path}: {where}: 'is_shape_tensor' is not supported")
    if is_input and (message.format or message.allow_ragged_batch or message.optional):
        raise ModelConfigError(
            f"{path}: {where}: 'format', 'allow_ragged_batch' and 'optional' are not supported"
        )
    if any(d < -1 for d in message.dims):
        raise ModelConfigError(f"{path}: {where}: dims must be -1 (any) or >= 0")
    datatype = _v2_datatype(path, where, message.data_type)
    return TensorSpec(message.name, datatype, tuple(message.dims))


def _versions(path: Path, config: Any) -> VersionPolicy:
    if not config.HasField("version_policy"):
        return VersionPolicy()
    which = config.version_policy.WhichOneof("policy_choice")
    if which == "all":
        return VersionPolicy(latest=None, all=True)
    if which == "specific":
        versions = config.version_policy.specific.versions
        if not versions or any(v < 1 for v in versions):
            raise ModelConfigError(
                f"{path}: version_policy.specific.versions must list version numbers >= 1"
            )
        return VersionPolicy(latest=None, specific=frozenset(versions))
    count = config.version_policy.latest.num_versions if which == "latest" else 1
    if count < 1:
        raise ModelConfigError(f"{path}: version_policy.latest.num_versions must be >= 1")
    return VersionPolicy(latest=count)


def _batching(path: Path, config: Any) -> BatchingPolicy | None:
    if not config.HasField("dynamic_batching"):
        return None
    batching = config.dynamic_batching
    preferred = tuple(batching.preferred_batch_size)
    if any(size < 1 for size in preferred):
        raise ModelConfigError(f"{path}: dynamic_batching.preferred_batch_size must be >= 1")
    levels = batching.priority_levels
    if levels and not 1 <= batching.default_priority_level <= levels:
        raise ModelConfigError(
            f"{path}: dynamic_batching.default_priority_level must be between 1 and "
            f"priority_levels ({levels}), not {batching.default_priority_level}"
        )
    for name in ("default_priority_level", "priority_queue_policy"):
        if not levels and getattr(batching, name):  # Triton ignores them; we never do silently
            raise ModelConfigError(f"{path}: dynamic_batching.{name} needs priority_levels")
    outside = sorted(level for level in batching.priority_queue_policy if not 1 <= level <= levels)
    if outside:
        raise ModelConfigError(
            f"{path}: dynamic_batching.priority_queue_policy names level(s) "
            f"{', '.join(map(str, outside))}, outside 1..priority_levels ({levels})"
        )
    return BatchingPolicy(
        max_queue_delay_us=batching.max_queue_delay_microseconds,
        preferred_batch_sizes=preferred,
        queue=_queue_policy(batching.default_queue_policy),
        priority_levels=levels,
        default_priority_level=batching.default_priority_level,
        priority_queues={
            level: _queue_policy(queue) for level, queue in batching.priority_queue_policy.items()
        },
    )


def _queue_policy(queue: Any) -> QueuePolicy:
    return QueuePolicy(
        max_queue_size=queue.max_queue_size,
        default_timeout_us=queue.default_timeout_microseconds,
        allow_timeout_override=queue.allow_timeout_override,
        delay=pb.ModelQueuePolicy.TimeoutAction.Name(queue.timeout_action) == "DELAY",
    )


def _placement(path: Path, config: Any, parameters: dict[str, str]) -> PlacementPolicy:
    kinds: set[str] = set()
    count, gpus = 0, []
    for group in config.instance_group:
        kind = pb.ModelInstanceGroup.Kind.Name(group.kind)
        if kind == "KIND_MODEL":
            raise ModelConfigError(f"{path}: instance_group kind KIND_MODEL is not supported")
        if group.HasField("rate_limiter"):
            raise ModelConfigError(f"{path}: instance_group rate_limiter is not supported")
        kinds.add("KIND_GPU" if kind == "KIND_GPU" else "KIND_CPU")
        if group.count < 0:
            raise ModelConfigError(
                f"{path}: instance_group count is {group.count}, expected 1 or more (0 or "
                "absent: 1)"
            )
        count += group.count or 1
        gpus.extend(group.gpus)
    if len(kinds) > 1:
        raise ModelConfigError(
            f"{path}: instance_group mixes KIND_CPU and KIND_GPU; use one kind per model"
        )
    accelerators: list[str] = []
    accelerator_parameters: dict[str, dict[str, str]] = {}
    if config.HasField("optimization"):
        optimization = config.optimization
        accel = optimization.execution_accelerators
        if accel.cpu_execution_accelerator:
            names = ", ".join(a.name for a in accel.cpu_execution_accelerator)
            raise ModelConfigError(
                f"{path}: optimization.execution_accelerators.cpu_execution_accelerator "
                f"({names}) is not supported"
            )
        for accelerator in accel.gpu_execution_accelerator:
            name = accelerator.name.lower()
            if name not in GPU_ACCELERATORS:
                raise ModelConfigError(
                    f"{path}: gpu_execution_accelerator '{accelerator.name}' is not supported; "
                    f"expected one of {', '.join(sorted(GPU_ACCELERATORS))}"
                )
            accelerators.append(name)
            accelerator_parameters[name] = dict(accelerator.parameters)
    gpu = "KIND_GPU" in kinds or bool(accelerators)
    return PlacementPolicy(
        kind=DeviceKind.GPU if gpu else DeviceKind.CPU,
        count=count,
        gpus=tuple(gpus),
        accelerators=tuple(accelerators),
        accelerator_parameters=accelerator_parameters,
        allow_cpu_fallback=parameters.get("allow_cpu_fallback") == "true",
    )


def _parameters(path: Path, config: Any) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for key, value in config.parameters.items():
        expected = KNOWN_PARAMETERS.get(key)
        if expected is None:
            raise ModelConfigError(
                f"{path}: parameters: unknown key '{key}'; known keys: "
                f"{', '.join(sorted(KNOWN_PARAMETERS))}"
            )
        text = value.string_value.strip()
        text = text if key in _VERBATIM else text.lower()
        names = [name.strip() for name in text.split(",")]
        whole = text.isascii() and text.isdigit() and len(text) <= 9  # not "²", not 10**5000
        valid = {
            "intra_op_thread_count": whole,
            "inter_op_thread_count": whole,
            "returning_wait_microseconds": whole,
            "graph_optimization_level": text in _GRAPH_LEVELS,
            "execution_mode": text in _EXECUTION_MODES,
            "prediction_output": bool(text),
            "prediction": text in _PREDICTIONS,
            "class_names": all(names) and len(set(names)) == len(names),
        }.get(key, text in _TRUE_FALSE)
        if not valid:
            raise ModelConfigError(
                f"{path}: parameters: '{key}' is '{value.string_value}', expected {expected}"
            )
        parameters[key] = text
    return parameters


def _warmup(path: Path, config: Any) -> tuple[WarmupSample, ...]:
    samples: list[WarmupSample] = []
    for index, sample in enumerate(config.model_warmup):
        where = f"model_warmup[{index}]"
        if not sample.name:
            raise ModelConfigError(f"{path}: {where}: name is missing")
        where = f"model_warmup '{sample.name}'"
        if not sample.inputs:
            raise ModelConfigError(f"{path}: {where}: inputs are missing")
        inputs: list[WarmupInput] = []
        for name, spec in sorted(sample.inputs.items()):
            at = f"{where} input '{name}'"
            datatype = _v2_datatype(path, at, spec.data_type)
            if any(d < 1 for d in spec.dims):
                raise ModelConfigError(f"{path}: {at}: dims must be concrete sizes >= 1")
            source = spec.WhichOneof("input_data_type")
            if source is None:
                raise ModelConfigError(
                    f"{path}: {at}: set one of zero_data, random_data or input_data_file"
                )
            file = spec.input_data_file
            if source == "input_data_file" and (
                not file or "/" in file or "\\" in file or file.startswith(".")
            ):
                raise ModelConfigError(
                    f"{path}: {at}: input_data_file must name a file in the model's warmup/ "
                    f"directory, got {file!r}"
                )
            kind = {"zero_data": "zero", "random_data": "random"}.get(source, "file")
            inputs.append(WarmupInput(name, datatype, tuple(spec.dims), kind, file))
        count = sample.count or 1
        samples.append(WarmupSample(sample.name, sample.batch_size, tuple(inputs), count))
    return tuple(samples)


def parse_model_config(path: Path, text: str, directory_name: str) -> ModelPolicy:
    """Parse config.pbtxt text; `path` is only used in error messages."""
    try:
        config = text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        line = exc.GetLine()
        where = f"{path}:{line}" if line else str(path)
        raise ModelConfigError(f"{where}: {exc}") from exc
    return _policy(path, config, directory_name)


def parse_model_config_json(text: str, directory_name: str) -> ModelPolicy:
    """Parse the JSON form of a model config, as Triton's load API takes it in `config`."""
    where = Path(f"{directory_name} (config override)")
    try:
        config = json_format.Parse(text, pb.ModelConfig())
    except json_format.ParseError as exc:
        raise ModelConfigError(f"{where}: {exc}") from exc
    return _policy(where, config, directory_name)


def _policy(path: Path, config: Any, directory_name: str) -> ModelPolicy:
    if config.name and config.name != directory_name:
        raise ModelConfigError(
            f"{path}: name '{config.name}' does not match the model directory '{directory_name}'"
        )
    if config.platform and config.platform not in ONNX_PLATFORMS:
        raise ModelConfigError(
            f"{path}: platform '{config.platform}' is not supported; this gateway serves ONNX "
            "models (platform 'onnxruntime_onnx' or backend 'onnxruntime')"
        )
    if config.backend and config.backend not in ONNX_BACKENDS:
        raise ModelConfigError(
            f"{path}: backend '{config.backend}' is not supported; expected 'onnxruntime'"
        )
    if config.max_batch_size < 0:
        raise ModelConfigError(f"{path}: max_batch_size must be >= 0")
    inputs = tuple(_tensor(path, "input", t, True) for t in config.input)
    outputs = tuple(_tensor(path, "output", t, False) for t in config.output)
    for kind, specs in (("input", inputs), ("output", outputs)):
        names = [t.name for t in specs]
        if len(set(names)) != len(names):
            raise ModelConfigError(f"{path}: {kind} names must be unique")
    parameters = _parameters(path, config)
    wanted = parameters.get("prediction_output")
    if wanted and outputs and wanted not in {t.name for t in outputs}:
        raise ModelConfigError(
            f"{path}: parameters: 'prediction_output' is '{wanted}', which is not an output"
        )
    explicit_batch = config.max_batch_size > 0 or bool(inputs or outputs)
    return ModelPolicy(
        name=directory_name,
        max_batch_size=config.max_batch_size if explicit_batch else None,
        inputs=inputs,
        outputs=outputs,
        versions=_versions(path, config),
        batching=_batching(path, config),
        placement=_placement(path, config, parameters),
        parameters=parameters,
        default_model_filename=_model_filename(path, config.default_model_filename),
        warmup=_warmup(path, config),
        configured=True,
    )


def _model_filename(path: Path, name: str) -> str:
    """A file name inside each version directory: never a path that leads out of it."""
    if not name:
        return "model.onnx"
    if "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise ModelConfigError(
            f"{path}: default_model_filename {clipped(name)!r} must be a file name in the "
            "version directory, not a path"
        )
    return name


def read_model_policy(model_dir: Path) -> ModelPolicy:
    """The policy of the model in `model_dir`: from its config.pbtxt, or all defaults."""
    path = model_dir / CONFIG_FILENAME
    try:
        if not path.is_file():
            return ModelPolicy(name=model_dir.name)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelConfigError(f"{path}: cannot be read: {exc}") from exc
    return parse_model_config(path, text, model_dir.name)
