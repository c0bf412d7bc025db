"""loadtest/bench.py end to end, in miniature: bare onnxruntime, the gateway and the echo
servers measured in one run, rows interleaved, the report written from what was measured."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_run_interleaves_rows_and_reports_every_figure(
    demo_repository: Path, tmp_path: Path
) -> None:
    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = cores[0], cores[-1]
    command = [
        sys.executable,
        str(ROOT / "loadtest" / "bench.py"),
        *("--model", "mlp", "--model-repository", str(demo_repository)),
        *("--protocols", "http-binary", "grpc", "--concurrency", "1", "4"),
        *("--duration", "0.3", "--warmup", "0.1", "--baseline-duration", "0.3"),
        *("--sweep-duration", "0.2", "--batch-sizes", "1", "8"),
        *("--retry-noisy", "0", "--lean-http-echo", "--threaded-grpc-echo"),
        *("--server-core", str(server_core), "--client-core", str(client_core)),
        *("--out", str(tmp_path)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]

    # Each concurrency on the echo, the gateway and the echo on the gateway's own stack, one
    # after the other.
    measured = re.findall(r"\[bench\] (\S+) (http-binary|grpc) x (\d+):", done.stderr)
    targets = {
        "http-binary": ("echo-http", "gateway", "echo-http-lean"),
        "grpc": ("echo-grpc", "gateway", "echo-grpc-threaded"),
    }
    assert measured == [
        (target, protocol, concurrency)
        for protocol in ("http-binary", "grpc")
        for concurrency in ("1", "4")
        for target in targets[protocol]
    ]

    (out_dir,) = tmp_path.iterdir()
    results = json.loads((out_dir / "results.json").read_text())
    assert results["meta"]["order"] == "interleaved"
    assert [r["concurrency"] for r in results["runs"]] == [1, 4, 1, 4]
    every_row = results["runs"] + results["echo_runs"] + results["lean_echo_runs"]
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in every_row)
    assert [r["target"] for r in results["echo_runs"]] == ["echo-grpc"] * 2 + ["echo-http"] * 2
    assert [r["target"] for r in results["lean_echo_runs"]] == [
        *["echo-http-lean"] * 2,
        *["echo-grpc-threaded"] * 2,
    ]
    assert set(results["lean_limits"]) == {"http-binary", "grpc"}

    # The model's limit: each batch size's mean of the runs before and after the rows.
    limit = results["model_limit"]
    before, after = (
        {step["batch_size"]: step["samples_per_s"] for step in results[key]["sweep"]}
        for key in ("baseline", "baseline_end")
    )
    assert limit["samples_per_s"] == (before[limit["batch_size"]] + after[limit["batch_size"]]) / 2
    assert sorted(before) == sorted(after) == [1, 8, 128]  # 128: mlp's max_batch_size
    assert limit["samples_per_s"] == max((before[b] + after[b]) / 2 for b in before)
    assert results["limits"]["http-binary"]["model_samples_per_s"] == limit["samples_per_s"]

    # Bare onnxruntime spaced as the latency target spaces requests: echo p50 + slack.
    (echo,) = (
        r for r in results["echo_runs"] if r["protocol"] == "http-binary" and r["concurrency"] == 1
    )
    echo_p50 = echo["latency_ms"]["p50"]
    spaced = results["baseline"]["paced"]["http-binary"]
    assert abs(spaced["gap_ms"] - (echo_p50 + 0.2)) < 1e-9
    assert spaced["runs"] > 0 and spaced["slept_ms_mean"] >= spaced["gap_ms"]
    (check,) = (c for c in results["latency_targets"] if c["protocol"] == "http-binary")
    assert check["ort_paced_p50_ms"] == spaced["latency_ms"]["p50"]
    assert check["paced_target_ms"] == echo_p50 + spaced["latency_ms"]["p50"] + 0.2
    assert check["met_paced"] == (check["gateway_p50_ms"] <= check["paced_target_ms"])

    report = (out_dir / "report.md").read_text()
    assert "Rows interleaved" in report
    assert (
        "| protocol | gateway p50 | echo p50 | ORT b1 p50 | target | met | ORT b1 p50 spaced "
        "| target, spaced | met |"
    ) in report
    assert "*Spaced*" in report
    assert "before the servers' rows" in report and "After the servers' rows:" in report
    assert "grpc, against the threaded grpcio echo instead of grpc.aio's" in report
