"""The interfaces core needs from lower layers, as Protocols the runtime implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy.typing as npt


class ModelRunner(Protocol):
    """Runs one loaded model version. `run` blocks, is thread-safe, and raises GatewayError."""

    def run(
        self, inputs: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str]
    ) -> list[npt.NDArray[Any]]: ...

    def close(self) -> None: ...
