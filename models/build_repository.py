"""Build the demo model repository (Triton layout) deterministically.

Usage::

    python models/build_repository.py --output models/repository [--skip-wide]

Layout written::

    <output>/
      digits/config.pbtxt
      digits/1/model.onnx        LogisticRegression on sklearn's 8x8 digits (weaker)
      digits/2/model.onnx        MLPClassifier on the same data (stronger)
      digits/test_split.npz      held-out test split: X float32 [n, 64], y int64 [n]
      mlp/config.pbtxt
      mlp/1/model.onnx           dense 784 -> 1024 -> 1024 -> 10 benchmark model
      mlp_wide/config.pbtxt      (not with --skip-wide)
      mlp_wide/1/model.onnx      dense 784 -> 4096 -> 4096 -> 10 benchmark model

Determinism: every random source has a fixed seed, scikit-learn trains single-threaded,
protobufs are serialised with ``deterministic=True`` and the ``.npz`` archive is written with
fixed zip timestamps, so two builds on the same platform give byte-identical files.

Atomicity: the repository is built into a temporary sibling directory and then renamed into
place, so a half-built repository is never visible under the output path.

Only data that ships with scikit-learn is used (no network access).
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ONNX_OPSET = 17
ONNX_ML_OPSET = 3
# IR version 8 goes with opset 17 and is accepted by every onnxruntime >= 1.14.
IR_VERSION = 8
PRODUCER = "inference-gateway/models/build_repository.py"

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "repository"

DIGITS_CONFIG = """\
name: "digits"
platform: "onnxruntime_onnx"
max_batch_size: 64
# Inputs and outputs are read from the ONNX files:
#   input          FP32  [-1, 64]  raw pixel values 0..16
#   label          INT64 [-1]      predicted digit
#   probabilities  FP32  [-1, 10]  class probabilities
version_policy: { all { } }
dynamic_batching {
  max_queue_delay_microseconds: 0
}
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""

DENSE_CONFIG_TEMPLATE = """\
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "input"
    data_type: TYPE_FP32
    dims: [ {n_in} ]
  }}
]
output [
  {{
    name: "logits"
    data_type: TYPE_FP32
    dims: [ {n_out} ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
instance_group [
  {{
    count: 1
    kind: KIND_CPU
  }}
]
{parameters}"""
RETURNING_WAIT_TEMPLATE = """\
# The gateway's own batching knob (see README, Dynamic batching): after a batch ends, the next
# waits up to this long for the callers just answered to send their next requests.
parameters {{
  key: "returning_wait_microseconds"
  value: {{ string_value: "{returning_wait_us}" }}
}}
"""

# Fixed timestamp for zip members (the zip epoch), so the .npz is byte-for-byte reproducible.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


