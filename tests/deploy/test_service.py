import concurrent.futures
import copy
import gc
import hashlib
import re
import threading
import time
import warnings

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cookbook import deploy
from cookbook.deploy import model_service_pb2 as pb
from cookbook.deploy import model_service_pb2_grpc as pb_grpc
from cookbook.deploy.service import _Batcher, _Job
from cookbook.deploy.stack import scrape

CONFIG = deploy.ServiceConfig(model_name="tiny-fp32", max_prompt_tokens=32, max_tokens_limit=16, batch_wait_ms=20)


@pytest.fixture(scope="module")
def server(moe, tok, tmp_path_factory):
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    with deploy.ModelServer(moe, tok, CONFIG, audit_path=audit) as server:
        yield server


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.ModelServiceStub(channel)


def _count(server, name, **labels):
    return scrape(f"http://127.0.0.1:{server.metrics_port}/metrics").get((name, tuple(sorted(labels.items()))), 0.0)


def test_predict_answers_what_generate_computes_and_audits_fingerprints(server, stub, moe, tok):
    prompt = "def add(a, b):"
    before = _count(server, "inference_requests_total", status="OK")
    response = stub.Predict(pb.PredictRequest(prompt=prompt, max_tokens=6))
    [reference] = deploy.generate(moe, [tok.encode(prompt, add_special_tokens=False)], [6], eos_id=tok.eos_token_id)
    assert response.text == tok.decode(reference.tokens)
    assert (response.completion_tokens, response.finish_reason, response.model) == (6, "length", "tiny-fp32")
    assert response.prompt_tokens == len(tok.encode(prompt, add_special_tokens=False))
    assert _count(server, "inference_requests_total", status="OK") == before + 1

    line = deploy.read_audit(server.audit.path).set_index("request_id").loc[response.request_id]
    assert line["prompt_sha256"] == "sha256:" + hashlib.sha256(prompt.encode()).hexdigest()
    assert line["output_sha256"] == "sha256:" + hashlib.sha256(response.text.encode()).hexdigest()
    assert line["status"] == "OK" and line["completion_tokens"] == 6
    assert "prompt" not in line.index  # no raw text unless configured
    assert abs(time.time() - line["ts"].timestamp()) < 60


@pytest.mark.parametrize("request_, message", [
    (pb.PredictRequest(prompt="", max_tokens=4), "prompt is empty"),
    (pb.PredictRequest(prompt="   ", max_tokens=4), "prompt is empty"),
    (pb.PredictRequest(prompt="x = 1", max_tokens=-3), "max_tokens must be in 1..16, got -3"),
    (pb.PredictRequest(prompt="x = 1"), "max_tokens must be in 1..16, got 0"),
    (pb.PredictRequest(prompt="x = 1", max_tokens=17), "max_tokens must be in 1..16, got 17"),
    (pb.PredictRequest(prompt="x = 1", max_tokens=4, temperature=-0.5), r"temperature must be in \[0, 2.0\].*got -0.5"),
    (pb.PredictRequest(prompt="x = 1", max_tokens=4, temperature=float("nan")), "got nan"),
    (pb.PredictRequest(prompt="x = 1\n" * 40, max_tokens=4), "prompt has 200 tokens; the limit is 32"),
])
def test_invalid_requests_get_invalid_argument_with_a_clear_message(server, stub, request_, message):
    before = _count(server, "inference_requests_total", status="INVALID_ARGUMENT")
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, info.value.details()), info.value.details()
    assert "Traceback" not in info.value.details()
    assert _count(server, "inference_requests_total", status="INVALID_ARGUMENT") == before + 1


