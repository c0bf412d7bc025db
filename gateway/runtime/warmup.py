"""Warm-up: run a version before it takes traffic, so its first callers do not pay for lazy
allocations (memory arenas, kernel selection, TensorRT engines).

With `model_warmup` in config.pbtxt, every sample runs `count` times and a failure fails the
load, as in Triton. Without it, one batch-1 request of zeros runs; if the model refuses zeros
(some models need meaningful values), that is logged and the version still loads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.datatypes import DATATYPES
from gateway.core.errors import GatewayError
from gateway.core.model import LoadedVersion, TensorSpec, WarmupInput, WarmupSample
from gateway.core.ports import ModelRunner
from gateway.runtime.onnx_runner import ModelLoadError

logger = logging.getLogger(__name__)

ZEROS_MAX_BYTES = 64 * 1024 * 1024
"""The default warm-up is skipped when its batch-1 request of zeros would be larger (a config
may pin a dimension to millions): no request that large fits --max-request-bytes' default."""


def warm_up(loaded: LoadedVersion, runner: ModelRunner, warmup_dir: Path) -> None:
    """Run the warm-up samples of `loaded` (blocking; on the load pool)."""
    outputs = loaded.signature.output_names
    batched = loaded.signature.batched
    if not loaded.policy.warmup:
        shaped = [(spec, _zeros_shape(spec, batched)) for spec in loaded.signature.inputs]
        nbytes = sum(
            int(np.prod(shape, dtype=np.float64)) * DATATYPES[spec.datatype].numpy_dtype.itemsize
            for spec, shape in shaped
        )
        if nbytes > ZEROS_MAX_BYTES:
            logger.warning(
                "model %s version %d: no warm-up: a batch-1 request of zeros would take %d "
                "bytes; add model_warmup to its config to warm it",
                loaded.name,
                loaded.version,
                nbytes,
            )
            return
        feeds = {spec.name: _zeros(spec, shape) for spec, shape in shaped}
        try:
            runner.run(feeds, outputs)
        except GatewayError as exc:
            logger.warning(
                "model %s version %d: warm-up with zeros failed (%s); add model_warmup to its "
                "config to warm it with real values",
                loaded.name,
                loaded.version,
                exc.message,
            )
        return
    for sample in loaded.policy.warmup:
        feeds = _sample_feeds(loaded, sample, warmup_dir)
        for _ in range(sample.count):
            try:
                runner.run(feeds, outputs)
            except GatewayError as exc:
                message = f"warm-up sample '{sample.name}' failed: {exc.message}"
                raise ModelLoadError(message) from exc


def _zeros_shape(spec: TensorSpec, batched: bool) -> tuple[int, ...]:
    return ((1,) if batched else ()) + tuple(1 if d == -1 else d for d in spec.dims)


def _zeros(spec: TensorSpec, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    datatype = DATATYPES[spec.datatype]
    if datatype.is_bytes:
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=datatype.numpy_dtype)


def _sample_feeds(
    loaded: LoadedVersion, sample: WarmupSample, warmup_dir: Path
) -> dict[str, npt.NDArray[Any]]:
    where = f"warm-up sample '{sample.name}'"
    specs = loaded.signature.inputs_by_name
    unknown = sorted(set(i.name for i in sample.inputs) - set(specs))
    if unknown:
        raise ModelLoadError(f"{where}: the model has no input(s) {', '.join(unknown)}")
    missing = sorted(set(specs) - set(i.name for i in sample.inputs))
    if missing:
        raise ModelLoadError(f"{where}: input(s) {', '.join(missing)} are missing")
    if loaded.signature.batched and not 1 <= sample.batch_size <= loaded.signature.max_batch_size:
        raise ModelLoadError(
            f"{where}: batch_size must be between 1 and max_batch_size "
            f"{loaded.signature.max_batch_size}, got {sample.batch_size}"
        )
    batch = (sample.batch_size,) if loaded.signature.batched else ()
    feeds: dict[str, npt.NDArray[Any]] = {}
    for spec in sample.inputs:
        expected = specs[spec.name]
        if spec.datatype != expected.datatype:
            raise ModelLoadError(
                f"{where}: input '{spec.name}' is {spec.datatype} but the model takes "
                f"{expected.datatype}"
            )
        feeds[spec.name] = _input_array(spec, batch + spec.dims, warmup_dir, where)
    return feeds


def _input_array(
    spec: WarmupInput, shape: tuple[int, ...], warmup_dir: Path, where: str
) -> npt.NDArray[Any]:
    datatype = DATATYPES[spec.datatype]
    count = int(np.prod(shape))
    if spec.source == "zero":
        if datatype.is_bytes:
            return np.full(shape, b"", dtype=object)
        return np.zeros(shape, dtype=datatype.numpy_dtype)
    if spec.source == "random":
        rng = np.random.default_rng(0)
        if datatype.is_bytes:
            return np.array([rng.bytes(8) for _ in range(count)], dtype=object).reshape(shape)
        if datatype.numpy_dtype.kind == "f":
            return rng.random(shape).astype(datatype.numpy_dtype)
        if datatype.numpy_dtype.kind == "b":
            return rng.integers(0, 2, shape).astype(bool)
        return rng.integers(0, 100, shape).astype(datatype.numpy_dtype)
    path = warmup_dir / spec.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{where}: input '{spec.name}': cannot read {path}: {exc}") from exc
    if datatype.is_bytes:
        return _bytes_elements(data, count, shape, f"{where}: {path}")
    if len(data) != count * datatype.itemsize:
        raise ModelLoadError(
            f"{where}: {path} holds {len(data)} bytes; shape {list(shape)} of {spec.datatype} "
            f"needs {count * datatype.itemsize}"
        )
    return np.frombuffer(data, dtype=datatype.numpy_dtype).reshape(shape)


def _bytes_elements(
    data: bytes, count: int, shape: tuple[int, ...], where: str
) -> npt.NDArray[Any]:
    """Triton's serialized BYTES: each element a 4-byte little-endian length, then the bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(data) and len(elements) < count:
        if offset + 4 > len(data):
            break
        size = int.from_bytes(data[offset : offset + 4], "little")
        elements.append(data[offset + 4 : offset + 4 + size])
        offset += 4 + size
    if len(elements) != count or offset != len(data):
        raise ModelLoadError(f"{where}: expected {count} length-prefixed BYTES elements")
    return np.array(elements, dtype=object).reshape(shape)
