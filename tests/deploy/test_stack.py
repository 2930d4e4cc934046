"""The real parts: two replica processes behind nginx (3:2) and Prometheus scraping them, on loopback ports.

Skipped where nginx or prometheus is not installed (CI installs the Debian packages; a laptop may not have them).
"""

import contextlib
import os
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from cookbook import deploy
from cookbook.deploy import model_service_pb2 as pb
from cookbook.deploy import model_service_pb2_grpc as pb_grpc


def _missing():
    out = []
    for binary in ("nginx", "prometheus"):
        try:
            deploy.require(binary)
        except FileNotFoundError as err:
            out.append(str(err))
    return out


needs_binaries = pytest.mark.skipif(bool(_missing()), reason="; ".join(_missing()) or "ok")
OK = (("status", "OK"),)


@pytest.fixture(scope="module")
def stack(moe, tok, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stack")
    model_dir = deploy.save_for_serving(moe, tok, folder / "model")
    with deploy.Stack.start(model_dir, folder / "run", weights=(3, 2), scrape_interval_s=0.5,
                            config={"model_name": "tiny", "batch_wait_ms": 2}) as stack:
        yield stack
    assert not any(p.alive() for p in stack.processes())


def _served(replica):
    return deploy.scrape(replica.metrics_url).get(("inference_requests_total", OK), 0.0)


def test_nginx_config_has_the_guides_weights_and_passive_health_checks(tmp_path):
    text = deploy.nginx_config([("127.0.0.1:1001", 3), ("127.0.0.1:1002", 2)], 8080, tmp_path, max_fails=2)
    assert "server 127.0.0.1:1001 weight=3 max_fails=2 fail_timeout=10s;" in text
    assert "server 127.0.0.1:1002 weight=2 max_fails=2 fail_timeout=10s;" in text
    assert "listen 127.0.0.1:8080 http2;" in text and "grpc_pass grpc://model_service;" in text
    assert "client_max_body_size 0;" in text  # the replica, not nginx, decides what is too large
    with pytest.raises(ValueError, match="weight must be a positive int, got 0"):
        deploy.nginx_config([("127.0.0.1:1001", 0)], 8080, tmp_path)


def test_missing_binary_says_how_to_install(monkeypatch):
    monkeypatch.setenv("COOKBOOK_HIDE_TOOLS", "chromium,nginx")  # as CI's stage without the optional programs
    with pytest.raises(FileNotFoundError, match=r"nginx is not installed \(needed by notebook 12's load balancer\): "
                                                r"sudo apt-get install nginx · brew install nginx · conda install"):
        deploy.require("nginx")
    with pytest.raises(ValueError, match="unknown optional tool 'no-such-server'; valid: nginx, prometheus, chromium"):
        deploy.require("no-such-server")


@needs_binaries
def test_weighted_round_robin_is_three_to_two(stack):
    before = [_served(r) for r in stack.replicas]
    for i in range(25):
        assert deploy.predict(stack.nginx.address, f"x = {i}", 2).model == "tiny"
    after = [_served(r) for r in stack.replicas]
    assert [a - b for a, b in zip(after, before, strict=True)] == [15, 10]


@needs_binaries
def test_guides_p99_query_through_prometheus_matches_the_servers_own_latencies(stack):
    result = deploy.load_test(stack.nginx.address, concurrency=4, requests=40, max_tokens=3)
    assert result.ok == 40 and result.errors == {}
    time.sleep(1.5)  # three scrapes
    guide = stack.prometheus.query("histogram_quantile(0.99, rate(inference_latency_seconds_bucket[5m]))")
    assert len(guide) == 2  # one p99 per replica (instance label), as the guide's query is written
    [overall] = stack.prometheus.query(
        "histogram_quantile(0.99, sum by (le) (rate(inference_latency_seconds_bucket[5m])))")
    # the exact p99 of the same measurements, from the audit logs: Prometheus interpolates inside its bucket
    frames = [deploy.read_audit(r.audit) for r in stack.replicas]
    seconds = np.concatenate([f.loc[f.status == "OK", "latency_ms"].to_numpy() / 1000 for f in frames])
    exact = float(np.quantile(seconds, 0.99))
    edges = (0.0, *deploy.LATENCY_BUCKETS)
    k = next(i for i, edge in enumerate(edges) if exact <= edge)
    assert edges[max(k - 2, 0)] <= overall["value"] <= edges[min(k + 1, len(edges) - 1)], (exact, overall)
    # the client's p99 adds nginx and the network stack to the server's: printed, not asserted (a measured latency)
    print(f"p99: client {result.p99_ms:.1f} ms, server (audit) {1000 * exact:.1f} ms, Prometheus "
          f"{1000 * overall['value']:.1f} ms")


@needs_binaries
@pytest.mark.parametrize("size", [200 * 1024, 300 * 1024, 2 * 1024 * 1024])
def test_through_nginx_every_size_gets_the_services_own_status(stack, size):
    # the replicas accept messages up to ServiceConfig.max_request_bytes (256 KiB); nginx must neither refuse a
    # larger one itself (HTTP 413 -> UNKNOWN) nor change what the service answers
    limit = deploy.ServiceConfig().max_request_bytes
    with grpc.insecure_channel(stack.nginx.address) as channel:
        stub = pb_grpc.ModelServiceStub(channel)
        request = pb.PredictRequest(prompt="x" * size, max_tokens=1)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=30)
    expected = grpc.StatusCode.RESOURCE_EXHAUSTED if size > limit else grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.code() == expected, info.value.details()  # under the limit: a too-long prompt, named


