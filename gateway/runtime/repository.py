"""Scans a Triton-layout model repository and loads the versions each model's policy selects.

Layout: `<repo>/<model>/config.pbtxt` (optional) and `<repo>/<model>/<N>/model.onnx`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from gateway.config.model_config import ModelConfigError, read_model_policy
from gateway.core.model import ModelPolicy
from gateway.core.registry import ModelRegistry
from gateway.runtime.onnx_runner import ModelLoadError, load_version

logger = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def is_valid_model_name(name: str) -> bool:
    """Model names never contain path separators or '..', so nothing outside the repo is read."""
    return bool(MODEL_NAME.match(name)) and ".." not in name


@dataclass(frozen=True, slots=True)
class LoadFailure:
    model: str
    version: int | None
    reason: str


class ModelRepository:
    """Loads models from one repository directory into a registry."""

    def __init__(
        self,
        root: Path,
        *,
        default_max_batch_size: int,
        default_intra_op_threads: int,
        default_concurrency: int,
    ) -> None:
        self.root = root
        self._default_max_batch_size = default_max_batch_size
        self._default_intra_op_threads = default_intra_op_threads
        self._default_concurrency = default_concurrency

    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} is not a directory")
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and is_valid_model_name(p.name)
        )

    def available_versions(self, policy: ModelPolicy) -> list[int]:
        model_dir = self.root / policy.name
        return sorted(
            int(p.name)
            for p in model_dir.iterdir()
            if p.is_dir()
            and p.name.isdigit()
            and int(p.name) > 0
            and (p / policy.default_model_filename).is_file()
        )

    async def load_all(self, registry: ModelRegistry, pool: Executor) -> list[LoadFailure]:
        """Load every model; failures are recorded in the registry and returned, never raised."""
        names = self.model_names()
        results = await asyncio.gather(*(self.load_model(n, registry, pool) for n in names))
        return [failure for failures in results for failure in failures]

    async def load_model(
        self, name: str, registry: ModelRegistry, pool: Executor
    ) -> list[LoadFailure]:
        registry.entry(name)
        try:
            policy = read_model_policy(self.root / name)
        except ModelConfigError as exc:
            registry.set_failed(name, None, str(exc))
            logger.error("model %s: %s", name, exc)
            return [LoadFailure(name, None, str(exc))]
        versions = policy.versions.select(self.available_versions(policy))
        if not versions:
            reason = (
                f"{self.root / name}: no version directory <N>/{policy.default_model_filename} "
                "matches the version policy"
            )
            registry.set_failed(name, None, reason)
            logger.error("model %s: %s", name, reason)
            return [LoadFailure(name, None, reason)]
        loop = asyncio.get_running_loop()
        failures: list[LoadFailure] = []
        for version in versions:
            path = self.root / name / str(version) / policy.default_model_filename
            try:
                loaded, runner = await loop.run_in_executor(
                    pool,
                    lambda p=path, v=version: load_version(  # type: ignore[misc]
                        p,
                        policy,
                        v,
                        default_max_batch_size=self._default_max_batch_size,
                        default_intra_op_threads=self._default_intra_op_threads,
                        default_concurrency=self._default_concurrency,
                    ),
                )
            except ModelLoadError as exc:
                registry.set_failed(name, version, str(exc))
                logger.error("model %s version %d failed to load: %s", name, version, exc)
                failures.append(LoadFailure(name, version, str(exc)))
                continue
            registry.set_ready(loaded, runner)
            logger.info(
                "model %s version %d ready on %s (max_batch_size %d)",
                name,
                version,
                ", ".join(loaded.providers),
                loaded.signature.max_batch_size,
            )
        return failures
