"""A Triton-layout model repository on the file system, as the lifecycle's ModelSource.

Layout: `<repo>/<model>/config.pbtxt` (optional), `<repo>/<model>/<N>/model.onnx`, and the
gateway's own `<repo>/<model>/labels.json`. Entries whose names start with '.' are never read,
so a version copied into `.3.tmp` and renamed to `3` appears in one step.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from gateway.config.model_config import (
    CONFIG_FILENAME,
    ModelConfigError,
    parse_model_config_json,
    read_model_policy,
)
from gateway.core.errors import NotFoundError
from gateway.core.model import LoadedVersion
from gateway.core.ports import ModelRunner, ModelSnapshot, SourceError
from gateway.core.registry import LABEL
from gateway.core.validation import check_model_name, is_valid_model_name, parse_version
from gateway.runtime.huge_pages import move_to_huge_pages
from gateway.runtime.onnx_runner import CPU, load_version
from gateway.runtime.warmup import warm_up

logger = logging.getLogger(__name__)

LABELS_FILENAME = "labels.json"
DOCUMENTS = {"traffic": "traffic.json", "rollout": "rollout.json"}
"""The gateway's own state files in a model's directory, by kind (never part of a version)."""
STATE_FILES = frozenset({LABELS_FILENAME, *DOCUMENTS.values()})
WARMUP_DIRECTORY = "warmup"


class FileRepository:
    """Reads models from one repository directory; every method blocks (load pool only)."""

    def __init__(
        self,
        root: Path,
        *,
        default_max_batch_size: int,
        default_intra_op_threads: int,
        default_concurrency: int,
        huge_pages: bool = True,
    ) -> None:
        self.root = root
        self._default_max_batch_size = default_max_batch_size
        self._default_intra_op_threads = default_intra_op_threads
        self._default_concurrency = default_concurrency
        self._huge_pages = huge_pages

    def model_names(self) -> list[str]:
        """SourceError if the repository is not a directory this process may list."""
        if not _is_dir(self.root):
            raise SourceError(f"model repository {self.root} is not a directory")
        try:
            return sorted(
                p.name
                for p in self.root.iterdir()
                if not p.name.startswith(".") and is_valid_model_name(p.name) and _is_dir(p)
            )
        except OSError as exc:  # e.g. a repository this process may not list
            raise SourceError(f"model repository {self.root} cannot be listed: {exc}") from exc

    def _model_dir(self, name: str) -> Path:
        check_model_name(name)  # never a path outside the repository
        return self.root / name

    def fingerprint(self, name: str) -> str | None:
        """A digest of every file's path, size and modification time under the model's
        directory (hidden entries and labels.json excepted); None if the model is gone."""
        model_dir = self._model_dir(name)
        if not _is_dir(model_dir):
            return None
        digest = hashlib.sha256()
        try:
            for path, stat in _walk(model_dir):
                if path in STATE_FILES:
                    continue
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError as exc:  # unreadable: a change to apply, which says why it fails
            return f"unreadable: {exc}"
        return digest.hexdigest()

    def read(self, name: str, config_json: str | None) -> ModelSnapshot:
        model_dir = self._model_dir(name)
        if not _is_dir(model_dir):
            raise NotFoundError(f"model '{name}' is not in the model repository")
        try:
            return self._read(model_dir, name, config_json)
        except OSError as exc:  # a directory or file this process may not read
            raise SourceError(f"{model_dir}: cannot be read: {exc}") from exc

    def _read(self, model_dir: Path, name: str, config_json: str | None) -> ModelSnapshot:
        if config_json is None:
            policy = read_model_policy(model_dir)
            config_text = _read_bytes(model_dir / CONFIG_FILENAME)
        else:
            policy = parse_model_config_json(config_json, name)
            config_text = config_json.encode()
        versions: dict[int, str] = {}
        for entry in model_dir.iterdir():
            number = _version_number(entry.name)
            if number is None or not entry.is_dir():
                continue
            if not (entry / policy.default_model_filename).is_file():
                continue
            digest = hashlib.sha256(config_text)
            for path, stat in _walk(entry):
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            for path, stat in _walk(model_dir / WARMUP_DIRECTORY):
                digest.update(f"w/{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            versions[number] = digest.hexdigest()
        documents = {
            kind: document
            for kind, filename in DOCUMENTS.items()
            if (document := _read_document(model_dir / filename)) is not None
        }
        return ModelSnapshot(name, policy, versions, self._read_labels(model_dir), documents)

    def load(self, snapshot: ModelSnapshot, version: int) -> tuple[LoadedVersion, ModelRunner]:
        policy = snapshot.policy
        model_dir = self._model_dir(snapshot.name)
        path = model_dir / str(version) / policy.default_model_filename
        loaded, runner = load_version(
            path,
            policy,
            version,
            default_max_batch_size=self._default_max_batch_size,
            default_intra_op_threads=self._default_intra_op_threads,
            default_concurrency=self._default_concurrency,
        )
        try:
            warm_up(loaded, runner, model_dir / WARMUP_DIRECTORY)
        except BaseException:
            runner.close()
            raise
        if self._huge_pages and loaded.providers[0] == CPU:  # weights and warmed-up arenas
            move_to_huge_pages(f"{snapshot.name}:{version}")
        return loaded, runner

    def save_labels(self, name: str, labels: Mapping[str, int]) -> None:
        """Write labels.json atomically (a temporary file renamed over it)."""
        _write_atomically(self._model_dir(name) / LABELS_FILENAME, dict(sorted(labels.items())))

    def save_document(self, name: str, kind: str, document: Mapping[str, Any] | None) -> None:
        path = self._model_dir(name) / DOCUMENTS[kind]
        if document is None:
            path.unlink(missing_ok=True)
        else:
            _write_atomically(path, document)

    @staticmethod
    def _read_labels(model_dir: Path) -> dict[str, int]:
        path = model_dir / LABELS_FILENAME
        if not path.is_file():
            return {}
        try:
            document = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ModelConfigError(f"{path}: cannot be read: {exc}") from exc
        valid = isinstance(document, dict) and all(
            isinstance(k, str) and LABEL.fullmatch(k) and type(v) is int and v > 0
            for k, v in document.items()
        )
        if not valid:
            raise ModelConfigError(
                f'{path}: expected a JSON object of label to version number, like {{"stable": 1}}'
            )
        return dict(document)


def _write_atomically(path: Path, document: Mapping[str, Any]) -> None:
    """Write JSON to a temporary file in the same directory, then rename it over `path`."""
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_document(path: Path) -> Any:
    """A persisted JSON state file, or None if there is none; SourceError if unreadable."""
    if not path.is_file():
        return None
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ModelConfigError(f"{path}: cannot be read: {exc}") from exc


def _version_number(name: str) -> int | None:
    """A version directory's number: 1 up to an int64, written as Triton writes it ('01' or
    '+1' name no version: the version would be opened as '1', another directory)."""
    number = parse_version(name)
    return number if number and str(number) == name else None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # Python 3.11 raises for some (permission denied on a parent, say)
        return False


def _walk(directory: Path) -> list[tuple[str, os.stat_result]]:
    """Every regular file under `directory` (relative path, stat), hidden entries skipped.
    A directory right under it that is a symbolic link (a version linked in from elsewhere)
    is walked too, so its changes are seen; links further down are not followed."""
    found: list[tuple[str, os.stat_result]] = []
    if not directory.is_dir():
        return found
    roots = [directory]
    roots += sorted(
        entry
        for entry in directory.iterdir()
        if not entry.name.startswith(".") and entry.is_symlink() and entry.is_dir()
    )
    for root in roots:
        for parent, directories, files in os.walk(root):
            directories[:] = sorted(d for d in directories if not d.startswith("."))
            for file in sorted(f for f in files if not f.startswith(".")):
                path = Path(parent) / file
                try:
                    stat = path.stat()
                except OSError:
                    continue  # removed while we looked: the next poll sees the change
                found.append((str(path.relative_to(directory)), stat))
    return found


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read: {exc}") from exc