@needs_binaries
def test_killed_replica_under_load_nothing_hangs_and_nginx_routes_around(stack):
    box = {}
    worker = threading.Thread(target=lambda: box.update(result=deploy.load_test(
        stack.nginx.address, concurrency=4, requests=60, max_tokens=3, timeout_s=10)))
    worker.start()
    time.sleep(0.5)
    stack.replicas[0].process.kill()  # SIGKILL: a crash, not a graceful stop
    worker.join(timeout=60)
    assert not worker.is_alive(), "the load test hung after a replica died"
    result = box["result"]
    assert result.sent == 60 and result.ok + sum(result.errors.values()) == 60
    assert sum(result.errors.values()) <= 4  # at most the requests in flight on the dead replica
    before = _served(stack.replicas[1])
    for i in range(5):
        deploy.predict(stack.nginx.address, f"y = {i}", 2, timeout_s=10)
    assert _served(stack.replicas[1]) == before + 5


@needs_binaries
def test_stop_ends_every_process_by_pid(stack):
    pids = [p.pid for p in stack.processes()]
    codes = stack.stop()
    assert set(codes) == {"replica0", "replica1", "nginx", "prometheus"}
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


class _Echo(pb_grpc.ModelServiceServicer):
    """A stand-in upstream: answers with its own name, so the test sees which one nginx chose."""

    def __init__(self, name):
        self.name = name

    def Predict(self, request, context):
        return pb.PredictResponse(text=f"{self.name}:{request.prompt}", completion_tokens=request.max_tokens)


@contextlib.contextmanager
def _echo_servers(names):
    """{name: loopback address} of one `_Echo` gRPC server per name, stopped on the way out."""
    servers, addresses = [], {}
    try:
        for name in names:
            server = grpc.server(futures.ThreadPoolExecutor(2))
            pb_grpc.add_ModelServiceServicer_to_server(_Echo(name), server)
            addresses[name] = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
            server.start()
            servers.append(server)
        yield addresses
    finally:
        for server in servers:
            server.stop(None)


@needs_binaries
def test_start_nginx_by_itself_proxies_grpc_by_weight(tmp_path):
    with _echo_servers(["a", "b"]) as addresses:
        upstreams = [(addresses["a"], 2), (addresses["b"], 1)]
        nginx = deploy.start_nginx(upstreams, tmp_path)
        try:
            assert nginx.config.read_text() == deploy.nginx_config(upstreams, nginx.port, tmp_path)
            with grpc.insecure_channel(nginx.address) as channel:
                stub = pb_grpc.ModelServiceStub(channel)
                texts = [stub.Predict(pb.PredictRequest(prompt="hi", max_tokens=3), timeout=10).text
                         for _ in range(6)]
            assert sorted(texts) == ["a:hi"] * 4 + ["b:hi"] * 2  # smooth weighted round robin: exactly 2:1
        finally:
            assert nginx.process.stop() == 0


@needs_binaries
def test_start_prometheus_by_itself_scrapes_its_targets(tmp_path):
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    registry = CollectorRegistry()
    Counter("served", "requests served", ["code"], registry=registry).labels(code="OK").inc(7)
    port = deploy.free_port()
    http, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    server = deploy.start_prometheus([f"127.0.0.1:{port}"], tmp_path / "prom", scrape_interval_s=0.2)
    try:
        assert server.targets_up() == 1
        (row,) = server.query("served_total")
        assert row["value"] == 7.0 and row["metric"]["code"] == "OK" and row["metric"]["job"] == "model_service"
        assert server.query("served_total{code='missing'}") == []
    finally:
        server.process.stop()
        http.shutdown()
        thread.join()


def test_spawn_replica_pins_its_cores_at_once_and_its_death_names_the_cause(tmp_path):
    starting = deploy.spawn_replica(tmp_path / "no-model", tmp_path / "run", name="r0", cpus=[0])
    assert os.sched_getaffinity(starting.process.pid) == {0}
    assert starting.audit == tmp_path / "run" / "r0.audit.jsonl"
    with pytest.raises(RuntimeError, match=r"(?s)r0 exited with code [1-9]\d* before serving:.*no-model"):
        starting.wait(timeout=120)
    assert not starting.ready.exists()


def test_load_sweep_runs_every_target_at_every_concurrency():
    with _echo_servers(["a", "b"]) as addresses:
        table = deploy.load_sweep({f"setup {n}": a for n, a in addresses.items()}, [1, 3], requests=7, max_tokens=2)
    assert table[["setup", "concurrency", "sent", "ok"]].values.tolist() == [
        ["setup a", 1, 7, 7], ["setup a", 3, 7, 7], ["setup b", 1, 7, 7], ["setup b", 3, 7, 7]]
    assert "target" not in table and "latencies_ms" not in table
    assert (table["errors"].map(len) == 0).all()
    assert table["qps"].tolist() == pytest.approx((table["ok"] / table["seconds"]).tolist())
    assert (table["p50_ms"] <= table["p99_ms"]).all()
