"""loadtest/locustfile.py headless against a real gateway: every user class sends digits rows,
every answer passes the file's checks, and the CSV output is written. Locust runs from its own
environment (`.venv-load`, which `make test` installs), as loadtest/README.md says to."""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import RunningGateway

ROOT = Path(__file__).resolve().parents[2]
LOCUST = ROOT / ".venv-load" / "bin" / "locust"

pytestmark = pytest.mark.skipif(
    not LOCUST.exists(), reason="no .venv-load with locust (`make test` installs it)"
)

USERS = {
    "GrpcUser": "grpc ModelInfer",
    "HttpBinaryUser": "http-binary infer",
    "HttpJsonUser": "http-json infer",
}


def locust(server: RunningGateway, data: Path, csv_prefix: Path, *extra: str) -> Any:
    return subprocess.run(
        [
            str(LOCUST),
            *("-f", str(ROOT / "loadtest" / "locustfile.py")),
            *("--headless", "-r", "6", "--only-summary"),
            *("--host", f"http://{server.http_url}", "--grpc-host", server.grpc_url),
            *("--data", str(data), "--csv", str(csv_prefix)),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )


def test_every_user_sends_digits_rows_and_every_answer_passes(
    demo_repository: Path, tmp_path: Path
) -> None:
    data = demo_repository / "digits" / "test_split.npz"
    server = RunningGateway(demo_repository)
    try:
        done = locust(
            server, data, tmp_path / "locust", "-u", "6", "-t", "4s", "--rows", "2", *USERS
        )
        # The exit status says when the answers are not the model's: here, a bar no model meets.
        strict = locust(
            server,
            data,
            tmp_path / "strict",
            "-u",
            "1",
            "-t",
            "1s",
            "--min-accuracy",
            "1.01",
            "HttpBinaryUser",
        )
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-6000:]
    with (tmp_path / "locust_stats.csv").open() as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    for name in USERS.values():
        assert int(rows[name]["Request Count"]) > 0, rows
        assert int(rows[name]["Failure Count"]) == 0, rows
    # Each protocol's accuracy against the test labels, logged at the end (about 0.97).
    for protocol in ("grpc", "http-binary", "http-json"):
        found = re.search(rf"{protocol}: (\d+) rows checked, accuracy ([\d.]+)", done.stderr)
        assert found is not None, done.stderr[-6000:]
        assert int(found[1]) > 0 and float(found[2]) >= 0.9, found[0]
    assert strict.returncode == 1, strict.stderr[-6000:]
    checked = re.search(r"http-binary: (\d+) rows checked", strict.stderr)
    assert checked is not None and int(checked[1]) > 0, strict.stderr[-6000:]
    assert "is below --min-accuracy 1.01" in strict.stderr, strict.stderr[-6000:]
