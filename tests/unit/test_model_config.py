"""config.pbtxt parsing: the supported subset becomes a policy, everything else a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.model_config import ModelConfigError, parse_model_config
from gateway.core.model import DeviceKind

PATH = Path("/repo/m/config.pbtxt")


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_model_config(PATH, text, "m")


def test_empty_config_means_defaults_and_auto_complete() -> None:
    policy = parse("")
    assert policy.max_batch_size is None
    assert policy.inputs == policy.outputs == ()
    assert policy.versions.select([1, 2, 3]) == [3]
    assert policy.placement.kind is DeviceKind.CPU
    assert policy.batching is None


def test_full_supported_config() -> None:
    policy = parse(
        """
        name: "m"
        backend: "onnxruntime"
        max_batch_size: 16
        input [ { name: "x", data_type: TYPE_FP32, dims: [ -1, 3 ] } ]
        output [ { name: "y", data_type: TYPE_STRING, dims: [ 1 ] } ]
        version_policy: { latest: { num_versions: 2 } }
        dynamic_batching {
          preferred_batch_size: [ 4, 8 ]
          max_queue_delay_microseconds: 100
          default_queue_policy { max_queue_size: 32, default_timeout_microseconds: 5000,
                                 allow_timeout_override: true }
        }
        instance_group [ { count: 2, kind: KIND_GPU, gpus: [ 1 ] } ]
        optimization { execution_accelerators { gpu_execution_accelerator : [
          { name : "tensorrt", parameters { key: "precision_mode" value: "FP16" } } ] } }
        parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
        """
    )
    assert policy.max_batch_size == 16
    assert policy.inputs[0].dims == (-1, 3) and policy.inputs[0].datatype == "FP32"
    assert policy.outputs[0].datatype == "BYTES"
    assert policy.versions.select([1, 2, 3]) == [2, 3]
    assert policy.batching is not None
    assert policy.batching.preferred_batch_sizes == (4, 8)
    assert policy.batching.queue.max_queue_size == 32
    assert policy.batching.queue.allow_timeout_override
    assert policy.placement.kind is DeviceKind.GPU
    assert policy.placement.count == 2 and policy.placement.gpus == (1,)
    assert policy.placement.accelerators == ("tensorrt",)
    assert policy.placement.accelerator_parameters["tensorrt"] == {"precision_mode": "FP16"}
    assert policy.parameters == {"intra_op_thread_count": "2"}


def test_priority_levels_and_queue_policies() -> None:
    batching = parse(
        """
        max_batch_size: 8
        dynamic_batching {
          priority_levels: 3
          default_priority_level: 2
          default_queue_policy { timeout_action: DELAY, default_timeout_microseconds: 100 }
          priority_queue_policy { key: 1 value { max_queue_size: 4, allow_timeout_override: true } }
        }
        """
    ).batching
    assert batching is not None
    assert batching.priority_levels == 3 and batching.default_priority_level == 2
    assert batching.queue.delay and batching.queue.default_timeout_us == 100
    first = batching.queue_for(1)
    assert first.max_queue_size == 4 and first.allow_timeout_override and not first.delay
    assert batching.queue_for(2) is batching.queue is batching.queue_for(3)
    # Triton: a request naming no level, level 0 or one past the last waits at the default.
    levels = [batching.level(p) for p in (None, 0, 1, 2, 3, 4, 10**12)]
    assert levels == [2, 2, 1, 2, 3, 2, 2]
    assert parse("dynamic_batching { }").batching.level(1) == 0  # type: ignore[union-attr]


def test_version_policies() -> None:
    assert parse("version_policy: { all { } }").versions.select([3, 1, 2]) == [1, 2, 3]
    specific = parse("version_policy: { specific { versions: [ 1, 3 ] } }").versions
    assert specific.select([1, 2, 3]) == [1, 3]


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('name: "m"\nfoo: 1\n', ["config.pbtxt:2", 'no field named "foo"']),
        ("\n\nsequence_batching { }\n", ["config.pbtxt:3", "sequence_batching"]),
        ("ensemble_scheduling { }", ["config.pbtxt:1", "ensemble_scheduling"]),
        ("max_batch_size: many", ["config.pbtxt:1", "max_batch_size"]),
        ('name: "other"', ["does not match the model directory"]),
        ('platform: "tensorflow_savedmodel"', ["platform 'tensorflow_savedmodel'"]),
        ('backend: "python"', ["backend 'python'"]),
        ("max_batch_size: -1", ["max_batch_size must be >= 0"]),
        ('input [ { name: "x", dims: [ 1 ] } ]', ["input 'x'", "data_type is missing"]),
        ('input [ { name: "x", data_type: TYPE_FP32, dims: [ -2 ] } ]', ["dims must be -1"]),
        ('input [ { name: "x", data_type: TYPE_BF16, dims: [ 1 ] } ]', ["TYPE_BF16"]),
        (
            'input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ], reshape: { shape: [ 2, 2 ] } } ]',
            ["'reshape' is not supported"],
        ),
        ("version_policy: { latest: { num_versions: 0 } }", ["num_versions must be >= 1"]),
        ("dynamic_batching { priority_levels: 2 }", ["default_priority_level", "not 0"]),
        (
            "dynamic_batching { priority_levels: 2, default_priority_level: 3 }",
            ["default_priority_level must be between 1 and priority_levels (2)"],
        ),
        ("dynamic_batching { default_priority_level: 1 }", ["needs priority_levels"]),
        (
            "dynamic_batching { priority_queue_policy { key: 1 value { max_queue_size: 1 } } }",
            ["priority_queue_policy needs priority_levels"],
        ),
        (
            "dynamic_batching { priority_levels: 2, default_priority_level: 1,"
            " priority_queue_policy { key: 3 value { max_queue_size: 1 } } }",
            ["priority_queue_policy names level(s) 3", "outside 1..priority_levels (2)"],
        ),
        ("instance_group [ { kind: KIND_MODEL } ]", ["KIND_MODEL"]),
        ("instance_group [ { kind: KIND_CPU }, { kind: KIND_GPU } ]", ["mixes KIND_CPU"]),
        (
            'instance_group [ { rate_limiter { resources [ { name: "r", count: 1 } ] } } ]',
            ["rate_limiter"],
        ),
        (
            'optimization { execution_accelerators { cpu_execution_accelerator : [ { name : "openvino" } ] } }',
            ["cpu_execution_accelerator", "openvino"],
        ),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "x" } ] } }',
            ["gpu_execution_accelerator 'x'"],
        ),
        ('parameters { key: "colour" value: { string_value: "x" } }', ["unknown key 'colour'"]),
        (
            'parameters { key: "intra_op_thread_count" value: { string_value: "lots" } }',
            ["'intra_op_thread_count' is 'lots'", "non-negative integer"],
        ),
        (
            'parameters { key: "allow_cpu_fallback" value: { string_value: "maybe" } }',
            ["true or false"],
        ),
        (
            'parameters { key: "returning_wait_microseconds" value: { string_value: "-5" } }',
            ["'returning_wait_microseconds' is '-5'", "non-negative integer"],
        ),
        ('model_warmup [ { name: "w", batch_size: 1 } ]', ["model_warmup"]),
        # Each of these once loaded far enough to leave its version LOADING for good (a 500).
        ("instance_group [ { count: -1 } ]", ["instance_group count is -1", "1 or more"]),
        (
            'parameters { key: "returning_wait_microseconds" value: { string_value: "\u00b2" } }',
            ["'returning_wait_microseconds'", "non-negative integer"],
        ),
        (
            'parameters { key: "intra_op_thread_count" value: { string_value: "1000000000000" } }',
            ["'intra_op_thread_count'", "non-negative integer"],
        ),
        (
            'default_model_filename: "../../other/1/model.onnx"',
            ["default_model_filename", "not a path"],
        ),
        ('default_model_filename: "/etc/model.onnx"', ["not a path"]),
        ('default_model_filename: ".."', ["not a path"]),
    ],
)
def test_unsupported_or_invalid_configs_name_file_and_field(
    text: str, fragments: list[str]
) -> None:
    with pytest.raises(ModelConfigError) as raised:
        parse(text)
    message = str(raised.value)
    assert str(PATH) in message
    for fragment in fragments:
        assert fragment in message
