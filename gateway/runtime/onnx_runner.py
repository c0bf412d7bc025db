"""Creates onnxruntime sessions for model versions and runs them, mapping ORT errors to ours.

onnxruntime silently falls back to the CPU when a GPU provider cannot be used, so after a
session is created the providers it actually uses are checked against what the config asked for.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from gateway.core.errors import InternalError, InvalidInputError
from gateway.core.model import (
    DeviceKind,
    LoadedVersion,
    ModelPolicy,
    ModelSignature,
    PlacementPolicy,
    TensorSpec,
)
from gateway.core.ports import SourceError
from gateway.core.prediction import prediction_rule

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

ORT_DATATYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_GRAPH_LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ModelLoadError(SourceError):
    """A model version that cannot be served; the message says why and what to change."""


class OnnxRunner:
    """Runs one onnxruntime session; safe to call from several threads at once."""

    def __init__(
        self, name: str, session: ort.InferenceSession, string_inputs: frozenset[str]
    ) -> None:
        self.name = name
        self._session = session
        self._string_inputs = string_inputs

    def run(
        self, inputs: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str]
    ) -> list[npt.NDArray[Any]]:
        feeds = inputs
        if self._string_inputs:
            feeds = {
                name: _as_str_array(name, array) if name in self._string_inputs else array
                for name, array in inputs.items()
            }
        try:
            outputs: list[npt.NDArray[Any]] = self._session.run(list(output_names), feeds)
        except (ort_state.InvalidArgument, ort_state.Fail) as exc:
            message = _ort_message(exc)
            if isinstance(exc, ort_state.Fail) and _SERVER_SIDE_FAILURE.search(message):
                logger.error("model %s failed: %s", self.name, message)
                raise InternalError(f"model execution failed on the server: {message}") from exc
            # The request already matched the signature, so INVALID_ARGUMENT and a kernel's
            # FAIL (a Reshape to an impossible shape, an index out of range) come from the
            # values the caller sent: theirs to fix, a 400.
            logger.debug("model %s rejected an input: %s", self.name, message)
            raise InvalidInputError(f"the model cannot run on this input: {message}") from exc
        except Exception as exc:  # RUNTIME_EXCEPTION, EP_FAIL, ...: ours, not the client's
            logger.exception("model %s failed", self.name)
            raise InternalError("model execution failed") from exc
        return outputs

    def close(self) -> None:
        self._session = None


# FAIL statuses that are the server's trouble, not the request's: memory, device, libraries.
_SERVER_SIDE_FAILURE = re.compile(
    r"alloc|out of memory|CUDA|cuDNN|cuBLAS|CUBLAS|CUDNN|TensorRT|device", re.IGNORECASE
)
_SOURCE_LOCATION = re.compile(r"/onnxruntime_src/\S+ \S+\(.*?\)(?= )")


def _ort_message(exc: Exception) -> str:
    """ "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid ..." -> "Got invalid ...",
    without the C++ source location ORT puts in kernel errors."""
    message = str(exc).split(" : ")[-1].strip()
    return _SOURCE_LOCATION.sub("", message).replace("  ", " ")


def _as_str_array(name: str, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    try:
        for i, item in enumerate(flat_in):
            flat_out[i] = item.decode() if isinstance(item, bytes) else str(item)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"input '{name}': BYTES elements must be UTF-8 text") from exc
    return out


# -- loading ----------------------------------------------------------------------------------


def requested_providers(placement: PlacementPolicy) -> list[Any]:
    """The provider list to ask onnxruntime for, most preferred first, with their options."""
    if placement.kind is DeviceKind.CPU:
        return [CPU]
    device = str(placement.gpus[0]) if placement.gpus else "0"
    providers: list[Any] = []
    if "tensorrt" in placement.accelerators:
        options = {"device_id": device, **placement.accelerator_parameters.get("tensorrt", {})}
        providers.append((TENSORRT, options))
    cuda_options = {"device_id": device, **placement.accelerator_parameters.get("cuda", {})}
    providers.append((CUDA, cuda_options))
    providers.append(CPU)
    return providers


def _provider_name(provider: Any) -> str:
    return provider[0] if isinstance(provider, tuple) else str(provider)


def _session_options(policy: ModelPolicy, default_intra_op_threads: int) -> ort.SessionOptions:
    params = policy.parameters
    options = ort.SessionOptions()
    # Fatal only: ORT prints to stderr itself; errors reach us as exceptions and are logged here.
    options.log_severity_level = 4
    intra_op_threads = params.get("intra_op_thread_count", str(default_intra_op_threads))
    options.intra_op_num_threads = int(intra_op_threads)
    options.inter_op_num_threads = int(params.get("inter_op_thread_count", "0"))
    options.graph_optimization_level = _GRAPH_LEVELS[params.get("graph_optimization_level", "all")]
    if params.get("execution_mode") == "parallel":
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    options.enable_cpu_mem_arena = params.get("enable_mem_arena", "true") == "true"
    options.enable_mem_pattern = params.get("enable_mem_pattern", "true") == "true"
    return options


def installation_problem() -> str | None:
    """onnxruntime and onnxruntime-gpu install the same `onnxruntime` module; with both present
    whichever was installed last wins, file by file. Say so, with the fix."""
    installed = []
    for distribution in ("onnxruntime", "onnxruntime-gpu"):
        try:
            importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        installed.append(distribution)
    if len(installed) < 2:
        return None
    return (
        "both onnxruntime and onnxruntime-gpu are installed and overwrite each other's files; "
        "for GPUs run `pip uninstall -y onnxruntime onnxruntime-gpu && "
        "pip install onnxruntime-gpu[cuda,cudnn]` (see README, GPU)"
    )


@functools.cache
def _preload_gpu_libraries() -> None:
    """Load CUDA/cuDNN from the nvidia-* wheels before the first GPU session (ORT >= 1.21)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception:  # a missing library shows up as the provider failing, with its reason
        logger.warning("onnxruntime.preload_dlls() failed", exc_info=True)


