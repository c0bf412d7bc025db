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
    """Triton's ModelQueuePolicy, for one priority level (or the model's only line)."""

    max_queue_size: int = 0
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    delay: bool = False
    """timeout_action DELAY: a request whose timeout passes waits on, behind the requests of
    its level (and of the levels above) whose timeouts have not passed, instead of a 504."""


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """Triton's dynamic_batching block; used by the dynamic batcher."""

    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    queue: QueuePolicy = QueuePolicy()
    priority_levels: int = 0
    """Levels 1 (first served) to priority_levels; 0: one line, no priorities."""
    default_priority_level: int = 0
    """The level of a request that names none (or 0, or one past priority_levels)."""
    priority_queues: Mapping[int, QueuePolicy] = field(default_factory=dict)
    """Levels with a queue policy of their own; the others follow `queue`."""

    def level(self, requested: int | None) -> int:
        """The level a request asking for `requested` waits at (Triton: 0, none or out of range
        is the default level); 0 when the model has no priority levels."""
        if not self.priority_levels:
            return 0
        if requested is None or not 1 <= requested <= self.priority_levels:
            return self.default_priority_level
        return requested

    def queue_for(self, level: int) -> QueuePolicy:
        return self.priority_queues.get(level, self.queue)


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
class WarmupInput:
    """One input of a warmup sample: zeros, random values, or raw data from a file."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    source: str
    """'zero', 'random' or 'file'."""
    file: str = ""
    """For 'file': a file name in the model's `warmup/` directory (Triton's layout)."""


@dataclass(frozen=True, slots=True)
class WarmupSample:
    """Triton's model_warmup entry: run `count` times before the version takes traffic."""

    name: str
    batch_size: int
    inputs: tuple[WarmupInput, ...]
    count: int = 1


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    """A model's configuration as read from config.pbtxt (every field optional there).

    `inputs`/`outputs` empty and `max_batch_size` None mean: take them from the model file.
    """

    name: str
    max_batch_size: int | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    versions: VersionPolicy = VersionPolicy()
    batching: BatchingPolicy | None = None
    placement: PlacementPolicy = PlacementPolicy()
    parameters: Mapping[str, str] = field(default_factory=dict)
    default_model_filename: str = "model.onnx"
    warmup: tuple[WarmupSample, ...] = ()
    configured: bool = False
    """True when the model has a config.pbtxt (defaults differ, as in Triton)."""


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """The tensors a loaded version accepts and returns, complete and checked against the file.

    Lookups the request path needs are built once here, not per request."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    inputs_by_name: Mapping[str, TensorSpec] = field(init=False, repr=False, compare=False)
    outputs_by_name: Mapping[str, TensorSpec] = field(init=False, repr=False, compare=False)
    input_shapes: Mapping[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    """Full expected shape of each input, batch dimension (-1) included when batched."""
    input_fixed_dims: Mapping[str, tuple[tuple[int, int], ...]] = field(
        init=False, repr=False, compare=False
    )
    """(axis, size) of each input's dimensions that are not variable (-1)."""
    output_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        batch = (-1,) if self.max_batch_size > 0 else ()
        shapes = {t.name: batch + t.dims for t in self.inputs}
        values = {
            "inputs_by_name": {t.name: t for t in self.inputs},
            "outputs_by_name": {t.name: t for t in self.outputs},
            "input_shapes": shapes,
            "input_fixed_dims": {
                name: tuple((axis, size) for axis, size in enumerate(shape) if size != -1)
                for name, shape in shapes.items()
            },
            "output_names": tuple(t.name for t in self.outputs),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0


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
