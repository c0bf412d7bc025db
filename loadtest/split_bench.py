"""Split benchmark: what does one request whose values fail the model cost its batch-mates?

The gateway's batcher answers a merged run that fails on a caller's values by running the
batch again in halves, down to the requests that fail alone (README: Dynamic batching). This
measures the price, in process and on one core: the real DynamicBatcher and onnxruntime runner,
no front end. The model looks rows up in a table (Gather; an index out of range fails the run)
and pushes them through a few MatMuls, so a run costs more with more rows. For each batch size
n, trials of n one-row requests merged into one batch (a long queue delay holds it until full)
in three cases, interleaved trial by trial so the machine's drift falls on all three alike:

- clean: every index valid (the baseline);
- one bad: one request, at a random place, with an index out of range;
- all bad: every request out of range (the worst case: 2n - 1 runs).

Per case: runs a batch, the batch's makespan (first request queued to last answered) and the
good requests' latency, medians over the trials, each as a ratio to the clean case's.

    .venv/bin/python loadtest/split_bench.py                  # n = 8, 32, 64; 200 trials each
    .venv/bin/python loadtest/split_bench.py --sizes 64 --trials 500 --json split.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from gateway.core.batcher import BatcherConfig, DynamicBatcher
from gateway.core.errors import InvalidInputError
from gateway.core.workers import WorkerPool
from gateway.runtime.onnx_runner import OnnxRunner

TABLE_ROWS, WIDTH, DEPTH = 1000, 256, 8
CASES = ("clean", "one bad", "all bad")
BAD_INDEX = 10**6


def build_model(path: Path) -> Path:
    """ROW = TABLE[INDEX] @ W ... (DEPTH times): one row of WIDTH per index."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((TABLE_ROWS, WIDTH)).astype(np.float32)
    weight = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["TABLE", "INDEX"], ["h0"], axis=0)]
    for i in range(DEPTH):
        out = "ROW" if i == DEPTH - 1 else f"h{i + 1}"
        nodes.append(helper.make_node("MatMul", [f"h{i}", "W"], [out]))
    graph = helper.make_graph(
        nodes,
        "split_bench",
        [helper.make_tensor_value_info("INDEX", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("ROW", TensorProto.FLOAT, ["batch", 1, WIDTH])],
        initializer=[numpy_helper.from_array(table, "TABLE"), numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


async def one_batch(batcher: DynamicBatcher, indices: list[int]) -> dict[str, Any]:
    """Queue one one-row request per index at once; wait for every answer."""
    runs_before = batcher.stats.batches
    started = time.perf_counter()

    async def call(index: int) -> tuple[bool, float]:
        feeds = {"INDEX": np.array([[index]], dtype=np.int64)}
        try:
            await batcher.infer(feeds, ["ROW"], 1, None)
            ok = True
        except InvalidInputError:
            ok = False
        return ok, time.perf_counter() - started

    answers = await asyncio.gather(*(call(index) for index in indices))
    good = [latency for ok, latency in answers if ok]
    failed = sum(1 for ok, _ in answers if not ok)
    expected_failed = sum(1 for index in indices if index >= TABLE_ROWS)
    assert failed == expected_failed, (failed, expected_failed)  # each caller its own outcome
    return {
        "runs": batcher.stats.batches - runs_before,
        "makespan_s": max(latency for _, latency in answers),
        "good_p50_s": statistics.median(good) if good else None,
    }


async def measure(model: Path, sizes: list[int], trials: int, seed: int) -> dict[str, Any]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4  # as the gateway: failures are exceptions, not stderr lines
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    runner = OnnxRunner("split:1", session, frozenset())
    workers = WorkerPool(1, "split-bench")
    rng = np.random.default_rng(seed)
    results: dict[str, Any] = {}
    try:
        for n in sizes:
            config = BatcherConfig(
                max_batch_size=n,
                merge=True,
                concurrency=1,
                max_queue_size=4 * n,
                max_queue_delay_s=10.0,  # the batch launches when full, never by the clock
            )
            batcher = DynamicBatcher("split:1", runner, workers, config, ["ROW"])
            await one_batch(batcher, list(range(n)))  # warm-up
            rows: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
            for trial in range(trials):
                order = CASES[trial % 3 :] + CASES[: trial % 3]
                for case in order:
                    indices = [int(i) for i in rng.integers(0, TABLE_ROWS, n)]
                    if case == "one bad":
                        indices[int(rng.integers(0, n))] = BAD_INDEX
                    elif case == "all bad":
                        indices = [BAD_INDEX + i for i in range(n)]
                    rows[case].append(await one_batch(batcher, indices))
            results[str(n)] = summarize(rows)
    finally:
        workers.shutdown(wait=True)
    return results


def summarize(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def median(case: str, key: str) -> float | None:
        values = [row[key] for row in rows[case] if row[key] is not None]
        return statistics.median(values) if values else None

    clean_makespan = median("clean", "makespan_s")
    clean_good = median("clean", "good_p50_s")
    summary: dict[str, Any] = {}
    for case in CASES:
        makespan, good = median(case, "makespan_s"), median(case, "good_p50_s")
        summary[case] = {
            "runs": median(case, "runs"),
            "makespan_ms": makespan * 1e3 if makespan is not None else None,
            "good_p50_ms": good * 1e3 if good is not None else None,
            "makespan_ratio": makespan / clean_makespan if makespan and clean_makespan else None,
            "good_p50_ratio": good / clean_good if good and clean_good else None,
        }
    return summary


def report(results: dict[str, Any], trials: int) -> str:
    lines = [
        f"Split benchmark: {trials} trials a case, medians; ratios against the clean batch "
        "of the same size, measured interleaved with it.",
        "",
        "| n | case | runs | makespan ms | / clean | good callers' p50 ms | / clean |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]

    def cell(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for n, summary in results.items():
        for case in CASES:
            row = summary[case]
            lines.append(
                f"| {n} | {case} | {cell(row['runs'], 0)} | {cell(row['makespan_ms'])} | "
                f"{cell(row['makespan_ratio'], 2)} | {cell(row['good_p50_ms'])} | "
                f"{cell(row['good_p50_ratio'], 2)} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="8,32,64", help="batch sizes, comma-separated")
    parser.add_argument("--trials", type=int, default=200, help="trials of each case a size")
    parser.add_argument("--core", type=int, default=0, help="the one core to run on (-1: any)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    if any(size < 2 for size in sizes) or args.trials < 1:
        parser.error("--sizes must be >= 2 each and --trials >= 1")
    if args.core >= 0:
        os.sched_setaffinity(0, {args.core})
    with tempfile.TemporaryDirectory() as scratch:
        model = build_model(Path(scratch) / "model.onnx")
        results = asyncio.run(measure(model, sizes, args.trials, args.seed))
    print(report(results, args.trials))
    if args.json is not None:
        args.json.write_text(json.dumps({"trials": args.trials, "sizes": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