def create_session(
    path: Path, policy: ModelPolicy, *, default_intra_op_threads: int
) -> tuple[ort.InferenceSession, tuple[str, ...]]:
    """Create a session on the providers the policy asks for, and verify what it got."""
    wanted = requested_providers(policy.placement)
    first = _provider_name(wanted[0])
    if first != CPU:
        _preload_gpu_libraries()
    available = ort.get_available_providers()
    fallback = policy.placement.allow_cpu_fallback
    if first not in available:
        reason = (
            f"model '{policy.name}' asks for {first} but this onnxruntime build offers only "
            f"{', '.join(available)}"
        )
        if not fallback:
            raise ModelLoadError(
                f"{reason}; install onnxruntime-gpu on a machine with an NVIDIA GPU, or set "
                'parameters { key: "allow_cpu_fallback" value: { string_value: "true" } }'
            )
        logger.warning("%s; falling back to %s as the config allows", reason, CPU)
        wanted = [p for p in wanted if _provider_name(p) in available]
        first = _provider_name(wanted[0])
    options = _session_options(policy, default_intra_op_threads)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime cannot load {path}: {_ort_message(exc)}") from exc
    actual = tuple(session.get_providers())
    if first != CPU and actual[0] != first:
        message = (
            f"model '{policy.name}' asked for {first} but onnxruntime runs it on "
            f"{', '.join(actual)} (the provider failed to initialise)"
        )
        if not fallback:
            raise ModelLoadError(message)
        logger.warning("%s; CPU fallback is allowed by the config", message)
    return session, actual


