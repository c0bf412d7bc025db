"""Bare onnxruntime on the served model file, pinned to the server core: the model's limit."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gateway.config.model_config import read_model_policy
from gateway.core.ports import SourceError
from gateway.runtime.huge_pages import collapse_resident_memory

from .measure import NOISY_PCT, CpuSample, cpu_figures, latency_ms, log, wait_for_quiet
from .processes import run_pinned
from .tensors import ORT_TYPES, Feeds, TensorInfo, random_feeds


def ort_inputs(session: Any) -> list[TensorInfo]:
    return [
        TensorInfo(
            i.name,
            ORT_TYPES.get(i.type, i.type),
            [d if isinstance(d, int) and d >= 0 else -1 for d in i.shape],
        )
        for i in session.get_inputs()
    ]


def timed_runs(session: Any, feeds: list[Feeds], seconds: float) -> tuple[list[float], float]:
    """Run the session back to back for `seconds`: per-run latencies and the elapsed time."""
    latencies: list[float] = []
    start = time.perf_counter()
    end = start + seconds
    now = start
    while now < end:
        session.run(None, feeds[len(latencies) % len(feeds)])
        done = time.perf_counter()
        latencies.append(done - now)
        now = done
    return latencies, now - start


def open_model(model_file: str, *, huge_pages: bool) -> tuple[Any, list[TensorInfo], bool]:
    """A CPU session with one intra-op thread, as the gateway runs on one core; its inputs,
    and whether they all have a batch dimension. With `huge_pages`, its memory is moved into
    huge pages as the gateway's loads do (`--huge-pages`, its default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    cpu = ["CPUExecutionProvider"]
    session = ort.InferenceSession(model_file, sess_options=options, providers=cpu)
    if huge_pages:
        collapse_resident_memory()
    inputs = ort_inputs(session)
    return session, inputs, all(t.shape and t.shape[0] == -1 for t in inputs)


def measure_session(
    session: Any, inputs: list[TensorInfo], batched: bool, job: dict[str, Any]
) -> dict[str, Any]:
    """Batch-1 latency and runs/s, then samples/s per batch size."""
    timed_runs(session, random_feeds(inputs, 1, batched, job["seed"]), job["warmup_s"])
    before = CpuSample.take(None)
    latencies, elapsed = timed_runs(
        session, random_feeds(inputs, 1, batched, job["seed"]), job["duration_s"]
    )
    cpu = cpu_figures(before, CpuSample.take(None))
    batch1 = {
        "runs": len(latencies),
        "seconds": elapsed,
        "runs_per_s": len(latencies) / elapsed,
        "latency_ms": latency_ms(latencies),
        "cpu_pct": cpu["own_cpu_pct"],
        "other_cpu_pct": cpu["other_cpu_pct"],
        "steal_pct": cpu["steal_pct"],
    }
    sweep = [
        {
            "batch_size": 1,
            "runs_per_s": batch1["runs_per_s"],
            "samples_per_s": batch1["runs_per_s"],
            "latency_ms": batch1["latency_ms"],
        }
    ]
    for size in job["batch_sizes"] if batched else []:
        if size == 1:
            continue
        feeds = random_feeds(inputs, size, batched, job["seed"])
        timed_runs(session, feeds, min(job["warmup_s"], 0.5))
        runs, seconds = timed_runs(session, feeds, job["sweep_s"])
        sweep.append(
            {
                "batch_size": size,
                "runs_per_s": len(runs) / seconds,
                "samples_per_s": len(runs) * size / seconds,
                "latency_ms": latency_ms(runs),
            }
        )
    return {"batch1": batch1, "sweep": sweep}


def baseline_main(job: dict[str, Any]) -> dict[str, Any]:
    """In the pinned subprocess: the session as onnxruntime makes it, then the same session
    with its memory moved into huge pages as the gateway's loads do (where the kernel can)."""
    import onnxruntime as ort

    session, inputs, batched = open_model(job["model_file"], huge_pages=False)
    stock = measure_session(session, inputs, batched, job)
    collapsed = collapse_resident_memory()
    huge_pages = None
    if collapsed.huge_bytes:
        huge_pages = {
            "collapsed_bytes": collapsed.huge_bytes,  # the process's memory in huge pages
            **measure_session(session, inputs, batched, job),
        }
    return {
        "onnxruntime_version": ort.__version__,
        "model_file": job["model_file"],
        "intra_op_num_threads": 1,
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "inputs": [asdict(t) for t in inputs],
        "batched": batched,
        **stock,
        "huge_pages": huge_pages,
        "huge_pages_unsupported": collapsed.unsupported,
    }


