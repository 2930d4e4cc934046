"""deploy.profile: py-spy's raw samples read by hand, and one real replica profiled from outside under load."""

import re
import subprocess
import sys
import time

import pytest

from cookbook import deploy

# py-spy's `--threads --format raw` lines: "thread (id): name;outermost frame;…;innermost frame count"
BOOT = "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982)"
RAW = f"""\
thread (11): model;{BOOT};_Batcher._run (service.py:157);_Batcher._serve (service.py:172);generate (generate.py:60);forward (m.py:9) 70
thread (11): model;{BOOT};_Batcher._run (service.py:157);_Batcher._collect (service.py:140);Queue.get (queue.py:180) 10
thread (11): model;{BOOT};_Batcher._run (service.py:154);Queue.get (queue.py:171);Condition.wait (threading.py:331) 15
thread (11): model;{BOOT};_Batcher._run (service.py:157);_Batcher._serve (service.py:180) 4
thread (11): model;{BOOT};_Batcher._run (service.py:158) 1

thread (12): ThreadPoolExecutor-0_0;{BOOT};ModelServer._predict (service.py:290);Event.wait (threading.py:629) 90
thread (13): ThreadPoolExecutor-0_1;{BOOT};ModelServer._predict (service.py:280);validate (service.py:60);len (x.py:1) 6
thread (13): ThreadPoolExecutor-0_1;{BOOT};ModelServer._predict (service.py:299) 4
thread (1): MainThread;<module> (replica.py:60);Event.wait (threading.py:629) 500
"""


def test_thread_samples_reads_each_threads_state_by_hand():
    model, handlers = deploy.thread_samples(RAW)
    assert model == {"generating": 70, "collecting a micro-batch": 10, "waiting for a request": 15,
                     "handing answers back": 4, "other": 1}
    assert handlers == {deploy.WAITING_FOR_MODEL: 90, "validate": 6, "_predict itself": 4}  # not MainThread's wait
    assert deploy.thread_samples("") == ({}, {})


def test_thread_samples_reads_python_3_10_frames_without_class_names_and_full_paths_alike():
    # before 3.11 py-spy shows bare function names (no co_qualname); files may come as full paths
    older = re.sub(r"(?<=;)\w+\.(\w+ \()", r"\1", RAW).replace("(service.py", "(/srv/cookbook/deploy/service.py")
    assert "Queue.get" not in older and "(/srv/cookbook/deploy/service.py:" in older and "_Batcher" not in older
    assert deploy.thread_samples(older) == deploy.thread_samples(RAW)


def test_replica_profile_shares_and_time_per_generation():
    model, handlers = deploy.thread_samples(RAW)
    load = deploy.LoadResult("x", 4, 100, 100, {}, 2.0, 50.0, 1.0, 2.0, None)
    prof = deploy.ReplicaProfile(model, handlers, batches=20, requests=70, load=load)
    shares = prof.model_shares()
    assert list(shares) == ["generating", "waiting for a request", "collecting a micro-batch",
                            "handing answers back", "other"]
    assert shares["generating"] == 0.7 and sum(shares.values()) == pytest.approx(1.0)
    assert prof.handlers_waiting == 0.9 and prof.mean_batch == 3.5
    assert prof.ms_per_generation == pytest.approx(1000 * 0.7 * 2.0 / 20)  # 70 ms of each batch's wall time


def test_profile_replica_bad_arguments_and_a_missing_py_spy(monkeypatch):
    with pytest.raises(ValueError, match="seconds"):
        deploy.profile_replica(None, concurrency=1, max_tokens=1, seconds=0)
    with pytest.raises(ValueError, match="rate"):
        deploy.profile_replica(None, concurrency=1, max_tokens=1, rate=0)
    monkeypatch.setattr("cookbook.deploy.profile.py_spy", lambda: None)
    with pytest.raises(RuntimeError, match=r"serve extra"):
        deploy.profile_replica(None, concurrency=1, max_tokens=1)


def _py_spy_can_attach() -> bool:
    """Whether py-spy may read another Python process here (ptrace rights: root, or kernel.yama.ptrace_scope 0)."""
    if deploy.py_spy() is None:
        return False
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as sleeper:
        try:
            time.sleep(0.3)  # let the interpreter start, so there is a Python stack to read
            return subprocess.run([deploy.py_spy(), "dump", "--pid", str(sleeper.pid)], capture_output=True,
                                  timeout=30).returncode == 0
        finally:
            sleeper.kill()


@pytest.mark.skipif(not _py_spy_can_attach(), reason="py-spy cannot attach here: not installed, or no ptrace rights")
def test_a_live_replica_under_load(moe, tok, tmp_path):
    model_dir = deploy.save_for_serving(moe, tok, tmp_path / "model")
    replica = deploy.start_replica(model_dir, tmp_path / "run", config={"model_name": "tiny", "batch_wait_ms": 2})
    try:
        prof = deploy.profile_replica(replica, concurrency=4, max_tokens=4, seconds=1, rate=200,
                                      output=tmp_path / "raw.txt")
    finally:
        replica.process.stop()
    assert (tmp_path / "raw.txt").is_file()
    assert prof.load.ok > 0 and not prof.load.errors
    assert prof.batches > 0 and 1 <= prof.mean_batch <= 4  # at most one request per client in a batch
    assert prof.model_samples.get("generating", 0) > 0 and sum(prof.handler_samples.values()) > 0
    # about one sample per tick for the model thread: 200 Hz for 1 s (py-spy may miss a few ticks under load)
    assert 100 <= sum(prof.model_samples.values()) <= 220


def test_batch_counts_sums_the_batch_histogram_over_replicas():
    import types

    from prometheus_client import CollectorRegistry, Histogram, start_http_server

    replicas, servers = [], []
    for sizes in ((1, 4, 4), (2,), ()):  # the last replica has batched nothing yet
        registry = CollectorRegistry()
        histogram = Histogram("inference_batch_size", "requests per batch", buckets=(1, 2, 4, 8), registry=registry)
        for size in sizes:
            histogram.observe(size)
        port = deploy.free_port()
        servers.append(start_http_server(port, addr="127.0.0.1", registry=registry))
        replicas.append(types.SimpleNamespace(metrics_url=f"http://127.0.0.1:{port}/metrics"))
    try:
        assert deploy.batch_counts(replicas) == (4, 11)
        assert deploy.batch_counts([]) == (0, 0)
    finally:
        for http, thread in servers:
            http.shutdown()
            thread.join()
