"""A CPU model's load moves the process's dense memory into huge pages (`--huge-pages`), and
the model answers as before."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from gateway.runtime.huge_pages import unsupported_reason
from tests.support.server import RunningGateway

MOVED = "moved to huge pages"


def _moved_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "gateway.runtime.huge_pages" and MOVED in r.getMessage()
    ]


def _logits(running: RunningGateway, rows: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(running.http_url)
    try:
        tensor = httpclient.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=True)
        result = client.infer("mlp", [tensor])
        logits = result.as_numpy("logits")
        assert logits is not None
        return logits
    finally:
        client.close()


@pytest.mark.parametrize("huge_pages", [True, False])
def test_a_load_moves_memory_to_huge_pages_unless_told_not_to(
    demo_repository: Path, caplog: pytest.LogCaptureFixture, huge_pages: bool
) -> None:
    if huge_pages and unsupported_reason() is not None:
        pytest.skip(f"memory cannot be collapsed here: {unsupported_reason()}")
    caplog.set_level(logging.INFO, logger="gateway.runtime.huge_pages")
    running = RunningGateway(
        demo_repository, model_control_mode="explicit", load_model=["mlp"], huge_pages=huge_pages
    )
    try:
        lines = _moved_lines(caplog)
        if huge_pages:
            (line,) = lines  # after the load and its warm-up: what moved, and the total
            assert line.startswith("mlp:1: ") and " MiB of the process now in them)" in line
            assert float(line.split("(")[1].split()[0]) > 0
        else:
            assert lines == []
        rows = np.random.default_rng(7).random((5, 784), dtype=np.float32)
        bare = ort.InferenceSession(
            str(demo_repository / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        (expected,) = bare.run(["logits"], {"input": rows})
        np.testing.assert_allclose(_logits(running, rows), expected, rtol=1e-5, atol=1e-5)
    finally:
        running.stop()
