"""Tests for models/build_repository.py: the demo model repository it builds."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "models" / "build_repository.py"

EXPECTED_FILES = {
    "digits/config.pbtxt",
    "digits/test_split.npz",
    "digits/1/model.onnx",
    "digits/2/model.onnx",
    "mlp/config.pbtxt",
    "mlp/1/model.onnx",
}


def _build(output: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(output), "--skip-wide"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"build failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


Signature = dict[str, tuple[str, int]]


def _io(sess: ort.InferenceSession) -> tuple[Signature, Signature]:
    """Name -> (type, rank) for inputs and outputs."""
    return (
        {a.name: (a.type, len(a.shape)) for a in sess.get_inputs()},
        {a.name: (a.type, len(a.shape)) for a in sess.get_outputs()},
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("build") / "repository"
    stdout = _build(out)
    return out, stdout


@pytest.fixture(scope="module")
def repo(built: tuple[Path, str]) -> Path:
    return built[0]


def test_layout(repo: Path) -> None:
    assert set(_hashes(repo)) == EXPECTED_FILES
    # The staging directory was renamed into place, nothing left beside it.
    assert [p.name for p in repo.parent.iterdir()] == ["repository"]


def test_configs(repo: Path) -> None:
    digits = (repo / "digits" / "config.pbtxt").read_text()
    assert 'name: "digits"' in digits
    assert 'platform: "onnxruntime_onnx"' in digits
    assert "max_batch_size: 64" in digits
    assert "version_policy: { all { } }" in digits
    assert "max_queue_delay_microseconds: 0" in digits
    assert "kind: KIND_CPU" in digits
    assert "input [" not in digits and "output [" not in digits

    mlp = (repo / "mlp" / "config.pbtxt").read_text()
    assert 'name: "mlp"' in mlp
    assert "max_batch_size: 128" in mlp
    assert "data_type: TYPE_FP32" in mlp
    assert "dims: [ 784 ]" in mlp and "dims: [ 10 ]" in mlp
    assert "max_queue_delay_microseconds: 0" in mlp


@pytest.mark.parametrize("version", [1, 2])
def test_digits_model_io(repo: Path, version: int) -> None:
    sess = _session(repo / "digits" / str(version) / "model.onnx")
    inputs, outputs = _io(sess)
    assert inputs == {"input": ("tensor(float)", 2)}
    assert outputs == {"label": ("tensor(int64)", 1), "probabilities": ("tensor(float)", 2)}
    assert sess.get_inputs()[0].shape[1] == 64
    assert sess.get_outputs()[1].shape[1] == 10


def test_digits_accuracy_and_disagreement(built: tuple[Path, str]) -> None:
    repo, stdout = built
    with np.load(repo / "digits" / "test_split.npz") as split:
        x, y = split["X"], split["y"]
    assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 64
    assert y.dtype == np.int64 and y.shape == (x.shape[0],)
    assert x.min() >= 0.0 and x.max() <= 16.0  # raw pixel values, scaling is inside the model

    labels = {}
    accuracy = {}
    for version in (1, 2):
        sess = _session(repo / "digits" / str(version) / "model.onnx")
        label, proba = sess.run(["label", "probabilities"], {"input": x})
        assert label.shape == y.shape and proba.shape == (len(y), 10)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-4)
        np.testing.assert_array_equal(label, proba.argmax(axis=1))
        labels[version] = label
        accuracy[version] = float((label == y).mean())

    assert accuracy[1] > 0.9
    assert accuracy[2] > 0.9
    assert accuracy[2] > accuracy[1]
    disagreements = int((labels[1] != labels[2]).sum())
    assert disagreements >= 1
    assert f"disagree on {disagreements} of {len(y)}" in stdout


def test_mlp_output(repo: Path) -> None:
    sess = _session(repo / "mlp" / "1" / "model.onnx")
    assert [(a.name, a.type, a.shape) for a in sess.get_inputs()] == [
        ("input", "tensor(float)", ["batch", 784])
    ]
    assert [(a.name, a.type, a.shape) for a in sess.get_outputs()] == [
        ("logits", "tensor(float)", ["batch", 10])
    ]
    x = np.linspace(0.0, 1.0, 3 * 784, dtype=np.float32).reshape(3, 784)
    (logits,) = sess.run(["logits"], {"input": x})
    assert logits.shape == (3, 10)
    assert np.isfinite(logits).all()
    assert np.abs(logits).max() > 0


def test_rebuild_is_byte_identical_and_replaces_old_contents(repo: Path, tmp_path: Path) -> None:
    second = tmp_path / "repository"
    stale = second / "stale_model" / "config.pbtxt"
    stale.parent.mkdir(parents=True)
    stale.write_text('name: "stale_model"\n')

    _build(second)

    assert not stale.exists()
    assert _hashes(second) == _hashes(repo)
    assert [p.name for p in tmp_path.iterdir()] == ["repository"]


def test_a_dense_model_with_a_returning_wait_gets_a_config_the_gateway_reads(
    tmp_path: Path,
) -> None:
    """mlp_wide's config (not built here: ~80 MB) carries the gateway's returning wait."""
    import importlib.util

    from gateway.config.model_config import read_model_policy
    from gateway.core.batcher import batcher_config
    from gateway.core.model import ModelSignature, TensorSpec

    spec = importlib.util.spec_from_file_location("build_repository", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model_dir = tmp_path / "wide"
    module.build_dense(
        model_dir,
        (4, 3, 2),
        seed=0,
        max_batch_size=8,
        max_queue_delay_us=0,
        returning_wait_us=20_000,
    )
    policy = read_model_policy(model_dir)
    assert policy.parameters["returning_wait_microseconds"] == "20000"
    signature = ModelSignature(
        (TensorSpec("input", "FP32", (4,)),), (TensorSpec("logits", "FP32", (2,)),), 8
    )
    config = batcher_config(policy, signature, 1, 1024, 2**20)
    assert config.returning_wait_s == 0.02 and config.max_queue_delay_s == 0
