"""Prometheus metrics: what /metrics says after real traffic, and a real Prometheus server
answering "p99 latency of digits version 2 over the last minute" from scraping the gateway."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.support.models import plus_constant, write_config
from tests.support.server import RunningGateway

WIDTH = 4


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("metrics") / "repository"
    write_config(
        root / "digits",
        "max_batch_size: 8\nversion_policy { all { } }\n"
        "dynamic_batching { max_queue_delay_microseconds: 2000 }\n",
    )
    for version in (1, 2):
        plus_constant(root / "digits" / str(version) / "model.onnx", float(version), WIDTH)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not onnx")
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningGateway]:
    running = RunningGateway(repository, exit_on_error=False, metrics_port=0)
    yield running
    running.stop()


def scrape(address: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


def send(server: RunningGateway, version: str, count: int, rows: int = 1) -> None:
    for module, url in ((httpclient, server.http_url), (grpcclient, server.grpc_url)):
        client = module.InferenceServerClient(url)
        x = module.InferInput("X", [rows, WIDTH], "FP32")
        x.set_data_from_numpy(np.zeros((rows, WIDTH), np.float32))
        for _ in range(count):
            client.infer("digits", [x], model_version=version)
        client.close()


def test_requests_batches_and_failures_are_counted_per_version_and_protocol(
    server: RunningGateway,
) -> None:
    before = scrape(server.http_url)
    send(server, "2", 5)
    send(server, "1", 2, rows=3)
    client = httpclient.InferenceServerClient(server.http_url)
    x = httpclient.InferInput("X", [9, WIDTH], "FP32")  # over max_batch_size 8
    x.set_data_from_numpy(np.zeros((9, WIDTH), np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("digits", [x], model_version="2")
    client.close()
    after = scrape(server.http_url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"model": "digits", "role": "primary", "code": "ok"}
    assert grew("gateway_requests_total", version="2", protocol="http", **ok) == 5
    assert grew("gateway_requests_total", version="2", protocol="grpc", **ok) == 5
    assert grew("gateway_requests_total", version="1", **ok) == 4
    assert grew("gateway_request_duration_seconds_count", version="2", **ok) == 10
    assert grew("gateway_request_duration_seconds_sum", version="2", **ok) > 0
    assert grew("gateway_queue_duration_seconds_count", version="2") == 10
    assert grew("gateway_compute_duration_seconds_count", version="1") == 4
    assert grew("gateway_batch_size_sum", model="digits", version="1") == 12  # 4 x 3 rows
    failed = {"model": "digits", "version": "2", "role": "primary"}
    assert grew("gateway_requests_total", code="invalid_argument", **failed) == 1
    assert grew("gateway_request_failures_total", reason="invalid_argument", **failed) == 1
    # Every duration histogram has buckets from 0.1 ms to 30 s.
    edges = {
        labels["le"]
        for labels, _ in after["gateway_request_duration_seconds_bucket"]
        if labels["version"] == "2"
    }
    assert {"0.0001", "0.001", "1.0", "30.0", "+Inf"} <= edges


def test_requests_refused_before_a_version_is_chosen_are_counted(server: RunningGateway) -> None:
    """'broken' has no ready version: an outage must show in the failure metrics. Names the
    gateway does not know all count as one model, ''."""
    before = scrape(server.http_url)
    client = httpclient.InferenceServerClient(server.http_url)
    x = httpclient.InferInput("X", [1, WIDTH], "FP32")
    x.set_data_from_numpy(np.zeros((1, WIDTH), np.float32))
    for model, version in [("broken", ""), ("digits", "no-such-label")] + [
        (f"nope-{i}", "") for i in range(5)
    ]:
        with pytest.raises(InferenceServerException):
            client.infer(model, [x], model_version=version)
    client.close()
    after = scrape(server.http_url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    unversioned = {"version": "", "role": "primary"}
    assert grew("gateway_request_failures_total", model="broken", **unversioned) == 1
    assert grew("gateway_requests_total", model="digits", code="not_found", **unversioned) == 1
    assert grew("gateway_requests_total", model="", code="not_found", protocol="http") == 5
    models = {labels.get("model", "") for series in after.values() for labels, _ in series}
    assert not any(model.startswith("nope") for model in models)


def test_state_gauges_and_load_failures(server: RunningGateway) -> None:
    samples = scrape(server.http_url)
    assert value(samples, "gateway_model_state", model="digits", version="2", state="READY") == 1
    assert value(samples, "gateway_model_state", model="digits", version="2", state="FAILED") == 0
    assert value(samples, "gateway_model_state", model="broken", version="1", state="FAILED") == 1
    assert value(samples, "gateway_model_load_failures_total", model="broken") == 1
    assert value(samples, "gateway_traffic_weight", model="digits", version="2") == 100
    assert value(samples, "gateway_traffic_weight", model="digits", version="1") == 0
    assert ({"model": "digits", "version": "1"}, 0.0) in samples["gateway_queue_depth"]


def test_metrics_port_serves_the_same_registry(server: RunningGateway) -> None:
    port = server.gateway.metrics_port
    assert port
    samples = scrape(f"127.0.0.1:{port}")
    assert "gateway_requests_total" in samples
    # Only /metrics there: no inference, no admin.
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10)
    assert caught.value.code == 404
    caught.value.close()


def test_openmetrics_is_served_when_asked_for(server: RunningGateway) -> None:
    request = urllib.request.Request(
        f"http://{server.http_url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().decode().rstrip().endswith("# EOF")


# -- a real Prometheus ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def query(prometheus: str, expression: str) -> list[dict[str, object]]:
    url = f"http://{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=10) as response:
        document = json.loads(response.read())
    assert document["status"] == "success", document
    result: list[dict[str, object]] = document["data"]["result"]
    return result


@pytest.fixture
def prometheus(server: RunningGateway, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "the prometheus binary is not installed (make test installs Debian's 'prometheus' "
            "package where apt-get can; here it could not)"
        )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: gateway\n"
        f"    static_configs: [{{targets: ['{server.http_url}']}}]\n"
    )
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={address}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/-/ready", timeout=2):
                    break
            except OSError:
                assert process.poll() is None, "prometheus exited at start"
                assert time.monotonic() < deadline, "prometheus did not become ready"
                time.sleep(0.2)
        yield address
    finally:
        process.terminate()
        process.wait(10)


def test_prometheus_answers_p99_latency_of_digits_version_2(
    server: RunningGateway, prometheus: str
) -> None:
    p99 = (
        "histogram_quantile(0.99, sum by (le) (rate("
        'gateway_request_duration_seconds_bucket{model="digits",version="2"}[1m])))'
    )
    deadline = time.monotonic() + 45
    while True:  # traffic between scrapes, until two scrapes have seen it grow
        send(server, "2", 10)
        result = query(prometheus, p99)
        if result and result[0]["value"][1] not in ("NaN", "+Inf"):  # type: ignore[index]
            break
        assert time.monotonic() < deadline, f"no p99 from Prometheus: {result}"
        time.sleep(0.5)
    seconds = float(result[0]["value"][1])  # type: ignore[index]
    assert 0 < seconds <= 30.0
    # The same histogram answers per protocol, and the counter agrees with the traffic.
    by_protocol = query(
        prometheus, 'sum by (protocol) (gateway_requests_total{model="digits",version="2"})'
    )
    assert {r["metric"]["protocol"] for r in by_protocol} == {"grpc", "http"}  # type: ignore[index]


# -- gateway stats -----------------------------------------------------------------------------
def test_gateway_stats_shows_each_version_over_the_last_interval(
    server: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading

    from gateway.app import cli

    stop = threading.Event()

    def traffic() -> None:
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            send(server, "2", 5)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        url = f"http://{server.http_url}"
        assert cli.main(["stats", "--url", url, "--interval", "0.5", "--json"]) == 0
        rows = {(r["model"], r["version"]): r for r in json.loads(capsys.readouterr().out)}
        assert cli.main(["stats", "digits", "--url", url, "--interval", "0.5"]) == 0
        table = capsys.readouterr().out
    finally:
        stop.set()
        sender.join(30)
    busy = rows[("digits", "2")]
    assert busy["state"] == "READY" and busy["weight"] == 100
    assert busy["requests_per_s"] > 0 and 0 < busy["p50_ms"] <= busy["p99_ms"]
    assert busy["mean_batch"] >= 1 and busy["error_rate"] == 0
    assert rows[("broken", "1")]["state"] == "FAILED"
    header, *lines = table.splitlines()
    assert header.split()[:3] == ["MODEL", "VERSION", "STATE"]
    versions = {line.split()[1] for line in lines}  # only digits ('-': refused unversioned)
    assert versions - {"-"} == {"1", "2"}


def test_gateway_stats_says_when_it_cannot_reach_the_gateway(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gateway.app import cli

    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["stats", "--url", url, "--interval", "0.1", "--timeout", "2"]) == 2
    assert f"cannot read {url}/metrics" in capsys.readouterr().err


def test_quantiles_follow_prometheus_histogram_quantile() -> None:
    from gateway.app.stats_view import quantile

    buckets = {0.001: 50.0, 0.01: 90.0, 0.1: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.001)
    assert quantile(0.7, buckets) == pytest.approx(0.001 + 0.009 * 0.5)
    assert quantile(0.99, buckets) == pytest.approx(0.01 + 0.09 * 0.9)
    assert quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.99, {0.1: 1.0, float("inf"): 10.0}) == 0.1  # in +Inf: highest finite


def test_feedback_and_accuracy_are_metrics(server: RunningGateway) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    x = httpclient.InferInput("X", [1, WIDTH], "FP32")
    x.set_data_from_numpy(np.zeros((1, WIDTH), np.float32))  # all outputs equal: argmax 0
    for request_id in ("m-1", "m-2"):
        client.infer("digits", [x], model_version="1", request_id=request_id)
    client.close()
    for request_id, label in (("m-1", 0), ("m-2", 1), ("m-unknown", 0)):
        request = urllib.request.Request(
            f"http://{server.http_url}/v2/models/digits/feedback",
            data=json.dumps({"id": request_id, "label": label}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10):
            pass
    samples = scrape(server.http_url)
    key = {"model": "digits", "version": "1"}
    assert value(samples, "gateway_feedback_total", outcome="joined", **key) == 2
    assert value(samples, "gateway_feedback_total", outcome="unknown_id", model="digits") == 1
    assert value(samples, "gateway_accuracy_ratio", **key) == 0.5
    assert value(samples, "gateway_accuracy_total_ratio", **key) == 0.5


def test_the_grafana_dashboard_only_queries_metrics_the_gateway_exports(
    server: RunningGateway,
) -> None:
    import re

    dashboard = json.loads(
        (Path(__file__).parents[2] / "deploy" / "grafana" / "gateway-dashboard.json").read_text()
    )
    with urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=10) as response:
        families = list(text_string_to_metric_families(response.read().decode()))
    exported = set()
    for family in families:
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
        }.get(family.type, ("",))
        exported |= {family.name + suffix for suffix in suffixes}
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for e in expressions for name in re.findall(r"\bgateway_[a-z_]+", e)}
    assert used and used <= exported, used - exported


def test_metrics_can_be_switched_off(repository: Path) -> None:
    running = RunningGateway(repository, exit_on_error=False, metrics=False)
    try:
        assert running.gateway.telemetry.observers == ()
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"http://{running.http_url}/metrics", timeout=10)
        assert caught.value.code == 404
        caught.value.close()
    finally:
        running.stop()