# --------------------------------------------------------------------------- file writing


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` but without the current time in the zip headers."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]))
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    _write_bytes(path, buf.getvalue())


def _save_onnx(path: Path, model: Any) -> None:
    _write_bytes(path, model.SerializeToString(deterministic=True))


# --------------------------------------------------------------------------- digits


def _check_session(
    path: Path,
    inputs: dict[str, tuple[str, list[Any]]],
    outputs: dict[str, tuple[str, list[Any]]],
) -> ort.InferenceSession:
    """Load ``path`` in onnxruntime and check input/output names, types and ranks."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for kind, declared, expected in (
        ("input", sess.get_inputs(), inputs),
        ("output", sess.get_outputs(), outputs),
    ):
        got = {a.name: (a.type, list(a.shape)) for a in declared}
        if set(got) != set(expected):
            raise RuntimeError(f"{path}: {kind}s {sorted(got)} != {sorted(expected)}")
        for name, (typ, shape) in expected.items():
            gtyp, gshape = got[name]
            if gtyp != typ or len(gshape) != len(shape):
                raise RuntimeError(f"{path}: {kind} {name} is {gtyp} {gshape}, want {typ} {shape}")
            for g, want in zip(gshape, shape, strict=True):
                if isinstance(want, int) and g != want:
                    raise RuntimeError(f"{path}: {kind} {name} shape {gshape} != {shape}")
    return sess


def build_digits(model_dir: Path) -> dict[str, Any]:
    """Train, export and verify the two digits classifiers; return a summary."""
    from onnx import helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MaxAbsScaler
    from threadpoolctl import threadpool_limits

    x_all, y_all = load_digits(return_X_y=True)
    x_all = x_all.astype(np.float32)
    y_all = y_all.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x_all, y_all, test_size=0.25, random_state=0, stratify=y_all
    )
    n_classes = 10

    # MaxAbsScaler inside the pipeline (~ X / 16) keeps the ONNX input as raw pixels 0..16.
    candidates: dict[int, Pipeline] = {
        # Version 1: a decent but deliberately simple, fairly strongly regularised linear model.
        1: Pipeline([("scale", MaxAbsScaler()), ("clf", LogisticRegression(C=0.1, max_iter=500))]),
        # Version 2: a small neural network, noticeably more accurate.
        2: Pipeline(
            [
                ("scale", MaxAbsScaler()),
                (
                    "clf",
                    MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=0),
                ),
            ]
        ),
    }

    summary: dict[str, Any] = {"n_test": len(y_test)}
    predictions: dict[int, np.ndarray] = {}
    for version, pipe in candidates.items():
        # Single-threaded BLAS so training is bit-for-bit repeatable; a convergence warning
        # would mean the result depends on max_iter, so it is an error here.
        with threadpool_limits(limits=1), warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            pipe.fit(x_train, y_train)
        sk_pred = pipe.predict(x_test).astype(np.int64)

        onx = convert_sklearn(
            pipe,
            name=f"digits_v{version}",
            initial_types=[("input", FloatTensorType([None, 64]))],
            final_types=[
                ("label", Int64TensorType([None])),
                ("probabilities", FloatTensorType([None, n_classes])),
            ],
            options={id(pipe.steps[-1][1]): {"zipmap": False}},
            target_opset={"": ONNX_OPSET, "ai.onnx.ml": ONNX_ML_OPSET},
        )
        onx.ir_version = IR_VERSION
        # skl2onnx collects the opset imports in a set: fix their order (it follows the hash
        # seed otherwise, which changes the bytes from one run to the next).
        opsets = sorted((o.domain, o.version) for o in onx.opset_import)
        del onx.opset_import[:]
        onx.opset_import.extend(helper.make_opsetid(domain, v) for domain, v in opsets)
        onx.producer_name = PRODUCER
        onx.producer_version = "1"
        onx.model_version = version
        onx.doc_string = (
            f"digits v{version}: {type(pipe.steps[-1][1]).__name__} on sklearn load_digits"
        )
        path = model_dir / str(version) / "model.onnx"
        _save_onnx(path, onx)

        sess = _check_session(
            path,
            inputs={"input": ("tensor(float)", [None, 64])},
            outputs={
                "label": ("tensor(int64)", [None]),
                "probabilities": ("tensor(float)", [None, n_classes]),
            },
        )
        label, proba = sess.run(["label", "probabilities"], {"input": x_test})
        if not np.array_equal(label, sk_pred):
            n_diff = int((label != sk_pred).sum())
            raise RuntimeError(f"digits v{version}: ONNX and sklearn disagree on {n_diff} digits")
        if not np.allclose(proba.sum(axis=1), 1.0, atol=1e-4):
            raise RuntimeError(f"digits v{version}: probabilities do not sum to 1")
        predictions[version] = label
        summary[f"v{version}_model"] = type(pipe.steps[-1][1]).__name__
        summary[f"v{version}_accuracy"] = float((label == y_test).mean())

    summary["disagreements"] = int((predictions[1] != predictions[2]).sum())
    if summary["disagreements"] == 0:
        raise RuntimeError("digits v1 and v2 agree on every test digit; the demo needs them not to")

    _save_npz(model_dir / "test_split.npz", {"X": x_test, "y": y_test})
    _write_bytes(model_dir / "config.pbtxt", DIGITS_CONFIG.encode())
    return summary


# --------------------------------------------------------------------------- dense MLPs


def make_dense_mlp(name: str, sizes: Sequence[int], seed: int) -> Any:
    """A Gemm + Relu stack with He-initialised float32 weights from ``default_rng(seed)``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = []
    initializers = []
    current = "input"
    n_layers = len(sizes) - 1
    for i in range(n_layers):
        fan_in, fan_out = sizes[i], sizes[i + 1]
        weight = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
        weight *= np.float32(np.sqrt(2.0 / fan_in))
        bias = rng.uniform(-0.05, 0.05, size=fan_out).astype(np.float32)
        w_name, b_name = f"fc{i + 1}.weight", f"fc{i + 1}.bias"
        initializers += [
            numpy_helper.from_array(weight, w_name),
            numpy_helper.from_array(bias, b_name),
        ]
        last = i == n_layers - 1
        gemm_out = "logits" if last else f"fc{i + 1}"
        nodes.append(helper.make_node("Gemm", [current, w_name, b_name], [gemm_out], f"Gemm_{i}"))
        if last:
            break
        relu_out = f"relu{i + 1}"
        nodes.append(helper.make_node("Relu", [gemm_out], [relu_out], f"Relu_{i}"))
        current = relu_out

    graph = helper.make_graph(
        nodes,
        name,
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", sizes[0]])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name=PRODUCER,
        producer_version="1",
        doc_string=f"{name}: dense {' -> '.join(map(str, sizes))} benchmark model, seed {seed}",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def build_dense(
    model_dir: Path,
    sizes: Sequence[int],
    seed: int,
    max_batch_size: int,
    max_queue_delay_us: int,
    returning_wait_us: int = 0,
) -> dict[str, Any]:
    name = model_dir.name
    path = model_dir / "1" / "model.onnx"
    _save_onnx(path, make_dense_mlp(name, sizes, seed))
    config = DENSE_CONFIG_TEMPLATE.format(
        name=name,
        max_batch_size=max_batch_size,
        n_in=sizes[0],
        n_out=sizes[-1],
        max_queue_delay_us=max_queue_delay_us,
        parameters=RETURNING_WAIT_TEMPLATE.format(returning_wait_us=returning_wait_us)
        if returning_wait_us
        else "",
    )
    _write_bytes(model_dir / "config.pbtxt", config.encode())

    sess = _check_session(
        path,
        inputs={"input": ("tensor(float)", ["batch", sizes[0]])},
        outputs={"logits": ("tensor(float)", ["batch", sizes[-1]])},
    )
    probe = np.random.default_rng(123).random((4, sizes[0]), dtype=np.float32)
    (logits,) = sess.run(["logits"], {"input": probe})
    if logits.shape != (4, sizes[-1]) or not np.isfinite(logits).all() or not logits.any():
        raise RuntimeError(f"{name}: unexpected output for a probe input")
    return {"parameters": sum(a * b + b for a, b in itertools.pairwise(sizes))}


# --------------------------------------------------------------------------- main


def build(output: Path, skip_wide: bool = False) -> dict[str, dict[str, Any]]:
    """Build the whole repository into ``output``, replacing whatever is there."""
    output = output.resolve()
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # A mount point (e.g. a Docker volume) cannot be renamed away: stage inside it instead.
    in_place = output.is_dir() and os.path.ismount(output)
    stage_parent = output if in_place else output.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=stage_parent))
    try:
        summary: dict[str, dict[str, Any]] = {"digits": build_digits(staging / "digits")}
        summary["mlp"] = build_dense(
            staging / "mlp",
            (784, 1024, 1024, 10),
            seed=0,
            max_batch_size=128,
            max_queue_delay_us=0,
        )
        if not skip_wide:
            summary["mlp_wide"] = build_dense(
                staging / "mlp_wide",
                (784, 4096, 4096, 10),
                seed=1,
                max_batch_size=64,
                max_queue_delay_us=0,
                # The model is the bottleneck: batches of 64 cost 15 % less a row than of 32.
                returning_wait_us=20_000,
            )
        for path in staging.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        staging.chmod(0o755)
        if in_place:
            _replace_entries(staging, output)
        else:
            _swap_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _swap_into_place(staging: Path, output: Path) -> None:
    """Replace ``output`` by the finished ``staging`` directory (same parent, so by rename)."""
    if not output.exists():
        os.rename(staging, output)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
    os.rename(output, old / output.name)
    os.rename(staging, output)
    shutil.rmtree(old, ignore_errors=True)


def _replace_entries(staging: Path, output: Path) -> None:
    """Replace the entries of ``output`` by those of ``staging`` (a directory inside it).

    Each model directory still appears by rename, complete; only the repository as a whole
    is briefly a mix of old and new models.
    """
    for entry in sorted(output.iterdir()):
        if entry == staging:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in sorted(staging.iterdir()):
        os.rename(entry, output / entry.name)
    staging.rmdir()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"default: {DEFAULT_OUTPUT}"
    )
    parser.add_argument(
        "--skip-wide", action="store_true", help="do not build mlp_wide (~80 MB, I/O bound)"
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    summary = build(args.output, skip_wide=args.skip_wide)
    elapsed = time.perf_counter() - start

    d = summary["digits"]
    print(f"digits v1 ({d['v1_model']}): test accuracy {d['v1_accuracy']:.4f}")
    print(f"digits v2 ({d['v2_model']}): test accuracy {d['v2_accuracy']:.4f}")
    print(f"digits v1 and v2 disagree on {d['disagreements']} of {d['n_test']} test digits")
    for name in ("mlp", "mlp_wide"):
        if name in summary:
            print(f"{name}: {summary[name]['parameters']:,} parameters")
    print(f"built {args.output} in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