@pytest.mark.parametrize("raw, message", [
    (b"\x0a\xff", "not a valid PredictRequest"),  # a length-delimited field that claims 255 bytes, has none
    (b"\x0a\x02\xc3\x28\x10\x04", "not a valid PredictRequest"),  # the prompt is not UTF-8
])
def test_malformed_messages_are_invalid_argument(server, raw, message):
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(f"/{deploy.SERVICE}/Predict")  # raw bytes: no client-side serialisation
        with pytest.raises(grpc.RpcError) as info:
            call(raw)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_an_oversized_message_is_refused_by_grpc(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(pb.PredictRequest(prompt="x" * (CONFIG.max_request_bytes + 1), max_tokens=1))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_health_service(server):
    with grpc.insecure_channel(server.address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for name in ("", deploy.SERVICE):
            assert check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_deadline(moe, tok):
    config = deploy.ServiceConfig(request_timeout_s=0.0)  # nothing can finish in no time
    with deploy.ModelServer(moe, tok, config, metrics_port=None) as server, \
            grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.ModelServiceStub(channel).Predict(pb.PredictRequest(prompt="x = 1", max_tokens=4))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "not finished within 0 s" in info.value.details()


class _Slow(torch.nn.Module):
    """The tiny model, 50 ms per forward: long enough to cancel in the middle of a generation."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, 0

    def forward(self, **kwargs):
        self.calls += 1
        time.sleep(0.05)
        return self.model(**kwargs)


def test_client_deadline_and_cancel_stop_the_generation(moe, tok, tmp_path):
    slow = _Slow(moe)
    config = deploy.ServiceConfig(max_tokens_limit=64)
    with deploy.ModelServer(slow, tok, config, metrics_port=None, audit_path=tmp_path / "a.jsonl") as server, \
            grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ModelServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(pb.PredictRequest(prompt="x = 1", max_tokens=64), timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        future = stub.Predict.future(pb.PredictRequest(prompt="y = 2", max_tokens=64))
        time.sleep(0.3)
        future.cancel()
        time.sleep(0.5)  # the batch notices at its next step
        calls = slow.calls
        time.sleep(0.3)
        assert slow.calls == calls  # the model stopped working for the requests that left
        assert calls < 2 * 30  # two requests of 64 steps each would take 128 forwards
    statuses = sorted(deploy.read_audit(tmp_path / "a.jsonl")["status"])
    assert statuses == ["CANCELLED", "DEADLINE_EXCEEDED"]


@pytest.mark.parametrize("batching", [True, False])
def test_micro_batching_groups_concurrent_requests_without_changing_answers(moe, tok, batching):
    config = deploy.ServiceConfig(micro_batching=batching, max_batch=8, batch_wait_ms=50)
    prompts = [f"x{i} = {i}" for i in range(6)]
    with deploy.ModelServer(moe, tok, config) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ModelServiceStub(channel)
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            texts = list(pool.map(lambda p: stub.Predict(pb.PredictRequest(prompt=p, max_tokens=4)).text, prompts))
        batches = _count(server, "inference_batch_size_count")
    alone = [tok.decode(deploy.generate(moe, [tok.encode(p, add_special_tokens=False)], [4],
                                        eos_id=tok.eos_token_id)[0].tokens) for p in prompts]
    assert texts == alone
    assert batches < 6 if batching else batches == 6


@pytest.mark.parametrize("variant", ["bf16", "int8-dynamic"])
def test_bf16_and_quantized_variants_are_served(moe, tok, variant):
    if variant == "bf16":
        model = copy.deepcopy(moe).to(torch.bfloat16)
    else:
        with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao; fine for a test
            warnings.simplefilter("ignore")
            model = torch.ao.quantization.quantize_dynamic(moe, {torch.nn.Linear}, dtype=torch.qint8)
    assert model is not moe
    ids = tok.encode("def f(x):", add_special_tokens=False)
    [reference] = deploy.generate(model, [ids], [5], eos_id=tok.eos_token_id)
    with deploy.ModelServer(model, tok, deploy.ServiceConfig(model_name=variant), metrics_port=None) as server:
        response = deploy.predict(server.address, "def f(x):", 5)
    assert (response.text, response.model) == (tok.decode(reference.tokens), variant)


def test_no_threads_or_jobs_leak_across_many_requests(moe, tok):
    baseline = threading.active_count()
    with deploy.ModelServer(moe, tok, deploy.ServiceConfig(), metrics_port=None) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.ModelServiceStub(channel)
            for i in range(30):
                stub.Predict(pb.PredictRequest(prompt=f"x = {i}", max_tokens=1))
            during = threading.active_count()
            for i in range(90):
                stub.Predict(pb.PredictRequest(prompt=f"y = {i}", max_tokens=1))
            # 90 more requests, no thread per request: the pool may still grow to its size, never past it
            # (ThreadPoolExecutor adds a worker when none is idle at submit time, a race under load)
            assert threading.active_count() <= during + server.config.workers
    time.sleep(0.2)
    gc.collect()
    assert threading.active_count() <= baseline + 1  # grpc may keep one poller thread per process
    assert not [o for o in gc.get_objects() if type(o).__name__ == "_Job"]


@pytest.mark.parametrize("field, value, message", [
    ("max_batch", 0, "max_batch must be a positive int, got 0"),
    ("batch_wait_ms", -1.0, "batch_wait_ms must be a finite number >= 0, got -1.0"),
    ("request_timeout_s", float("inf"), "request_timeout_s must be a finite number"),
])
def test_bad_config_is_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        deploy.ServiceConfig(**{field: value})


def test_limits_beyond_the_model_context_are_refused(moe, tok):
    with pytest.raises(ValueError, match=r"exceeds the model's max_position_embeddings \(2048\)"):
        deploy.ModelServer(moe, tok, deploy.ServiceConfig(max_prompt_tokens=2040, max_tokens_limit=16))


def _batcher(config, arriving):
    """A _Batcher whose model thread is not started: _collect is driven from the test."""
    return _Batcher(None, config, None, 0, None, arriving=arriving, start=False)


def _job(i):
    return _Job([i], 1, 0.0, 0, deadline=time.monotonic() + 60)


def test_collection_waits_for_a_request_still_being_parsed():
    # a handler has the request but has not queued it yet (tokenising, under load): the batch waits for it,
    # well past batch_wait_ms, instead of leaving without it and making it wait a whole batch
    state = {"arriving": 1}
    batcher = _batcher(deploy.ServiceConfig(max_batch=4, batch_wait_ms=1, batch_max_wait_ms=60_000),
                       lambda: state["arriving"])

    def late():
        time.sleep(0.05)  # 50 batch_wait_ms
        batcher.queue.put(_job(2))
        state["arriving"] = 0

    threading.Thread(target=late).start()
    batch = batcher._collect(_job(1))
    assert [j.ids for j in batch] == [[1], [2]]


def test_collection_stops_at_max_batch_and_at_the_cap():
    batcher = _batcher(deploy.ServiceConfig(max_batch=3, batch_wait_ms=1, batch_max_wait_ms=60_000), lambda: 1)
    for i in range(2, 6):
        batcher.queue.put(_job(i))
    assert [j.ids for j in batcher._collect(_job(1))] == [[1], [2], [3]]  # full: leaves at once
    assert [batcher.queue.get_nowait().ids for _ in range(2)] == [[4], [5]] and batcher.queue.empty()
    capped = _batcher(deploy.ServiceConfig(max_batch=3, batch_wait_ms=1, batch_max_wait_ms=20), lambda: 1)
    assert [j.ids for j in capped._collect(_job(1))] == [[1]]  # someone "arriving" forever: the cap ends it
    with pytest.raises(ValueError, match="batch_max_wait_ms must be a finite number >= 0, got -1"):
        deploy.ServiceConfig(batch_max_wait_ms=-1)


class _Context:
    """A gRPC servicer context that the test ends itself, as gRPC would at a deadline or a client's cancel."""

    def __init__(self, remaining):
        self.deadline, self.callbacks, self.active, self.aborted = time.monotonic() + remaining, [], True, None

    def time_remaining(self):
        return self.deadline - time.monotonic()

    def add_callback(self, callback):
        self.callbacks.append(callback)
        return True

    def is_active(self):  # as gRPC has it: over once ended, or once the deadline has passed
        return self.active and time.monotonic() < self.deadline

    def end(self):
        self.active = False
        for callback in self.callbacks:
            callback()

    def abort(self, code, message):
        self.aborted = code
        raise grpc.RpcError(message)


@pytest.mark.parametrize("ends_at, expected", [(0.05, "CANCELLED"), (0.3, "DEADLINE_EXCEEDED")])
def test_status_says_who_ended_the_call_even_when_grpc_ends_it_before_the_handler_wakes(moe, tok, tmp_path,
                                                                                        ends_at, expected):
    # gRPC ends a call at the client's deadline as it does at a cancel; under load it can do so before the
    # handler wakes, so "is the call still active?" cannot tell the two apart: the time it ended can
    slow = _Slow(moe)
    config = deploy.ServiceConfig(max_tokens_limit=64)
    with deploy.ModelServer(slow, tok, config, metrics_port=None, audit_path=tmp_path / "a.jsonl") as server:
        context = _Context(remaining=0.3)  # ended by the client at 0.05 s, or by gRPC at the deadline
        threading.Timer(ends_at, context.end).start()
        with pytest.raises(grpc.RpcError):
            server._predict(pb.PredictRequest(prompt="x = 1", max_tokens=64).SerializeToString(), context)
    assert context.aborted.name == expected
    assert deploy.read_audit(tmp_path / "a.jsonl")["status"].tolist() == [expected]