def _dims(shape: Sequence[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def _file_tensors(args: Sequence[Any], kind: str, path: Path) -> list[TensorSpec]:
    tensors: list[TensorSpec] = []
    for arg in args:
        datatype = ORT_DATATYPES.get(arg.type)
        if datatype is None:
            raise ModelLoadError(f"{path}: {kind} '{arg.name}' has unsupported type {arg.type}")
        tensors.append(TensorSpec(arg.name, datatype, _dims(arg.shape or [])))
    return tensors


def build_signature(
    session: ort.InferenceSession, policy: ModelPolicy, path: Path, default_max_batch_size: int
) -> ModelSignature:
    """Complete and check the policy's tensors against the model file (Triton's auto-complete)."""
    file_inputs = _file_tensors(session.get_inputs(), "input", path)
    file_outputs = _file_tensors(session.get_outputs(), "output", path)
    everything = file_inputs + file_outputs
    if policy.max_batch_size is None:
        batchable = all(t.dims and t.dims[0] == -1 for t in everything)
        max_batch_size = default_max_batch_size if batchable else 0
    else:
        max_batch_size = policy.max_batch_size
    if max_batch_size > 0:
        for tensor in everything:
            if not tensor.dims or tensor.dims[0] != -1:
                raise ModelLoadError(
                    f"{path}: max_batch_size is {max_batch_size} but '{tensor.name}' has shape "
                    f"{list(tensor.dims)} with no dynamic first (batch) dimension; set "
                    "max_batch_size: 0 or export the model with a dynamic batch dimension"
                )
    strip = 1 if max_batch_size > 0 else 0
    from_file_in = [TensorSpec(t.name, t.datatype, t.dims[strip:]) for t in file_inputs]
    from_file_out = [TensorSpec(t.name, t.datatype, t.dims[strip:]) for t in file_outputs]
    inputs = _merge(policy.inputs, from_file_in, "input", path, require_all=True)
    outputs = _merge(policy.outputs, from_file_out, "output", path, require_all=False)
    return ModelSignature(tuple(inputs), tuple(outputs), max_batch_size)


def _merge(
    configured: Sequence[TensorSpec],
    from_file: list[TensorSpec],
    kind: str,
    path: Path,
    *,
    require_all: bool,
) -> list[TensorSpec]:
    if not configured:
        return from_file
    by_name = {t.name: t for t in from_file}
    merged: list[TensorSpec] = []
    for spec in configured:
        actual = by_name.get(spec.name)
        if actual is None:
            raise ModelLoadError(
                f"{path}: config {kind} '{spec.name}' is not in the model; the model's "
                f"{kind}s are {', '.join(sorted(by_name))}"
            )
        if spec.datatype != actual.datatype:
            raise ModelLoadError(
                f"{path}: config {kind} '{spec.name}' is {spec.datatype} but the model has "
                f"{actual.datatype}"
            )
        compatible = len(spec.dims) == len(actual.dims) and all(
            -1 in (a, b) or a == b for a, b in zip(spec.dims, actual.dims, strict=True)
        )
        if not compatible:
            raise ModelLoadError(
                f"{path}: config {kind} '{spec.name}' has dims {list(spec.dims)} but the model "
                f"has {list(actual.dims)} (batch dimension excluded)"
            )
        dims = tuple(b if a == -1 else a for a, b in zip(spec.dims, actual.dims, strict=True))
        merged.append(TensorSpec(spec.name, spec.datatype, dims))
    if require_all:
        missing = sorted(set(by_name) - {t.name for t in configured})
        if missing:
            raise ModelLoadError(f"{path}: model {kind}s missing from config: {', '.join(missing)}")
    return merged


def load_version(
    path: Path,
    policy: ModelPolicy,
    version: int,
    *,
    default_max_batch_size: int,
    default_intra_op_threads: int,
    default_concurrency: int,
) -> tuple[LoadedVersion, OnnxRunner]:
    """Load one version from `path` (blocking: call it on the load thread pool)."""
    session, providers = create_session(
        path, policy, default_intra_op_threads=default_intra_op_threads
    )
    signature = build_signature(session, policy, path, default_max_batch_size)
    try:  # a configured prediction output that cannot be read fails the load
        prediction_rule(signature, policy.parameters)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: parameters: {exc}") from exc
    strings = frozenset(t.name for t in signature.inputs if t.datatype == "BYTES")
    concurrency = policy.placement.count or default_concurrency
    loaded = LoadedVersion(policy.name, version, policy, signature, providers, concurrency)
    return loaded, OnnxRunner(f"{policy.name}:{version}", session, strings)
