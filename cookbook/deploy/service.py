"""The guide's gRPC `ModelService.Predict`, production-shaped: validation, deadlines, health, micro-batching,
Prometheus metrics and an audit log.

One model thread owns the model; gRPC worker threads validate requests and hand them over. With micro-batching
on, requests that arrive within `batch_wait_ms` of each other (up to `max_batch`, for at most `batch_max_wait_ms`)
share one batched generation (`generate.generate`); off, they run one at a time. Every request ends in exactly one status:

- INVALID_ARGUMENT: not a PredictRequest, an empty or too long prompt, `max_tokens` or `temperature` out of range
  (the message names the bad value and the valid range; a client never sees a stack trace);
- DEADLINE_EXCEEDED: not finished within the client's deadline or the server's `request_timeout_s`;
- CANCELLED: the client went away (its row leaves the batch at the next step);
- INTERNAL: a bug (logged here with its traceback, an id there); OK otherwise.

    with ModelServer(model, tokenizer, ServiceConfig(), audit_path="audit.jsonl") as server:
        stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server.address))
        stub.Predict(model_service_pb2.PredictRequest(prompt="def add(a, b):", max_tokens=8))
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
import uuid
from concurrent import futures
from pathlib import Path

import grpc
import prometheus_client
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cookbook.checks import positive_int
from cookbook.deploy import model_service_pb2 as pb
from cookbook.deploy.audit import AuditLog
from cookbook.deploy.generate import Generation, generate

__all__ = ["LATENCY_BUCKETS", "SERVICE", "InvalidRequest", "ModelServer", "ServiceConfig", "validate"]

SERVICE = pb.DESCRIPTOR.services_by_name["ModelService"].full_name  # cookbook.deploy.ModelService
# Seconds. Fine below 0.1 s where a small model answers, coarse above: histogram_quantile interpolates inside a
# bucket, so its p99 is only as precise as the bucket it falls in.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
                   30.0)
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """Limits and behaviour of one `ModelServer`. Shown in notebooks/12 §5."""

    model_name: str = "model"  # the variant served, in every response and audit line (e.g. smoke-fp32)
    max_prompt_tokens: int = 256
    max_tokens_limit: int = 64  # the largest max_tokens a request may ask for
    max_temperature: float = 2.0
    request_timeout_s: float = 30.0  # the server's own deadline; a client's shorter deadline wins
    micro_batching: bool = True
    max_batch: int = 8  # requests per batched generation
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    # New: keep collecting while requests keep arriving — up to batch_wait_ms after the *latest* arrival (or while a
    # handler is still parsing one), at most batch_max_wait_ms in all; 0: the first request's wait only. Measured
    # (benchmarks/serve_load.py, 32 clients, 2 cores): mean batch 22.7 -> 31.3 of 32, QPS 0.80 -> 1.16 x ceiling
    batch_max_wait_ms: float = 30.0
    max_request_bytes: int = 256 * 1024  # larger messages are refused by gRPC itself (RESOURCE_EXHAUSTED)
    workers: int = 32  # gRPC handler threads: concurrent requests in validation or waiting for the model
    audit_raw: bool = False  # store prompt and output text in the audit log, not only their fingerprints

    def __post_init__(self):
        for name in ("max_prompt_tokens", "max_tokens_limit", "max_batch", "max_request_bytes", "workers"):
            positive_int(name, getattr(self, name))
        for name in ("max_temperature", "request_timeout_s", "batch_wait_ms", "batch_max_wait_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


class InvalidRequest(ValueError):
    """A request the service refuses with INVALID_ARGUMENT; the message tells the client what to fix."""


def validate(request: pb.PredictRequest, tokenizer, config: ServiceConfig) -> list[int]:
    """The prompt's token ids if `request` is within `config`'s limits, else an `InvalidRequest` naming the bad
    field, its value and the valid range. Shown in notebooks/12 §5."""
    if not request.prompt.strip():
        raise InvalidRequest("prompt is empty; send the text to continue")
    if not 1 <= request.max_tokens <= config.max_tokens_limit:
        raise InvalidRequest(f"max_tokens must be in 1..{config.max_tokens_limit}, got {request.max_tokens}")
    temperature = request.temperature
    if not (math.isfinite(temperature) and 0 <= temperature <= config.max_temperature):
        raise InvalidRequest(f"temperature must be in [0, {config.max_temperature}] (0: greedy), got {temperature}")
    ids = tokenizer.encode(request.prompt, add_special_tokens=False)
    if len(ids) > config.max_prompt_tokens:
        raise InvalidRequest(f"prompt has {len(ids)} tokens; the limit is {config.max_prompt_tokens}")
    return ids


@dataclasses.dataclass
class _Job:
    ids: list[int]
    max_tokens: int
    temperature: float
    seed: int
    deadline: float  # time.monotonic() by which the client wants an answer
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: Generation | None = None
    error: BaseException | None = None
    ended_at: float | None = None  # time.monotonic() when gRPC ended the call (the client left, or its deadline)

    def gone(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline

    def end(self) -> None:
        """gRPC's callback when the call ends: note when, and let the batch drop the row at its next step."""
        self.ended_at = time.monotonic()
        self.cancelled.set()

    def client_left(self, active: bool) -> bool:
        """Whether the client cancelled, rather than a deadline (the client's or the server's) running out.

        Not by `active` alone: gRPC ends a call at the client's deadline too, and under load it can do so
        before the handler wakes. `deadline` is never later than the client's (the clock is read before its
        remaining time), so a call that ended before `deadline` was ended by the client."""
        ended = self.ended_at if self.ended_at is not None else time.monotonic()
        return not active and ended < self.deadline