def model_file(args: argparse.Namespace) -> Path:
    """The ONNX file the gateway serves by default: the given version, or the highest one."""
    model_dir: Path = args.model_repository / args.model
    if args.model_version:
        return model_dir / str(args.model_version) / "model.onnx"
    versions = [p for p in model_dir.iterdir() if p.name.isdigit() and (p / "model.onnx").is_file()]
    if not versions:
        raise SystemExit(f"bench: no <version>/model.onnx under {model_dir}")
    return max(versions, key=lambda p: int(p.name)) / "model.onnx"


def batch_sizes(args: argparse.Namespace) -> list[int]:
    """--batch-sizes, and the model's max_batch_size from its config.pbtxt (the largest batch
    the gateway forms, often the model's best) when it is not among them."""
    sizes = set(args.batch_sizes)
    try:
        configured = read_model_policy(args.model_repository / args.model).max_batch_size
    except SourceError as exc:  # the gateway will say so too; the sweep goes on without it
        log(f"cannot read the model's config: {exc}")
        configured = None
    if configured:
        sizes.add(configured)
    return sorted(sizes)


def bare_job(args: argparse.Namespace, sizes: list[int], duration_s: float) -> dict[str, Any]:
    """The job of a `_baseline` subprocess: batch 1 for `duration_s`, then `sizes`."""
    return {
        "model_file": str(model_file(args).resolve()),
        "seed": args.seed,
        "warmup_s": args.warmup,
        "duration_s": duration_s,
        "batch_sizes": sizes,
        "sweep_s": args.sweep_duration,
    }


def run_bare(args: argparse.Namespace, job: dict[str, Any]) -> dict[str, Any]:
    """`job` in a subprocess pinned to the server core, twice over: as onnxruntime makes the
    session, then with its memory in huge pages. Disturbed by other processes: wait for quiet
    and measure again (at most --retry-noisy times)."""
    steps = 1 + len(job["batch_sizes"])
    budget = 2 * (job["warmup_s"] + job["duration_s"] + steps * (job["sweep_s"] + 1)) + 60
    result = run_pinned(args.server_core, "_baseline", job, budget)
    for _ in range(args.retry_noisy):
        busy = max(
            batch1["other_cpu_pct"] + batch1["steal_pct"]
            for batch1 in (result["batch1"], (result["huge_pages"] or {}).get("batch1"))
            if batch1 is not None
        )
        if busy < NOISY_PCT:
            break
        log(f"  other processes used {busy:.0f} % of a core; again")
        if args.wait_quiet > 0:
            wait_for_quiet(args.wait_quiet)
        result = run_pinned(args.server_core, "_baseline", job, budget)
    return result


def run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """Bare onnxruntime in a subprocess pinned to the server core: batch 1, then the sweep."""
    job = bare_job(args, batch_sizes(args), args.baseline_duration)
    log(f"bare onnxruntime on core {args.server_core}: {job['model_file']}")
    return run_bare(args, job)


def run_batch1(args: argparse.Namespace, protocol: str) -> dict[str, Any]:
    """Bare onnxruntime's batch-1 run alone, as made and in huge pages, for as long as a row:
    measured beside each round of concurrency-1 rows of `protocol`, so that the latency target
    adds the model's time of the same minutes as the rows it judges (the host's speed drifts
    by more than the target's slack between the run's start and its concurrency-1 rows)."""
    log(f"bare onnxruntime, batch 1, beside the {protocol} concurrency-1 rows")
    result = run_bare(args, bare_job(args, [], args.duration))
    stock, huge = result["batch1"], (result["huge_pages"] or {}).get("batch1")
    log(
        f"  p50 {stock['latency_ms']['p50'] or 0:.3f} ms"
        + ("" if huge is None else f", in huge pages {huge['latency_ms']['p50'] or 0:.3f} ms")
    )
    return {
        "p50_ms": stock["latency_ms"]["p50"],
        "huge_pages_p50_ms": None if huge is None else huge["latency_ms"]["p50"],
        "runs": stock["runs"],
        "other_cpu_pct": max(b["other_cpu_pct"] for b in (stock, huge) if b is not None),
        "steal_pct": max(b["steal_pct"] for b in (stock, huge) if b is not None),
    }
