"""Pinned subprocesses: one-shot jobs (baseline, load) and servers read from their log."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BENCH_SCRIPT = ROOT / "loadtest" / "bench.py"
STOP_TIMEOUT_S = 30.0


def bench_command(core: int, mode: str, *extra: str) -> list[str]:
    """`bench.py <mode>` with this interpreter, pinned to `core`."""
    return ["taskset", "-c", str(core), sys.executable, str(BENCH_SCRIPT), mode, *extra]


def run_pinned(core: int, mode: str, job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run `bench.py <mode>` pinned to `core` with the job on stdin; its stdout is the result."""
    done = subprocess.run(
        bench_command(core, mode),
        input=json.dumps(job).encode(),
        capture_output=True,
        timeout=timeout_s,
        cwd=ROOT,
    )
    sys.stderr.write(done.stderr.decode(errors="replace"))
    if done.returncode != 0:
        raise SystemExit(f"bench: {mode} failed with exit status {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A server under test: its process, where it listens (0: not that protocol), its log."""

    name: str
    process: subprocess.Popen[bytes]
    host: str
    http_port: int
    grpc_port: int
    log_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.http_port}{path}"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise SystemExit(
                f"bench: {self.name} exited with status {self.process.returncode} during the "
                f"run (see {self.log_file}):\n{log_tail(self.log_file)}"
            )


def log_tail(log_file: Path, lines: int = 20) -> str:
    return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])


def wait_for_line(
    process: subprocess.Popen[bytes], log_file: Path, pattern: re.Pattern[str], timeout_s: float
) -> re.Match[str]:
    """Read a server's log until `pattern` appears (where it listens), within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = pattern.search(log_file.read_text(errors="replace"))
        if match:
            return match
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"bench: the server did not start (see {log_file}):\n{log_tail(log_file)}")


@contextlib.contextmanager
def started(
    command: Sequence[str],
    log_file: Path,
    pattern: re.Pattern[str],
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
) -> Iterator[tuple[subprocess.Popen[bytes], re.Match[str]]]:
    """Start a server with its output in `log_file`; yield once its log matches `pattern`.
    `env`: its whole environment (default: this process's); `cwd`: where it runs.

    It is stopped with SIGTERM (then SIGKILL after STOP_TIMEOUT_S) when the block ends.
    """
    with log_file.open("wb") as sink:
        process = subprocess.Popen(command, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        yield process, wait_for_line(process, log_file, pattern, timeout_s)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def get_json(server: RunningServer, path: str) -> Any:
    with urllib.request.urlopen(server.url(path), timeout=10) as answer:
        return json.loads(answer.read())


def wait_until_ready(server: RunningServer, timeout_s: float) -> None:
    """Poll `/v2/health/ready` until it answers 200, within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(server.url("/v2/health/ready"), timeout=2) as answer,
        ):
            if answer.status == 200:
                return
        server.check_alive()
        time.sleep(0.1)
    raise SystemExit(f"bench: {server.name} was not ready within {timeout_s} s")


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], capture_output=True, cwd=ROOT, check=True).stdout


def git_revision() -> str:
    """HEAD, plus a digest of uncommitted changes (untracked files included) if there are any."""
    try:
        head = _git("rev-parse", "--short", "HEAD").decode().strip()
        digest = hashlib.sha256(_git("diff", "HEAD"))
        for name in sorted(_git("ls-files", "--others", "--exclude-standard", "-z").split(b"\0")):
            if name and (ROOT / name.decode()).is_file():
                digest.update(name + (ROOT / name.decode()).read_bytes())
        changed = bool(_git("status", "--porcelain").strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (f" + uncommitted changes {digest.hexdigest()[:10]}" if changed else "")