class _Batcher:
    """The model thread: takes jobs off a queue, groups those that arrive close together, generates, answers."""

    def __init__(self, model, config: ServiceConfig, eos_id, pad_id, batch_sizes, arriving=lambda: 0,
                 start: bool = True):
        self.model, self.eos_id, self.pad_id, self.batch_sizes = model, eos_id, pad_id, batch_sizes
        self.max_batch = config.max_batch if config.micro_batching else 1
        self.wait = config.batch_wait_ms / 1000 if config.micro_batching else 0.0
        self.max_wait = max(config.batch_max_wait_ms / 1000, self.wait) if config.micro_batching else 0.0
        self.arriving = arriving  # requests in a handler, not yet queued
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="model", daemon=True)
        if start:  # not started: a test drives _collect itself
            self.thread.start()

    def _collect(self, first: _Job) -> list[_Job] | None:
        start = time.monotonic()
        batch, end, last = [first], start + self.wait, start + self.max_wait
        while len(batch) < self.max_batch:
            now = time.monotonic()
            if self.max_wait > self.wait and self.arriving() and now < last:
                end = max(end, min(now + self.wait, last))  # one is being parsed: it will want this batch
            try:
                job = self.queue.get(timeout=max(0.0, end - now)) if self.wait else self.queue.get_nowait()
            except queue.Empty:
                if self.max_wait > self.wait and self.arriving() and time.monotonic() < last:
                    continue
                break
            if job is None:  # closing: answer what we have, then stop
                self.queue.put(None)
                break
            batch.append(job)
            if self.max_wait > self.wait:  # company came: wait for more, counted from this arrival
                end = min(time.monotonic() + self.wait, last)
        return batch

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            self._serve(self._collect(first))
            del first  # waiting for the next request, hold no finished one (nor its tokens)

    def _serve(self, jobs: list[_Job]) -> None:
        batch = []
        for job in jobs:
            if job.gone():  # cancelled or expired while queued: answer (with no result) without computing
                job.done.set()
            else:
                batch.append(job)
        if not batch:
            return
        self.batch_sizes.observe(len(batch))
        try:
            results = generate(self.model, [j.ids for j in batch], [j.max_tokens for j in batch],
                               temperatures=[j.temperature for j in batch], seeds=[j.seed for j in batch],
                               eos_id=self.eos_id, pad_id=self.pad_id, stop=lambda i: batch[i].gone())
        except Exception as err:  # noqa: BLE001 - a failed batch must answer its requests, not kill the thread
            for job in batch:
                job.error = err
                job.done.set()
            return
        for job, result in zip(batch, results, strict=True):
            job.result = result
            job.done.set()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)


