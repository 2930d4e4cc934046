"""From lab to production: export, the gRPC ModelService, the real parts around it (nginx, Prometheus), load tests.

export (torch.export, ONNX with the MoE trap handled, ORT parity and optimisation levels, TorchScript as legacy)
· triton (a `config.pbtxt` read off the ONNX model, validated with Triton's own protobuf) · generate (batched
decoding with per-request budgets) · audit (JSONL with SHA-256 fingerprints) · service (`ModelService.Predict`:
validation, deadlines, health, micro-batching, Prometheus metrics) · stack (replicas, nginx `grpc_pass` with
weights, Prometheus; started and stopped by PID) · load (a `grpc.aio` load test: QPS, p50/p99) · replica (one
server process) · profile (py-spy samples of a replica's threads under load) · stubs (regenerates the committed gRPC stubs). Needs the `serve` extra (grpcio,
grpcio-health-checking, prometheus_client; onnx, onnxscript, onnxruntime to export; tritonclient to validate Triton
configs); the stack's optional servers are the `nginx` and `prometheus` programs (apt, brew or conda-forge; without
them the replicas serve directly). Shown in notebooks/12.
"""

from cookbook.deploy.audit import AuditLog, fingerprint, read_audit
from cookbook.deploy.export import (
    EXPERTS_FOR_ONNX,
    ORT_LEVELS,
    ExportResult,
    LogitsOnly,
    OnnxRunner,
    check_input_ids,
    custom_ops,
    dynamic_shapes,
    experts_implementation,
    export_limits,
    onnx_export,
    onnx_from_program,
    ort_session,
    parity,
    torch_export,
    torchscript_trace,
)
from cookbook.deploy.generate import Generation, generate
from cookbook.deploy.load import PROMPTS, LoadResult, generation_ceiling, load_sweep, load_test, predict
from cookbook.deploy.profile import (
    MODEL_STATES,
    WAITING_FOR_MODEL,
    ReplicaProfile,
    batch_counts,
    profile_replica,
    py_spy,
    thread_samples,
)
from cookbook.deploy.service import (
    LATENCY_BUCKETS,
    SERVICE,
    InvalidRequest,
    ModelServer,
    ServiceConfig,
    validate,
)
from cookbook.deploy.stack import (
    Nginx,
    Process,
    Prometheus,
    Replica,
    Stack,
    Starting,
    free_port,
    nginx_config,
    require,
    save_for_serving,
    scrape,
    spawn_replica,
    start_nginx,
    start_prometheus,
    start_replica,
)
from cookbook.deploy.triton import check_triton_config, parse_triton_config, triton_config, triton_repository

__all__ = ["EXPERTS_FOR_ONNX", "LATENCY_BUCKETS", "MODEL_STATES", "ORT_LEVELS", "PROMPTS", "SERVICE", "WAITING_FOR_MODEL", "AuditLog", "ExportResult", "batch_counts",
           "Generation", "InvalidRequest", "LoadResult", "LogitsOnly", "ModelServer", "OnnxRunner", "Nginx", "Process", "Prometheus",
           "Replica", "ReplicaProfile", "ServiceConfig", "Stack", "Starting", "check_input_ids", "check_triton_config", "custom_ops", "dynamic_shapes",
           "experts_implementation", "export_limits", "fingerprint", "free_port", "generate", "generation_ceiling", "load_sweep", "load_test", "nginx_config",
           "onnx_export", "onnx_from_program", "ort_session", "parity", "parse_triton_config", "predict", "profile_replica", "py_spy", "read_audit", "require",
           "save_for_serving", "scrape", "spawn_replica", "start_nginx", "start_prometheus", "start_replica", "thread_samples", "torch_export",
           "torchscript_trace", "triton_config", "triton_repository", "validate"]
