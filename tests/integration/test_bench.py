"""loadtest/bench.py end to end, in miniature: bare onnxruntime, the gateway, the echo servers
and the minimal servers measured in one run, rows interleaved, the report written from what was
measured."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

from gateway.generated import grpc_service_pb2 as pb
from gateway.runtime.huge_pages import unsupported_reason
from loadtest.benchkit.echo import Echo, answer_grpc, answer_http

ROOT = Path(__file__).resolve().parents[2]


def run_bench(
    demo_repository: Path, tmp_path: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    """A miniature bench run of `mlp` (short windows, no retries) into tmp_path; it must pass."""
    cores = sorted(os.sched_getaffinity(0))
    command = [
        sys.executable,
        str(ROOT / "loadtest" / "bench.py"),
        *("--model", "mlp", "--model-repository", str(demo_repository)),
        *("--duration", "0.3", "--warmup", "0.1", "--baseline-duration", "0.3"),
        *("--sweep-duration", "0.2", "--retry-noisy", "0"),
        *("--server-core", str(cores[0]), "--client-core", str(cores[-1])),
        *("--out", str(tmp_path)),
        *options,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_short_run_interleaves_rows_and_reports_every_figure(
    demo_repository: Path, tmp_path: Path
) -> None:
    done = run_bench(
        demo_repository,
        tmp_path,
        *("--protocols", "http-binary", "grpc", "--concurrency", "1", "4"),
        *("--batch-sizes", "1", "8"),
        *("--lean-http-echo", "--threaded-grpc-echo", "--minimal-servers"),
    )

    # Each concurrency on the echo, the gateway, the echo on the gateway's own stack and the
    # minimal server on it, one after the other.
    measured = re.findall(r"\[bench\] (\S+) (http-binary|grpc) x (\d+):", done.stderr)
    targets = {
        "http-binary": ("echo-http", "gateway", "echo-http-lean", "minimal-http-lean"),
        "grpc": ("echo-grpc", "gateway", "echo-grpc-threaded", "minimal-grpc-threaded"),
    }
    assert measured == [
        (target, protocol, concurrency)
        for protocol in ("http-binary", "grpc")
        for concurrency in ("1", "4")
        for target in targets[protocol]
    ]

    # Each protocol's concurrency-1 round starts with bare onnxruntime's batch 1, which the
    # latency target adds in place of the run's first baseline.
    for protocol, first in (("http-binary", "echo-http"), ("grpc", "echo-grpc")):
        bare = done.stderr.index(f"beside the {protocol} concurrency-1 rows")
        assert bare < done.stderr.index(f"] {first} {protocol} x 1:")
    assert done.stderr.index("minimal-http-lean http-binary x 4:") < bare

    (out_dir,) = tmp_path.iterdir()
    results = json.loads((out_dir / "results.json").read_text())
    assert results["meta"]["order"] == "interleaved"
    beside = results["batch1_beside_rows"]
    assert sorted(beside) == ["grpc", "http-binary"]
    for check in results["latency_targets"] + results["lean_latency_targets"]:
        (bare_run,) = beside[check["protocol"]]
        assert check["ort_batch1_measured"] == "beside the rows"
        assert check["ort_batch1_p50_ms"] == bare_run["p50_ms"]
        assert check["ort_batch1_huge_pages_p50_ms"] == bare_run["huge_pages_p50_ms"]
    assert [r["concurrency"] for r in results["runs"]] == [1, 4, 1, 4]
    every_row = (
        results["runs"] + results["echo_runs"] + results["lean_echo_runs"] + results["minimal_runs"]
    )
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in every_row)
    assert [r["target"] for r in results["echo_runs"]] == ["echo-grpc"] * 2 + ["echo-http"] * 2
    assert [r["target"] for r in results["lean_echo_runs"]] == [
        *["echo-http-lean"] * 2,
        *["echo-grpc-threaded"] * 2,
    ]
    assert set(results["lean_limits"]) == {"http-binary", "grpc"}

    # The model's limit: each batch size's mean of the runs before and after the rows, each
    # run's the better of the session as made and with its memory in huge pages.
    limit = results["model_limit"]
    assert (results["baseline"]["huge_pages"] is None) == (unsupported_reason() is not None)
    before, after = (
        {
            step["batch_size"]: max(step["samples_per_s"], huge["samples_per_s"])
            for step, huge in zip(
                results[key]["sweep"],
                (results[key]["huge_pages"] or results[key])["sweep"],
                strict=True,
            )
        }
        for key in ("baseline", "baseline_end")
    )
    assert limit["samples_per_s"] == (before[limit["batch_size"]] + after[limit["batch_size"]]) / 2
    assert sorted(before) == sorted(after) == [1, 8, 128]  # 128: mlp's max_batch_size
    assert limit["samples_per_s"] == max((before[b] + after[b]) / 2 for b in before)
    assert results["limits"]["http-binary"]["model_samples_per_s"] == limit["samples_per_s"]

    # The minimal servers ran the model: their rows are checked answers with the model's
    # latency in them, and each protocol's c=1 check is their p50 + slack.
    assert [r["target"] for r in results["minimal_runs"]] == [
        *["minimal-http-lean"] * 2,
        *["minimal-grpc-threaded"] * 2,
    ]
    for protocol in ("http-binary", "grpc"):
        (alone,) = (
            r
            for r in results["minimal_runs"]
            if r["protocol"] == protocol and r["concurrency"] == 1
        )
        (check,) = (c for c in results["minimal_checks"] if c["protocol"] == protocol)
        assert check["minimal_p50_ms"] == alone["latency_ms"]["p50"]
        assert check["target_ms"] == alone["latency_ms"]["p50"] + 0.2
        assert check["met"] == (check["gateway_p50_ms"] <= check["target_ms"])
        assert check["batching_gain"] == (
            check["gateway_best_samples_per_s"] / check["minimal_best_samples_per_s"]
        )

    # The gateway's CPU by thread: over gRPC its loop, model and worker threads all worked,
    # over HTTP its loop and model threads only (a lone caller's model runs on the loop:
    # --solo-on-loop-us); with `ended` (threads gone by the window's end) the roles add up to
    # the process's total, give or take a clock tick a thread.
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    for run in results["runs"]:
        by_thread = run["server_cpu_us_per_request_by_thread"]
        busy = {role for role, us in by_thread.items() if us > 0 and role != "ended"}
        solo = run["concurrency"] == 1
        assert ({"loop"} if solo else {"loop", "inference"}) <= busy
        if run["protocol"] == "grpc":
            assert "grpc" in busy
        else:
            assert by_thread.get("grpc", 0) == 0
        slack_us = (run["server_threads"] + 2) * tick_us / run["requests"]
        assert abs(sum(by_thread.values()) - run["server_cpu_us_per_request"]) <= slack_us
        # A request wakes the thread that reads it: about a blocking switch a request over HTTP
        # (fewer under load, when one wake-up reads several), about ten over gRPC.
        switches = run["server_switches_per_request"]
        assert set(switches) == {"voluntary", "involuntary"}
        assert switches["voluntary"] > (2 if run["protocol"] == "grpc" else 0.1)

    report = (out_dir / "report.md").read_text()
    assert "## Where the gateway's CPU goes (us a request, by thread)" in report
    assert "| protocol | conc | loop | inference | grpc |" in report
    assert "| total | switches | preempted |" in report
    assert "Rows interleaved" in report
    assert "| protocol | gateway p50 | echo p50 | ORT b1 p50 | target | met |" in report
    assert "## Minimal servers" in report
    assert "| gateway / minimal |" in report
    assert "before the servers' rows" in report and "After the servers' rows:" in report
    assert "grpc, against the threaded grpcio echo instead of grpc.aio's" in report

    # A run from before the minimal servers renders without them.
    del results["minimal_runs"]
    (out_dir / "results.json").write_text(json.dumps(results))
    render = [sys.executable, str(ROOT / "loadtest" / "bench.py"), "render", str(out_dir)]
    rendered = subprocess.run(render, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert "## Minimal servers" not in (out_dir / "report.md").read_text()


def test_repeats_are_measured_in_rounds_and_each_row_is_their_median(
    demo_repository: Path, tmp_path: Path
) -> None:
    done = run_bench(
        demo_repository,
        tmp_path,
        *("--protocols", "http-binary", "--concurrency", "1", "--repeat", "3"),
        *("--batch-sizes", "1"),
    )

    # Bare onnxruntime's batch 1, the echo and the gateway one after the other, three rounds
    # in a row.
    measured = re.findall(
        r"\[bench\] (?:(\S+) http-binary x 1:|(bare onnxruntime), batch 1, beside the "
        r"http-binary concurrency-1 rows)",
        done.stderr,
    )
    assert ["".join(step) for step in measured] == ["bare onnxruntime", "echo-http", "gateway"] * 3

    (out_dir,) = tmp_path.iterdir()
    results = json.loads((out_dir / "results.json").read_text())
    for runs in (results["runs"], results["echo_runs"]):
        (run,) = runs
        rates = [repeat["samples_per_s"] for repeat in run["repeats"]]
        assert len(rates) == 3 and run["samples_per_s"] == sorted(rates)[1]
        # Short windows may tie (the same count of answers): any of the tied repeats will do.
        same = [r for r in run["repeats"] if r["samples_per_s"] == run["samples_per_s"]]
        assert any(r["p50_ms"] == run["latency_ms"]["p50"] for r in same)

    # The target adds bare onnxruntime's batch 1 of the same rounds: the median of the three
    # for the row, each round's own for its repeat.
    rounds = results["batch1_beside_rows"]["http-binary"]
    assert len(rounds) == 3 and all(r["runs"] > 0 for r in rounds)
    (check,) = results["latency_targets"]
    assert check["ort_batch1_measured"] == "beside the rows"
    assert check["ort_batch1_p50_ms"] == sorted(r["p50_ms"] for r in rounds)[1]
    echo_p50 = results["echo_runs"][0]["latency_ms"]["p50"]
    assert check["target_ms"] == echo_p50 + check["ort_batch1_p50_ms"] + check["slack_ms"]
    assert check["repeats"] == 3
    in_rounds = zip(
        results["runs"][0]["repeats"], results["echo_runs"][0]["repeats"], rounds, strict=True
    )
    assert check["repeats_met"] == sum(
        g["p50_ms"] <= e["p50_ms"] + (r["p50_ms"] + check["slack_ms"]) for g, e, r in in_rounds
    )

    report = (out_dir / "report.md").read_text()
    assert "each row the repeat with the median samples/s of 3 (see Repeats)" in report
    assert "| met in repeats |" in report and f"{check['repeats_met']} of 3 |" in report
    assert "## Repeats" in report
    assert "| beside the rows of | batch 1 p50 ms, by round |" in report
    assert "measured beside each round of a protocol's concurrency-1 rows" in report

    # The stricter target: bare onnxruntime with its memory in huge pages, as the gateway has.
    if unsupported_reason() is not None:
        assert check["target_huge_pages_ms"] is None
        return
    huge = results["baseline"]["huge_pages"]
    assert huge["collapsed_bytes"] > 0 and huge["batch1"]["runs"] > 0
    # A round whose collapse moved nothing (the kernel may refuse one) has no figure here.
    strict = [r["huge_pages_p50_ms"] for r in rounds if r["huge_pages_p50_ms"] is not None]
    assert strict
    assert check["ort_batch1_huge_pages_p50_ms"] == statistics.median(strict)
    in_rounds = zip(
        results["runs"][0]["repeats"], results["echo_runs"][0]["repeats"], rounds, strict=True
    )
    met = sum(
        g["p50_ms"] <= e["p50_ms"] + (r["huge_pages_p50_ms"] + check["slack_ms"])
        for g, e, r in in_rounds
        if r["huge_pages_p50_ms"] is not None
    )
    assert check["repeats_met_huge_pages"] == met
    assert "| ORT b1 p50, huge pages | target | met | met in repeats |" in report
    assert "| samples/s, huge pages | p50 ms, huge pages |" in report


def test_the_several_loops_grpc_echo_spreads_connections_over_its_loops(
    demo_repository: Path, tmp_path: Path
) -> None:
    """--multi-loop-grpc-echo: grpc.aio servers on two event loops share one port; with a
    channel a worker, both loops answer (16 connections all on one of two listening sockets:
    a chance of 2 in 65,536), and the report sets them beside the other gRPC echoes."""
    done = run_bench(
        demo_repository,
        tmp_path,
        *("--protocols", "grpc", "--concurrency", "1", "16", "--batch-sizes", "1"),
        *("--threaded-grpc-echo", "--multi-loop-grpc-echo", "2", "--grpc-channels", "16"),
    )

    measured = re.findall(r"\[bench\] (\S+) grpc x (\d+):", done.stderr)
    assert measured == [
        (target, concurrency)
        for concurrency in ("1", "16")
        for target in ("echo-grpc", "gateway", "echo-grpc-threaded", "echo-grpc-loops")
    ]
    (out_dir,) = tmp_path.iterdir()
    results = json.loads((out_dir / "results.json").read_text())
    loops_runs = results["loops_echo_runs"]
    assert [r["target"] for r in loops_runs] == ["echo-grpc-loops"] * 2
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in loops_runs)
    by_loop = re.search(
        r"calls by loop: \[(\d+), (\d+)\]", (out_dir / "echo-grpc-loops.log").read_text()
    )
    assert by_loop is not None and all(int(calls) > 0 for calls in by_loop.groups())

    report = (out_dir / "report.md").read_text()
    assert "## gRPC front ends (echoes; same payloads, no model)" in report
    for stack in ("grpc.aio, one loop", "grpc.aio, 2 loops", "threaded grpcio"):
        assert report.count(f"| {stack} |") == 2

    # Its rows set no limit, however fast: the gRPC front-end limit stays grpc.aio's
    # on one loop (re-rendered with the several loops made a hundred times faster).
    one_loop_best = max(r["requests_per_s"] for r in results["echo_runs"])
    assert results["limits"]["grpc"]["echo_requests_per_s"] == one_loop_best
    for run in loops_runs:
        run["requests_per_s"] = run["samples_per_s"] = 100 * one_loop_best
    (out_dir / "results.json").write_text(json.dumps(results))
    render = [sys.executable, str(ROOT / "loadtest" / "bench.py"), "render", str(out_dir)]
    rendered = subprocess.run(render, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    results = json.loads((out_dir / "results.json").read_text())
    assert results["limits"]["grpc"]["echo_requests_per_s"] == one_loop_best
    assert "| grpc.aio, 2 loops | 16 |" in (out_dir / "report.md").read_text()

    refused = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / "bench.py"), "--multi-loop-grpc-echo", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert refused.returncode == 2 and "--multi-loop-grpc-echo takes a number" in refused.stderr


def test_a_minimal_server_answers_what_the_model_computes(demo_repository: Path) -> None:
    """The minimal servers' answers are the model's outputs for the request's rows (not the
    echo's zeros), on both stacks' answer paths."""
    model = demo_repository / "mlp" / "1" / "model.onnx"
    outputs = [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    echo = Echo({"batched": True, "outputs": outputs, "model_file": str(model), "huge_pages": True})
    rows = np.random.default_rng(0).random((3, 784), dtype=np.float32)
    (expected,) = ort.InferenceSession(str(model)).run(["logits"], {"input": rows})
    assert np.abs(expected).sum() > 0

    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP32", shape=[3, 784])
    request.raw_input_contents.append(rows.tobytes())
    answer = answer_grpc(echo, request)
    assert list(answer.outputs[0].shape) == [3, 10]
    got = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(3, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-5)

    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [3, 784],
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    body, header_length = answer_http(echo, header + rows.tobytes(), str(len(header)), "mlp", "1")
    assert header_length is not None
    got = np.frombuffer(body[header_length:], np.float32).reshape(3, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-5)

    as_json = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 784]}]}
    as_json["inputs"][0]["data"] = rows.ravel().tolist()
    body, header_length = answer_http(echo, orjson.dumps(as_json), None, "mlp", "1")
    assert header_length is None
    (output,) = orjson.loads(body)["outputs"]
    assert output["shape"] == [3, 10]
    np.testing.assert_allclose(np.asarray(output["data"]).reshape(3, 10), expected, rtol=1e-5)
