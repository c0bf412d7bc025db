"""Server metadata, V2 model metadata and Triton's model configuration, as dicts.

Both adapters use these dicts: HTTP sends them as JSON, gRPC parses them into its messages, so
the two protocols can never describe the server or a model differently.
"""

from __future__ import annotations

from typing import Any

from gateway.core.model import DeviceKind, LoadedVersion, QueuePolicy, TensorSpec
from gateway.core.registry import VersionState
from gateway.core.service import SERVER_NAME, IndexEntry
from gateway.core.statistics import Duration, VersionStatistics

EXECUTION_PROVIDERS_KEY = "execution_providers"

EXTENSIONS: tuple[str, ...] = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
)
"""Triton/KServe protocol extensions this server implements, listed in server metadata."""


def server_metadata_dict(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def config_datatype(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _config_tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "data_type": config_datatype(spec.datatype), "dims": list(spec.dims)}


def model_config_dict(loaded: LoadedVersion) -> dict[str, Any]:
    """The effective configuration, in the JSON shape of Triton's ModelConfig message."""
    policy, signature = loaded.policy, loaded.signature
    versions = policy.versions
    if versions.all:
        version_policy: dict[str, Any] = {"all": {}}
    elif versions.specific:
        version_policy = {"specific": {"versions": sorted(versions.specific)}}
    else:
        version_policy = {"latest": {"num_versions": versions.latest or 1}}
    placement = policy.placement
    group: dict[str, Any] = {
        "name": policy.name,
        "kind": "KIND_GPU" if placement.kind is DeviceKind.GPU else "KIND_CPU",
        "count": loaded.concurrency,
    }
    if placement.gpus:
        group["gpus"] = list(placement.gpus)
    parameters = {key: {"string_value": value} for key, value in policy.parameters.items()}
    parameters[EXECUTION_PROVIDERS_KEY] = {"string_value": ",".join(loaded.providers)}
    config: dict[str, Any] = {
        "name": policy.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": version_policy,
        "max_batch_size": signature.max_batch_size,
        "input": [_config_tensor(t) for t in signature.inputs],
        "output": [_config_tensor(t) for t in signature.outputs],
        "instance_group": [group],
        "default_model_filename": policy.default_model_filename,
        "parameters": parameters,
    }
    if policy.batching is not None:
        batching = policy.batching
        config["dynamic_batching"] = {
            "preferred_batch_size": list(batching.preferred_batch_sizes),
            "max_queue_delay_microseconds": batching.max_queue_delay_us,
            "priority_levels": batching.priority_levels,
            "default_priority_level": batching.default_priority_level,
            "default_queue_policy": _queue_policy(batching.queue),
            "priority_queue_policy": {
                str(level): _queue_policy(queue)
                for level, queue in sorted(batching.priority_queues.items())
            },
        }
    if placement.accelerators:
        params = placement.accelerator_parameters
        config["optimization"] = {
            "execution_accelerators": {
                "gpu_execution_accelerator": [
                    {"name": name, "parameters": dict(params.get(name, {}))}
                    for name in placement.accelerators
                ]
            }
        }
    return config


def _queue_policy(queue: QueuePolicy) -> dict[str, Any]:
    return {
        "timeout_action": "DELAY" if queue.delay else "REJECT",
        "default_timeout_microseconds": queue.default_timeout_us,
        "allow_timeout_override": queue.allow_timeout_override,
        "max_queue_size": queue.max_queue_size,
    }


def _metadata_tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    shape = ([-1] if batched else []) + list(spec.dims)
    return {"name": spec.name, "datatype": spec.datatype, "shape": shape}


def model_metadata_dict(loaded: LoadedVersion, versions: list[str]) -> dict[str, Any]:
    """V2 model metadata; shapes include the batch dimension (-1) when the model batches."""
    batched = loaded.signature.batched
    return {
        "name": loaded.name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": [_metadata_tensor(t, batched) for t in loaded.signature.inputs],
        "outputs": [_metadata_tensor(t, batched) for t in loaded.signature.outputs],
    }


def _duration(duration: Duration) -> dict[str, int]:
    return {"count": duration.count, "ns": duration.ns}


def statistics_dict(entries: list[tuple[str, int, VersionStatistics]]) -> dict[str, Any]:
    """Triton's statistics extension response (`model_stats`), for HTTP JSON and gRPC alike."""
    model_stats = []
    for name, version, stats in entries:
        model_stats.append(
            {
                "name": name,
                "version": str(version),
                "last_inference": stats.last_inference_ms,
                "inference_count": stats.inference_count,
                "execution_count": stats.execution_count,
                "inference_stats": {
                    "success": _duration(stats.success),
                    "fail": _duration(stats.fail),
                    "queue": _duration(stats.queue),
                    "compute_input": _duration(stats.compute_input),
                    "compute_infer": _duration(stats.compute_infer),
                    "compute_output": _duration(stats.compute_output),
                    "cache_hit": {"count": 0, "ns": 0},
                    "cache_miss": {"count": 0, "ns": 0},
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": _duration(by_size.compute_input),
                        "compute_infer": _duration(by_size.compute_infer),
                        "compute_output": _duration(by_size.compute_output),
                    }
                    for size, by_size in sorted(stats.batches.items())
                ],
                "memory_usage": [],
            }
        )
    return {"model_stats": model_stats}


# Triton's model states, as tritonclient and its users read them.
TRITON_STATE: dict[VersionState, str] = {
    VersionState.LOADING: "LOADING",
    VersionState.READY: "READY",
    VersionState.DRAINING: "UNLOADING",
    VersionState.UNLOADED: "UNAVAILABLE",
    VersionState.FAILED: "UNAVAILABLE",
}


def repository_index_list(entries: list[IndexEntry]) -> list[dict[str, str]]:
    """Triton's repository index: name, version, state and (when not ready) reason."""
    index = []
    for entry in entries:
        item = {"name": entry.name, "state": TRITON_STATE[entry.state]}
        if entry.version is not None:
            item["version"] = str(entry.version)
        if entry.reason:
            item["reason"] = entry.reason
        index.append(item)
    return index
