"""Small ONNX models built with onnx.helper for the test repositories (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17

# Every protocol datatype and the ONNX element type that carries it.
ONNX_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def _vi(name: str, elem: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def add_sub(path: Path, elem: int = TensorProto.INT32, width: int = 16) -> Path:
    """Triton's classic `simple` model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    shape: list[int | str] = ["batch", width]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [_vi("INPUT0", elem, shape), _vi("INPUT1", elem, shape)],
        [_vi("OUTPUT0", elem, shape), _vi("OUTPUT1", elem, shape)],
    )
    return _save(graph, path)


def identity_all_types(path: Path, width: int = 3) -> Path:
    """IN_<DT> -> OUT_<DT> for every datatype, batch dimension first."""
    nodes, inputs, outputs = [], [], []
    for name, elem in ONNX_TYPES.items():
        nodes.append(helper.make_node("Identity", [f"IN_{name}"], [f"OUT_{name}"]))
        inputs.append(_vi(f"IN_{name}", elem, ["batch", width]))
        outputs.append(_vi(f"OUT_{name}", elem, ["batch", width]))
    return _save(helper.make_graph(nodes, "identity_all_types", inputs, outputs), path)


def fixed_shape(path: Path) -> Path:
    """No batch dimension: Y[2,3] = X[2,3] * 2 (max_batch_size 0 by auto-complete)."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["X", "two"], ["Y"])],
        "fixed_shape",
        [_vi("X", TensorProto.FLOAT, [2, 3])],
        [_vi("Y", TensorProto.FLOAT, [2, 3])],
        initializer=[two],
    )
    return _save(graph, path)


def plus_constant(path: Path, constant: float, width: int = 4) -> Path:
    """Y = X + constant: distinguishes versions of one model by their answers."""
    c = numpy_helper.from_array(np.array(constant, dtype=np.float32), "c")
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "c"], ["Y"])],
        "plus_constant",
        [_vi("X", TensorProto.FLOAT, ["batch", width])],
        [_vi("Y", TensorProto.FLOAT, ["batch", width])],
        initializer=[c],
    )
    return _save(graph, path)


def identity_any_width(path: Path) -> Path:
    """Y = X for X of shape [batch, any width]: a dimension a config may pin."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["Y"])],
        "identity_any_width",
        [_vi("X", TensorProto.FLOAT, ["batch", "width"])],
        [_vi("Y", TensorProto.FLOAT, ["batch", "width"])],
    )
    return _save(graph, path)


def reshape(path: Path) -> Path:
    """Y = Reshape(DATA[4], SHAPE[2]): a runtime failure that depends on the caller's values."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["DATA", "SHAPE"], ["Y"])],
        "reshape",
        [_vi("DATA", TensorProto.FLOAT, [4]), _vi("SHAPE", TensorProto.INT64, [2])],
        [_vi("Y", TensorProto.FLOAT, [None, None])],  # type: ignore[list-item]
    )
    return _save(graph, path)


def lookup(path: Path, table_rows: int = 100, width: int = 4) -> Path:
    """ROW = TABLE[INDEX] with TABLE[r, c] = 10 * r + c: an index out of range fails the run
    (a failure in the caller's values that a merged batch's other rows do not share)."""
    table = np.arange(table_rows)[:, None] * 10.0 + np.arange(width)[None, :]
    graph = helper.make_graph(
        [helper.make_node("Gather", ["TABLE", "INDEX"], ["ROW"], axis=0)],
        "lookup",
        [_vi("INDEX", TensorProto.INT64, ["batch", 1])],
        [_vi("ROW", TensorProto.FLOAT, ["batch", 1, width])],
        initializer=[numpy_helper.from_array(table.astype(np.float32), "TABLE")],
    )
    return _save(graph, path)


def write_config(model_dir: Path, text: str) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text)


def slow(path: Path, width: int = 512, depth: int = 16) -> Path:
    """Y = X @ W @ W ... (depth times): its run time grows with the rows the caller sends."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes, previous = [], "X"
    for i in range(depth):
        out = "Y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, "W"], [out]))
        previous = out
    graph = helper.make_graph(
        nodes,
        "slow",
        [_vi("X", TensorProto.FLOAT, ["batch", width])],
        [_vi("Y", TensorProto.FLOAT, ["batch", width])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    return _save(graph, path)
