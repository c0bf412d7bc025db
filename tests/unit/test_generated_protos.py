"""Tests for protos/ and the generated code in gateway/generated/.

The generated code must be up to date with protos/, and it must be wire compatible with NVIDIA
Triton's own definitions as shipped in ``tritonclient`` (the client the gateway has to serve).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor, text_format, unknown_fields
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2 as triton_model_config_pb2
from tritonclient.grpc import service_pb2 as triton_service_pb2

from gateway.generated import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2

ROOT = Path(__file__).resolve().parents[2]
GEN_PROTOS = ROOT / "scripts" / "gen_protos.py"

RPC_NAMES = {
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
}

# A realistic config.pbtxt using every supported area of the model configuration.
CONFIG_PBTXT = textwrap.dedent(
    """\
    name: "resnet50"
    platform: "onnxruntime_onnx"
    max_batch_size: 8
    version_policy: { specific: { versions: [ 1, 3 ] } }
    input [
      {
        name: "input"
        data_type: TYPE_FP32
        format: FORMAT_NCHW
        dims: [ 3, 224, 224 ]
      },
      {
        name: "scale"
        data_type: TYPE_FP16
        dims: [ 1 ]
        optional: true
      }
    ]
    output [
      {
        name: "probabilities"
        data_type: TYPE_FP32
        dims: [ 1000 ]
        label_filename: "labels.txt"
      }
    ]
    instance_group [
      {
        kind: KIND_GPU
        count: 2
        gpus: [ 0, 1 ]
      }
    ]
    dynamic_batching {
      preferred_batch_size: [ 4, 8 ]
      max_queue_delay_microseconds: 100
      default_queue_policy {
        timeout_action: DELAY
        default_timeout_microseconds: 50000
        allow_timeout_override: true
        max_queue_size: 64
      }
    }
    optimization {
      graph { level: 1 }
      execution_accelerators {
        gpu_execution_accelerator : [ {
          name : "tensorrt"
          parameters { key: "precision_mode" value: "FP16" }
          parameters { key: "max_workspace_size_bytes" value: "1073741824" }
        } ]
      }
      input_pinned_memory { enable: false }
    }
    parameters { key: "intra_op_thread_count" value: { string_value: "4" } }
    model_warmup [
      {
        name: "zeros"
        batch_size: 1
        inputs {
          key: "input"
          value: { data_type: TYPE_FP32 dims: [ 3, 224, 224 ] zero_data: true }
        }
      }
    ]
    """
)


def _field_signature(field: descriptor.FieldDescriptor) -> tuple[object, ...]:
    oneof = field.containing_oneof.name if field.containing_oneof else None
    message_type = field.message_type.full_name if field.message_type else None
    enum_type = field.enum_type.full_name if field.enum_type else None
    repeated = field.is_repeated
    return (field.number, field.type, repeated, message_type, enum_type, oneof)


def _messages(file: descriptor.FileDescriptor) -> dict[str, descriptor.Descriptor]:
    found: dict[str, descriptor.Descriptor] = {}

    def visit(message: descriptor.Descriptor) -> None:
        found[message.full_name] = message
        for nested in message.nested_types:
            visit(nested)

    for message in file.message_types_by_name.values():
        visit(message)
    return found


def _enums(file: descriptor.FileDescriptor) -> dict[str, dict[str, int]]:
    found = {e.full_name: e for e in file.enum_types_by_name.values()}
    for message in _messages(file).values():
        found.update((e.full_name, e) for e in message.enum_types)
    return {name: {v.name: v.number for v in e.values} for name, e in found.items()}


def _unknown_fields(msg: Message, path: str = "") -> list[str]:
    """Paths of the (sub)messages of `msg` that carry fields their definition does not know."""
    found = [path or "<root>"] if len(unknown_fields.UnknownFieldSet(msg)) else []
    for field, value in msg.ListFields():
        if field.type != descriptor.FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is None:
                continue
            items = [(f"{path}.{field.name}[{k!r}]", v) for k, v in value.items()]
        elif field.is_repeated:
            items = [(f"{path}.{field.name}[{i}]", v) for i, v in enumerate(value)]
        else:
            items = [(f"{path}.{field.name}", value)]
        for sub_path, sub in items:
            found += _unknown_fields(sub, sub_path)
    return found


def test_generated_code_is_up_to_date_with_protos() -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpc_tools (grpcio-tools) is not installed: cannot regenerate to compare")
    proc = subprocess.run(
        [sys.executable, str(GEN_PROTOS), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        pytest.fail(
            "gateway/generated/ is out of date with protos/ (or was edited by hand): "
            "run `make protos` and commit the result.\n" + proc.stdout + proc.stderr,
            pytrace=False,
        )


def test_grpc_service_matches_triton_exactly() -> None:
    ours = _messages(grpc_service_pb2.DESCRIPTOR)
    triton = _messages(triton_service_pb2.DESCRIPTOR)
    assert sorted(ours) == sorted(triton)
    for name, message in triton.items():
        expected = {f.name: _field_signature(f) for f in message.fields}
        actual = {f.name: _field_signature(f) for f in ours[name].fields}
        assert actual == expected, name
    assert _enums(grpc_service_pb2.DESCRIPTOR) == _enums(triton_service_pb2.DESCRIPTOR)


def test_model_config_is_a_field_exact_subset_of_triton() -> None:
    ours = _messages(model_config_pb2.DESCRIPTOR)
    triton = _messages(triton_model_config_pb2.DESCRIPTOR)
    assert set(ours) <= set(triton)
    for name, message in ours.items():
        expected = {f.name: _field_signature(f) for f in triton[name].fields}
        for field in message.fields:
            assert field.name in expected, f"{name}.{field.name} is not in Triton's ModelConfig"
            assert _field_signature(field) == expected[field.name], f"{name}.{field.name}"
    triton_enums = _enums(triton_model_config_pb2.DESCRIPTOR)
    for name, values in _enums(model_config_pb2.DESCRIPTOR).items():
        assert values == triton_enums[name], name  # every enum kept is kept whole
    assert "inference.ModelSequenceBatching" not in ours
    assert "sequence_batching" not in model_config_pb2.ModelConfig.DESCRIPTOR.fields_by_name


def test_service_descriptor_lists_every_rpc() -> None:
    service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} == RPC_NAMES
    triton = triton_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in triton.methods:
        ours = service.methods_by_name[method.name]
        assert ours.input_type.full_name == method.input_type.full_name
        assert ours.output_type.full_name == method.output_type.full_name
        assert ours.client_streaming == method.client_streaming
        assert ours.server_streaming == method.server_streaming
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming
    for name in RPC_NAMES:
        assert hasattr(grpc_service_pb2_grpc.GRPCInferenceServiceServicer, name)


def test_model_infer_request_is_read_by_tritonclient() -> None:
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    names = np.array([b"a", b"bc"], dtype=np.object_)
    raw_names = b"".join(len(s).to_bytes(4, "little") + s for s in names)
    request = grpc_service_pb2.ModelInferRequest(model_name="mlp", model_version="2", id="req-1")
    request.parameters["priority"].uint64_param = 3
    request.parameters["timeout"].int64_param = 1000
    request.parameters["trace"].string_param = "on"
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[2, 3])
    tensor.parameters["scale"].double_param = 0.5
    request.inputs.add(name="NAMES", datatype="BYTES", shape=[2])
    request.raw_input_contents.extend([data.tobytes(), raw_names])
    output = request.outputs.add(name="OUTPUT0")
    output.parameters["classification"].int64_param = 2
    output.parameters["binary_data"].bool_param = True

    wire = request.SerializeToString(deterministic=True)
    parsed = triton_service_pb2.ModelInferRequest.FromString(wire)

    assert (parsed.model_name, parsed.model_version, parsed.id) == ("mlp", "2", "req-1")
    assert parsed.parameters["priority"].uint64_param == 3
    assert parsed.parameters["timeout"].int64_param == 1000
    assert parsed.parameters["trace"].string_param == "on"
    assert [(t.name, t.datatype, list(t.shape)) for t in parsed.inputs] == [
        ("INPUT0", "FP32", [2, 3]),
        ("NAMES", "BYTES", [2]),
    ]
    assert parsed.inputs[0].parameters["scale"].WhichOneof("parameter_choice") == "double_param"
    assert parsed.inputs[0].parameters["scale"].double_param == 0.5
    decoded = np.frombuffer(parsed.raw_input_contents[0], dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(decoded, data)
    assert parsed.raw_input_contents[1] == raw_names
    assert parsed.outputs[0].name == "OUTPUT0"
    assert parsed.outputs[0].parameters["classification"].int64_param == 2
    assert parsed.outputs[0].parameters["binary_data"].bool_param is True
    assert _unknown_fields(parsed) == []
    assert parsed.SerializeToString(deterministic=True) == wire


def test_model_infer_response_from_tritonclient_is_read_by_gateway() -> None:
    data = np.array([[0.25, 0.75]], dtype=np.float32)
    response = triton_service_pb2.ModelInferResponse(
        model_name="mlp", model_version="1", id="req-1"
    )
    response.parameters["triton_final_response"].bool_param = True
    out0 = response.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 2])
    out0.parameters["binary_data_size"].int64_param = data.nbytes
    response.raw_output_contents.append(data.tobytes())
    out1 = response.outputs.add(name="LABELS", datatype="INT64", shape=[3])
    out1.contents.int64_contents.extend([7, -1, 2**40])

    wire = response.SerializeToString(deterministic=True)
    parsed = grpc_service_pb2.ModelInferResponse.FromString(wire)

    assert (parsed.model_name, parsed.model_version, parsed.id) == ("mlp", "1", "req-1")
    assert parsed.parameters["triton_final_response"].bool_param is True
    assert [(t.name, t.datatype, list(t.shape)) for t in parsed.outputs] == [
        ("OUTPUT0", "FP32", [1, 2]),
        ("LABELS", "INT64", [3]),
    ]
    assert parsed.outputs[0].parameters["binary_data_size"].int64_param == data.nbytes
    np.testing.assert_array_equal(
        np.frombuffer(parsed.raw_output_contents[0], dtype=np.float32).reshape(1, 2), data
    )
    assert list(parsed.outputs[1].contents.int64_contents) == [7, -1, 2**40]
    assert _unknown_fields(parsed) == []
    assert parsed.SerializeToString(deterministic=True) == wire

    stream = grpc_service_pb2.ModelStreamInferResponse(error_message="", infer_response=parsed)
    triton_stream = triton_service_pb2.ModelStreamInferResponse.FromString(
        stream.SerializeToString()
    )
    assert triton_stream.infer_response == response


def test_model_config_response_round_trips_into_tritonclient() -> None:
    config = text_format.Parse(CONFIG_PBTXT, model_config_pb2.ModelConfig())
    wire = grpc_service_pb2.ModelConfigResponse(config=config).SerializeToString()

    received = triton_service_pb2.ModelConfigResponse.FromString(wire).config
    expected = text_format.Parse(CONFIG_PBTXT, triton_model_config_pb2.ModelConfig())

    assert received == expected
    assert _unknown_fields(received) == []
    assert text_format.MessageToString(received) == text_format.MessageToString(config)
    assert received.max_batch_size == 8
    assert list(received.version_policy.specific.versions) == [1, 3]
    assert [i.name for i in received.input] == ["input", "scale"]
    assert received.input[0].data_type == triton_model_config_pb2.TYPE_FP32
    assert received.input[0].format == triton_model_config_pb2.ModelInput.FORMAT_NCHW
    assert list(received.input[0].dims) == [3, 224, 224]
    assert received.input[1].optional is True
    assert received.output[0].label_filename == "labels.txt"
    group = received.instance_group[0]
    assert group.kind == triton_model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (group.count, list(group.gpus)) == (2, [0, 1])
    assert received.WhichOneof("scheduling_choice") == "dynamic_batching"
    policy = received.dynamic_batching.default_queue_policy
    assert policy.timeout_action == triton_model_config_pb2.ModelQueuePolicy.DELAY
    assert (policy.default_timeout_microseconds, policy.max_queue_size) == (50000, 64)
    accelerator = received.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": "1073741824",
    }
    assert received.parameters["intra_op_thread_count"].string_value == "4"
    assert received.model_warmup[0].inputs["input"].zero_data is True

    # And back: what Triton's definition writes, the gateway's reads without loss.
    back = model_config_pb2.ModelConfig.FromString(expected.SerializeToString())
    assert back == config


@pytest.mark.parametrize(
    ("unsupported", "line", "field"),
    [
        ("sequence_batching { }", 3, "sequence_batching"),
        ('ensemble_scheduling { step [ { model_name: "a" } ] }', 3, "ensemble_scheduling"),
        ("model_transaction_policy { decoupled: true }", 3, "model_transaction_policy"),
        ("optimization {\n  cuda { graphs: true }\n}", 4, "cuda"),
    ],
)
def test_unsupported_config_field_is_a_parse_error(unsupported: str, line: int, field: str) -> None:
    text = f'name: "m"\nbackend: "onnxruntime"\n{unsupported}\nmax_batch_size: 4\n'
    # Valid for Triton: the gateway rejects it on purpose, not because of a typo here.
    text_format.Parse(text, triton_model_config_pb2.ModelConfig())

    with pytest.raises(text_format.ParseError) as excinfo:
        text_format.Parse(text, model_config_pb2.ModelConfig())

    assert excinfo.value.GetLine() == line
    message = str(excinfo.value)
    assert message.startswith(f"{line}:")
    assert f'no field named "{field}"' in message


def test_triton_only_fields_arrive_as_unknown_fields() -> None:
    triton = text_format.Parse(
        'name: "m" sequence_batching { } input [ { name: "x" is_non_linear_format_io: true } ]',
        triton_model_config_pb2.ModelConfig(),
    )
    ours = model_config_pb2.ModelConfig.FromString(triton.SerializeToString())
    # The numbers of the omitted fields are not reused: they are kept as unknown fields.
    assert _unknown_fields(ours) == ["<root>", ".input[0]"]
    assert ours.name == "m" and ours.input[0].name == "x"
