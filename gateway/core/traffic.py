"""Traffic between the versions of one model: weights, a sticky key, and shadows.

A request that names no version is routed by its model's policy: a key (the sticky header or
metadata value, else the request id) is hashed into the weights, so one user stays on one
version without the client's help; a request with neither key is routed at random in the same
proportions. Shadows get a copy of a share of the routed requests, chosen by the same key.
The hash is CRC-32, the same in every process and replica.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core.errors import InvalidInputError
from gateway.core.validation import bounded_number, version_number

STICKY_KEY = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,63}$")
"""HTTP header or gRPC metadata key names (lower case, as gRPC requires)."""
_SCALE = float(1 << 32)
READ_ONLY = frozenset({"model", "comparisons"})


@dataclass(frozen=True, slots=True)
class Shadow:
    version: int
    percent: float


@dataclass(frozen=True, slots=True)
class Tolerance:
    """When two numeric answers agree: |a - b| <= atol + rtol * |b| everywhere (numpy's
    isclose); classifiers agree when their top-1 classes match."""

    atol: float = 1e-4
    rtol: float = 1e-3


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """Weights per version (any positive scale), a sticky key, and shadows."""

    weights: Mapping[int, int]
    sticky_key: str = ""
    shadows: tuple[Shadow, ...] = ()
    tolerance: Tolerance = Tolerance()
    _edges: tuple[tuple[float, int], ...] = field(init=False, repr=False, compare=False)
    primary: int = field(init=False, repr=False, compare=False)
    """The version with the largest weight (the lowest number on a tie)."""

    def __post_init__(self) -> None:
        total = sum(self.weights.values())
        edges, running = [], 0
        for version, weight in sorted(self.weights.items()):
            if weight > 0:
                running += weight
                edges.append((running / total, version))
        object.__setattr__(self, "_edges", tuple(edges))
        primary = min(self.weights, key=lambda v: (-self.weights[v], v))
        object.__setattr__(self, "primary", primary)

    def versions(self) -> set[int]:
        """Every version the policy names: they must be READY and stay loaded, weight 0
        included (a rollout's last step still needs its stable version to roll back to)."""
        return set(self.weights) | {s.version for s in self.shadows}

    def route(self, key: str | None) -> int:
        point = _point(key, b"")
        for edge, version in self._edges:
            if point < edge:
                return version
        return self._edges[-1][1]

    def shadows_for(self, key: str | None) -> list[int]:
        """The shadow versions that get a copy of this request (a version that also takes
        routed traffic is never sent a copy of a request routed to itself: the service
        skips it)."""
        return [
            shadow.version
            for shadow in self.shadows
            if shadow.percent >= 100 or _point(key, b"shadow") * 100 < shadow.percent
        ]

    def document(self) -> dict[str, Any]:
        """The REST (and persisted) form."""
        return {
            "weights": {str(v): w for v, w in sorted(self.weights.items())},
            "sticky_key": self.sticky_key,
            "shadows": [{"version": str(s.version), "percent": s.percent} for s in self.shadows],
            "tolerance": {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol},
        }


def _point(key: str | None, salt: bytes) -> float:
    """A number in [0, 1): the key's hash, or a random draw without a key."""
    if not key:
        return random.random()
    return zlib.crc32(salt + key.encode("utf-8", "surrogatepass")) / _SCALE


def parse_policy(document: object) -> TrafficPolicy:
    """The policy from its REST form; InvalidInputError naming the field that is wrong."""
    if not isinstance(document, dict):
        raise InvalidInputError(
            'expected a JSON object like {"weights": {"1": 90, "2": 10}, '
            '"sticky_key": "x-user-id", "shadows": [{"version": "3", "percent": 100}]}'
        )
    # GET answers with read-only fields too, so GET, edit, PUT works.
    unknown = sorted(set(document) - {"weights", "sticky_key", "shadows", "tolerance"} - READ_ONLY)
    if unknown:
        raise InvalidInputError(
            f"unknown field(s) {', '.join(unknown)}; expected weights, sticky_key, shadows, "
            "tolerance"
        )
    weights_in = document.get("weights")
    if not isinstance(weights_in, dict) or not weights_in:
        raise InvalidInputError('"weights" must be an object of version to weight, like {"1": 90}')
    weights: dict[int, int] = {}
    for key, weight in weights_in.items():
        version = version_number(key, f'"weights" key {key!r:.40}')
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 1_000_000:
            raise InvalidInputError(
                f'"weights"["{key}"] must be a whole number from 0 to 1000000, got {weight!r:.40}'
            )
        weights[version] = weight
    if sum(weights.values()) <= 0:
        raise InvalidInputError('"weights" must give at least one version a positive weight')
    sticky = document.get("sticky_key", "") or ""
    if not isinstance(sticky, str) or (sticky and not STICKY_KEY.fullmatch(sticky.lower())):
        raise InvalidInputError(
            '"sticky_key" must be a header / metadata key name (letters, digits, "_", ".", "-")'
        )
    if sticky.lower().endswith("-bin"):  # gRPC carries such keys' values as bytes, not text
        raise InvalidInputError(
            '"sticky_key" must not end in "-bin": gRPC metadata of that name is binary, and '
            "would not route as the same text over HTTP"
        )
    shadows_in = document.get("shadows", []) or []
    if not isinstance(shadows_in, list):
        raise InvalidInputError('"shadows" must be a list like [{"version": "3", "percent": 100}]')
    shadows: list[Shadow] = []
    for index, item in enumerate(shadows_in):
        where = f'"shadows"[{index}]'
        if not isinstance(item, dict) or "version" not in item:
            raise InvalidInputError(f'{where} must be an object like {{"version": "3"}}')
        version = version_number(item["version"], f"{where}.version")
        if any(s.version == version for s in shadows):
            raise InvalidInputError(f"{where}: version {version} is listed twice")
        percent = bounded_number(item.get("percent", 100), f"{where}.percent", 0, 100)
        shadows.append(Shadow(version, percent))
    tolerance_in = document.get("tolerance", {}) or {}
    if not isinstance(tolerance_in, dict):
        raise InvalidInputError('"tolerance" must be an object like {"atol": 1e-4, "rtol": 1e-3}')
    unknown = sorted(set(tolerance_in) - {"atol", "rtol"})
    if unknown:  # a misspelt "atol" must not silently leave the default in force
        raise InvalidInputError(
            f'"tolerance" has unknown field(s) {", ".join(map(repr, unknown))}: expected '
            '"atol" and "rtol"'
        )
    tolerance = Tolerance(
        atol=bounded_number(tolerance_in.get("atol", 1e-4), '"tolerance".atol', 0, 1e12),
        rtol=bounded_number(tolerance_in.get("rtol", 1e-3), '"tolerance".rtol', 0, 1e12),
    )
    return TrafficPolicy(weights, sticky.lower(), tuple(shadows), tolerance)