class ModelServer:
    """A `ModelService` gRPC server for `model` on `host:port` (0: a free port), with the standard health service
    (grpc.health.v1), Prometheus metrics over HTTP on `metrics_port` (0: a free one; None: none) and, with
    `audit_path`, a JSONL audit log. `model` is any Hugging Face causal LM module — fp32, bf16 or quantized.
    Use as a context manager, or `start()` / `stop()`. Shown in notebooks/12 §5.
    """

    def __init__(self, model, tokenizer, config: ServiceConfig | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, metrics_port: int | None = 0, audit_path: str | Path | None = None,
                 audit_key: bytes | None = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.config = config or ServiceConfig()
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if limit is not None and self.config.max_prompt_tokens + self.config.max_tokens_limit > limit:
            raise ValueError(f"max_prompt_tokens + max_tokens_limit = "
                             f"{self.config.max_prompt_tokens + self.config.max_tokens_limit} exceeds the model's "
                             f"max_position_embeddings ({limit})")
        self.host, self._port, self._metrics_port = host, port, metrics_port
        self.audit = AuditLog(audit_path, raw=self.config.audit_raw, key=audit_key) if audit_path else None
        self.registry = prometheus_client.CollectorRegistry()  # per server: two in one process do not mix
        self.requests = prometheus_client.Counter("inference_requests", "Predict calls by final gRPC status",
                                                  ["status"], registry=self.registry)
        self.latency = prometheus_client.Histogram("inference_latency_seconds",
                                                   "Seconds from request to answer of successful Predict calls",
                                                   buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tokens = prometheus_client.Counter("inference_tokens_generated", "New tokens returned",
                                                registry=self.registry)
        self.batch_sizes = prometheus_client.Histogram("inference_batch_size", "Requests per batched generation",
                                                       buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.in_flight = prometheus_client.Gauge("inference_in_flight", "Predict calls being handled",
                                                 registry=self.registry)
        self.server = self.health = self.batcher = self._http = None
        self._arriving = 0  # handlers between receiving a request and queueing it (guarded by the lock below)
        self._arriving_lock = threading.Lock()
        self.port = self.metrics_port = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> ModelServer:
        """Load nothing, bind the ports, start serving; health turns SERVING once everything is up."""
        tok = self.tokenizer
        self.batcher = _Batcher(self.model, self.config, tok.eos_token_id,
                                tok.pad_token_id if tok.pad_token_id is not None else 0, self.batch_sizes,
                                arriving=lambda: self._arriving)
        limit = self.config.max_request_bytes
        self.server = grpc.server(futures.ThreadPoolExecutor(self.config.workers, thread_name_prefix="grpc"),
                                  options=[("grpc.max_receive_message_length", limit)])
        handler = grpc.unary_unary_rpc_method_handler(  # raw bytes in: a malformed message is our error to report
            self._predict, request_deserializer=None, response_serializer=pb.PredictResponse.SerializeToString)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {"Predict": handler})])
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(f"{self.host}:{self._port}")
        if self.port == 0:
            raise OSError(f"could not bind {self.host}:{self._port} for gRPC")
        self.server.start()
        if self._metrics_port is not None:
            self._http, _ = prometheus_client.start_http_server(self._metrics_port, self.host, self.registry)
            self.metrics_port = self._http.server_port
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace: float = 2.0) -> None:
        """Health NOT_SERVING, finish in-flight calls for up to `grace` seconds, stop every thread."""
        if self.server is None:
            return
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.batcher.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.server = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _predict(self, raw: bytes, context: grpc.ServicerContext):
        start = time.perf_counter()
        self.in_flight.inc()
        request_id = uuid.uuid4().hex[:16]
        code, message, response, request, result = grpc.StatusCode.OK, "", None, pb.PredictRequest(), None
        with self._arriving_lock:
            self._arriving += 1
        arriving = True
        try:
            try:
                request.ParseFromString(raw)
            except DecodeError as err:
                raise InvalidRequest(f"request is not a valid PredictRequest ({err})") from None
            ids = validate(request, self.tokenizer, self.config)
            now = time.monotonic()  # read before the remaining time: now + remaining is never past gRPC's deadline
            remaining = context.time_remaining()  # None without a client deadline
            budget = min(self.config.request_timeout_s, remaining if remaining is not None else math.inf)
            job = _Job(ids, request.max_tokens, request.temperature, request.seed, now + budget)
            context.add_callback(job.end)  # runs when the RPC ends: a client cancel reaches the batch
            self.batcher.queue.put(job)
            with self._arriving_lock:
                self._arriving, arriving = self._arriving - 1, False
            job.done.wait(timeout=budget)
            if job.error is not None:
                raise job.error
            if job.result is None or job.result.finish_reason == "cancelled":  # out of time, or client gone
                job.cancelled.set()
                if job.client_left(context.is_active()):
                    code, message = grpc.StatusCode.CANCELLED, "the client cancelled the request"
                else:
                    code, message = grpc.StatusCode.DEADLINE_EXCEEDED, \
                        f"not finished within {budget:.3g} s (request {request_id})"
            else:
                result = job.result
                response = pb.PredictResponse(
                    text=self.tokenizer.decode(result.tokens), prompt_tokens=len(ids),
                    completion_tokens=len(result.tokens), finish_reason=result.finish_reason,
                    request_id=request_id, model=self.config.model_name)
        except InvalidRequest as err:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(err)
        except Exception:  # noqa: BLE001 - the client gets an id to quote, the log gets the traceback
            _log.exception("Predict failed (request %s)", request_id)
            code, message = grpc.StatusCode.INTERNAL, f"internal error (request {request_id})"
        finally:
            self.in_flight.dec()
            if arriving:  # refused before it was queued
                with self._arriving_lock:
                    self._arriving -= 1
        seconds = time.perf_counter() - start
        self._account(request_id, code, request, response, result, seconds)
        if code is not grpc.StatusCode.OK:
            context.abort(code, message)  # raises: gRPC sends the status and message, nothing else
        return response

    def _account(self, request_id, code, request, response, result, seconds) -> None:
        self.requests.labels(code.name).inc()
        if response is not None:
            self.latency.observe(seconds)
            self.tokens.inc(response.completion_tokens)
        if self.audit is not None:
            self.audit.write(request_id=request_id, status=code.name, prompt=request.prompt,
                             output=response.text if response is not None else "", model=self.config.model_name,
                             max_tokens=request.max_tokens, temperature=round(request.temperature, 4),
                             prompt_tokens=response.prompt_tokens if response is not None else None,
                             completion_tokens=len(result.tokens) if result is not None else 0,
                             latency_ms=round(1000 * seconds, 3))
