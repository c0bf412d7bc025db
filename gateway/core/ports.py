"""The interfaces core needs from lower layers, as Protocols the runtime implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy.typing as npt

from gateway.core.model import LoadedVersion, ModelPolicy


class ModelRunner(Protocol):
    """Runs one loaded model version. `run` blocks, is thread-safe, and raises GatewayError."""

    def run(
        self, inputs: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str]
    ) -> list[npt.NDArray[Any]]: ...

    def close(self) -> None: ...


class SourceError(Exception):
    """A model (or one version of it) cannot be read or loaded; the message says why."""


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    """What the repository holds for one model at one moment: its policy, the versions on
    disk with a fingerprint of each (config and files), and its persisted labels."""

    name: str
    policy: ModelPolicy
    versions: Mapping[int, str]
    """Version number -> fingerprint; a changed fingerprint means the version must reload."""
    labels: Mapping[str, int] = field(default_factory=dict)
    documents: Mapping[str, Any] = field(default_factory=dict)
    """The gateway's own persisted state of the model by kind ('traffic', 'rollout')."""


class ModelSource(Protocol):
    """Where model versions come from (a Triton-layout repository). Every method blocks: call
    them on the load pool, never on the event loop."""

    def model_names(self) -> list[str]: ...

    def fingerprint(self, name: str) -> str | None:
        """A cheap summary of the model's files (names, sizes, mtimes); None if it is gone."""
        ...

    def read(self, name: str, config_json: str | None) -> ModelSnapshot:
        """Read the model's config (or the JSON override) and list its versions; raises
        SourceError."""
        ...

    def load(self, snapshot: ModelSnapshot, version: int) -> tuple[LoadedVersion, ModelRunner]:
        """Load and warm one version; raises SourceError."""
        ...

    def save_labels(self, name: str, labels: Mapping[str, int]) -> None:
        """Persist the model's labels atomically; raises OSError."""
        ...

    def save_document(self, name: str, kind: str, document: Mapping[str, Any] | None) -> None:
        """Persist (None: remove) the model's state of `kind` atomically; raises OSError."""
        ...
