"""What the gateway knows about a model version: its tensors, batching and placement policy."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output. `dims` excludes the batch dimension; -1 means any size."""

    name: str
    datatype: str
    dims: tuple[int, ...]


class DeviceKind(enum.Enum):
    CPU = "cpu"
    GPU = "gpu"


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which versions of a model to serve: the latest N, all, or a specific set."""

    latest: int | None = 1
    specific: frozenset[int] = frozenset()
    all: bool = False

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.all:
            return ordered
        if self.specific:
            return [v for v in ordered if v in self.specific]
        return ordered[-(self.latest or 1) :]


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    max_queue_size: int = 0
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    reject_on_timeout: bool = True


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """Triton's dynamic_batching block; used by the dynamic batcher."""

    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    queue: QueuePolicy = QueuePolicy()


@dataclass(frozen=True, slots=True)
class PlacementPolicy:
    """Where a model runs: device kind, instance count, accelerators, CPU fallback."""

    kind: DeviceKind = DeviceKind.CPU
    count: int = 0
    """Executions that may run at once (instance_group count); 0 = the gateway's default."""
    gpus: tuple[int, ...] = ()
    accelerators: tuple[str, ...] = ()
    accelerator_parameters: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    allow_cpu_fallback: bool = False


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    """A model's configuration as read from config.pbtxt (every field optional there).

    `inputs`/`outputs` empty and `max_batch_size` None mean: take them from the model file.
    """

    name: str
    platform: str = "onnxruntime_onnx"
    max_batch_size: int | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    versions: VersionPolicy = VersionPolicy()
    batching: BatchingPolicy | None = None
    placement: PlacementPolicy = PlacementPolicy()
    parameters: Mapping[str, str] = field(default_factory=dict)
    default_model_filename: str = "model.onnx"
    source: str = ""


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """The tensors a loaded version accepts and returns, complete and checked against the file."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)


@dataclass(frozen=True, slots=True)
class LoadedVersion:
    """Everything known about one loaded version: its policy, signature and actual placement."""

    name: str
    version: int
    policy: ModelPolicy
    signature: ModelSignature
    providers: tuple[str, ...]
    """The execution providers onnxruntime actually uses, in priority order."""
    concurrency: int
    """Executions that may run at once: the config's instance count or the gateway default."""
