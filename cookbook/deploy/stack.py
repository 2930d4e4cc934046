"""The real parts on loopback: model replicas as processes, nginx in front (gRPC, weighted round robin, passive
health checks) and a Prometheus server scraping the replicas. Every process is ours, known by PID, and stopped.

nginx (open source) has no active health checks — that is NGINX Plus — so health is *passive*: a replica that
refuses or drops a connection counts as a failure (`max_fails`), is skipped for `fail_timeout` and the request goes
to the next one (`grpc_next_upstream`). Weights 3:2 are the guide's; nginx's smooth weighted round robin sends
exactly 3 of every 5 requests to the first replica.

    with Stack.start(model_dir, weights=(3, 2), workdir=tmp) as stack:
        stack.nginx.address          # send gRPC here
        stack.prometheus.query('histogram_quantile(0.99, rate(inference_latency_seconds_bucket[5m]))')

Every process is stopped by `stop()`, and by an `atexit` hook if the interpreter exits first. Replicas also watch
their parent and leave when it is gone, so even a killed notebook kernel leaves no replica behind (nginx and
Prometheus cannot watch: after a SIGKILL of the parent, stop them by the PIDs in their logs' folder).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from cookbook.checks import positive_int
from cookbook.env import find_tool, install_hint, quiet_progress

__all__ = ["Nginx", "Process", "Prometheus", "Replica", "Stack", "Starting", "free_port", "nginx_config", "require", "save_for_serving", "scrape", "spawn_replica", "start_nginx",
           "start_prometheus", "start_replica"]

def require(binary: str) -> str:
    """The path of nginx or prometheus (`cookbook.env.find_tool`), else a FileNotFoundError saying how to install it
    (`cookbook.env.install_hint`)."""
    found = find_tool(binary)
    if not found:
        raise FileNotFoundError(install_hint(binary))
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it), for programs that need a port number up front."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Process:
    """A child process we started: its name, `subprocess.Popen` and log file. `stop()` ends it by PID."""

    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0, *, signalled: bool = False) -> int:
        """SIGTERM (unless `signalled` already), wait up to `timeout` s, then SIGKILL; the exit code."""
        if self.alive():
            if not signalled:  # a second SIGTERM could land in the middle of the process's own clean exit
                self.popen.terminate()
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait()

    def kill(self) -> None:
        """SIGKILL, no grace: a crashed replica, for fault tests."""
        self.popen.kill()
        self.popen.wait()

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _spawn(name: str, args: list[str], workdir: Path, env: dict | None = None) -> Process:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        # no preexec_fn: it forces fork(), whose gRPC handlers log "skipping fork() handlers" from a threaded parent
        popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
                                 env=env)
    return Process(name, popen, log)


def _wait(process: Process, ready, timeout: float, what: str):
    """Poll `ready()` until it returns something truthy; stop the process and raise if it dies or times out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited with code {process.popen.returncode} before {what}:\n"
                               f"{process.tail()}")
        with contextlib.suppress(OSError, ValueError):
            result = ready()
            if result:
                return result
        time.sleep(0.1)
    process.stop()
    raise TimeoutError(f"{process.name} was not {what} within {timeout} s:\n{process.tail()}")


def save_for_serving(model, tokenizer, folder: str | Path) -> Path:
    """`model` and `tokenizer` saved together (safetensors + tokenizer.json), the folder a replica loads.

    Shown in notebooks/12 §1.
    """
    folder = Path(folder)
    _quiet_deepspeed()
    with quiet_progress():
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
    return folder


class _CpuNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()


def _quiet_deepspeed() -> None:
    """save_pretrained imports DeepSpeed where it is installed (the `scale` extra), which announces on stdout that
    a CPU machine has a CPU; expected here, so that one notice is filtered (idempotent)."""
    logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _CpuNotice) for f in logger.filters):
        logger.addFilter(_CpuNotice())


@dataclasses.dataclass
class Replica:
    """A `ModelServer` process: gRPC on `port`, Prometheus metrics on `metrics_port`, its audit log."""

    process: Process
    port: int
    metrics_port: int
    audit: Path | None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@dataclasses.dataclass
class Starting:
    """A replica process spawned but not yet serving (so several can load their models at the same time)."""

    process: Process
    ready: Path
    audit: Path | None

    def wait(self, timeout: float = 120.0) -> Replica:
        """Block until the replica serves (its ready file appears); raise with its log if it dies or times out."""
        info = _wait(self.process, lambda: self.ready.exists() and json.loads(self.ready.read_text()), timeout,
                     "serving")
        return Replica(self.process, info["port"], info["metrics_port"], self.audit)


def spawn_replica(model_dir: str | Path, workdir: str | Path, *, name: str = "replica", dtype: str = "fp32",
                  config: dict | None = None, audit: bool = True, threads: int = 1, device: str = "cpu",
                  cpus=None) -> Starting:
    """Spawn a replica process and return at once; `.wait()` gives the `Replica` once it serves (start several,
    then wait for each: they load their models in parallel). Arguments as in `start_replica`; `cpus` (CPU ids,
    Linux) pins the process to those cores, as `taskset` would, before it starts a thread. Shown in
    notebooks/12 §1."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    audit_path = workdir / f"{name}.audit.jsonl" if audit else None
    args = [sys.executable, "-m", "cookbook.deploy.replica", "--model", str(Path(model_dir).resolve()),
            "--ready", str(ready), "--dtype", dtype, "--device", str(device), "--config", json.dumps(config or {}),
            "--parent", str(os.getpid())]
    if audit_path:
        args += ["--audit", str(audit_path)]
    env = {**os.environ, "OMP_NUM_THREADS": str(positive_int("threads", threads)), "PYTHONUNBUFFERED": "1"}
    process = _spawn(name, args, workdir, env)
    if cpus is not None:
        os.sched_setaffinity(process.pid, set(cpus))  # the interpreter is still starting: every thread inherits it
    return Starting(process, ready, audit_path)


def start_replica(model_dir: str | Path, workdir: str | Path, *, name: str = "replica", dtype: str = "fp32",
                  config: dict | None = None, audit: bool = True, threads: int = 1, device: str = "cpu",
                  timeout: float = 120.0) -> Replica:
    """Start `python -m cookbook.deploy.replica` on free loopback ports and wait until it serves.

    `config` holds `ServiceConfig` fields; `threads` sets the replica's torch/OpenMP threads; `device` is where
    its model runs. Shown in notebooks/12 §7.
    """
    return spawn_replica(model_dir, workdir, name=name, dtype=dtype, config=config, audit=audit, threads=threads,
                         device=device).wait(timeout)


_NGINX = """\
# written by cookbook.deploy.stack: nginx in front of {n} ModelService replicas
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    upstream model_service {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        # no body limit of nginx's own (its default, 1 MiB, answers HTTP 413, which a gRPC client sees as UNKNOWN):
        # the replica refuses an oversized message itself, with the service's status (RESOURCE_EXHAUSTED)
        client_max_body_size 0;
        location / {{
            grpc_pass grpc://model_service;
            grpc_connect_timeout 2s;
            grpc_read_timeout {read_timeout}s;
            # Predict has no side effect (the dead replica never wrote its audit line): safe to retry elsewhere
            grpc_next_upstream error timeout non_idempotent;
            grpc_next_upstream_tries {tries};
        }}
    }}
}}
"""


@dataclasses.dataclass
class Nginx:
    """An nginx process load-balancing gRPC on `port`; `config` is the nginx.conf it runs."""

    process: Process
    port: int
    config: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def nginx_config(upstreams, port: int, prefix: str | Path, *, max_fails: int = 1, fail_timeout_s: int = 10,
                 read_timeout_s: int = 60) -> str:
    """nginx.conf text: `grpc_pass` to `upstreams` [(address, weight)], weighted round robin, passive health checks."""
    upstreams = list(upstreams)
    if not upstreams:
        raise ValueError("nginx needs at least one upstream (address, weight)")
    servers = "\n".join(f"        server {address} weight={positive_int('weight', weight)} max_fails={max_fails} "
                        f"fail_timeout={fail_timeout_s}s;" for address, weight in upstreams)
    return _NGINX.format(n=len(upstreams), prefix=Path(prefix).resolve(), servers=servers, port=port,
                         read_timeout=read_timeout_s, tries=len(upstreams))


def start_nginx(upstreams, workdir: str | Path, *, port: int | None = None, timeout: float = 20.0,
                **options) -> Nginx:
    """Start nginx (not as a daemon: its master is our child) in front of `upstreams` [(address, weight)].

    Shown in notebooks/12 §7.
    """
    binary = require("nginx")
    prefix = Path(workdir).resolve()
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(upstreams, port, prefix, **options))
    process = _spawn("nginx", [binary, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "nginx-error.log"),
                               "-g", "daemon off;"], prefix)

    def listening():
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    _wait(process, listening, timeout, "listening")
    return Nginx(process, port, config)


class Prometheus:
    """A Prometheus server process; `query()` evaluates PromQL through its HTTP API."""

    def __init__(self, process: Process, port: int, config: Path):
        self.process, self.port, self.config = process, port, config

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _get(self, path: str, **params) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus {path} failed: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant PromQL query: [{"metric": {labels}, "value": float}], NaN dropped. Shown in notebooks/12 §8."""
        data = self._get("/api/v1/query", query=expr)
        rows = [{"metric": r["metric"], "value": float(r["value"][1])} for r in data["result"]]
        return [r for r in rows if r["value"] == r["value"]]

    def targets_up(self) -> int:
        """How many scrape targets were up at their last scrape."""
        return sum(t["health"] == "up" for t in self._get("/api/v1/targets")["activeTargets"])


def start_prometheus(targets, workdir: str | Path, *, port: int | None = None, scrape_interval_s: float = 1.0,
                     timeout: float = 30.0) -> Prometheus:
    """Start Prometheus scraping `targets` ("host:port" metrics endpoints) and wait until it has scraped them all.

    Shown in notebooks/12 §8.
    """
    binary = require("prometheus")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    interval = f"{int(1000 * scrape_interval_s)}ms"
    config = workdir / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML: no YAML writer needed
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": "model_service", "static_configs": [{"targets": list(targets)}]}]}, indent=1))
    process = _spawn("prometheus", [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                                    f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], workdir)
    server = Prometheus(process, port, config)
    _wait(process, lambda: server.targets_up() == len(targets), timeout, "scraping every target")
    return server


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """A metrics endpoint's samples: {(sample name, sorted label pairs): value}. Shown in notebooks/12 §6."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@dataclasses.dataclass
class Stack:
    """Replicas + nginx + Prometheus, started together and stopped together (reverse order, by PID)."""

    replicas: list[Replica]
    nginx: Nginx | None
    prometheus: Prometheus | None
    workdir: Path

    @classmethod
    def start(cls, model_dir: str | Path, workdir: str | Path, *, weights=(3, 2), dtype: str = "fp32",
              config: dict | None = None, threads: int = 1, device: str = "cpu", **options) -> Stack:
        """One replica per weight (spawned together: they load their models in parallel), then `from_replicas`.

        `options` go to `from_replicas` (nginx, prometheus, scrape_interval_s, timeout). Shown in notebooks/12 §7.
        """
        starting = [spawn_replica(model_dir, workdir, name=f"replica{i}", dtype=dtype, config=config,
                                  threads=threads, device=device) for i in range(len(weights))]
        return cls.from_replicas(starting, Path(workdir), weights=weights, **options)

    @classmethod
    def from_replicas(cls, starting: list[Starting], workdir: str | Path, *, weights=(3, 2), nginx: bool = True,
                      prometheus: bool = True, scrape_interval_s: float = 1.0, timeout: float = 180.0) -> Stack:
        """Wait for spawned replicas (`spawn_replica`), put nginx in front with `weights` (one per replica) and
        start Prometheus scraping them. Spawn early, call this when you need the stack: the models load meanwhile.

        `nginx=False` / `prometheus=False` leave that part out (`stack.nginx` / `stack.prometheus` is None): pass
        `cookbook.env.find_tool("nginx") is not None` to use each where it is installed. Anything started before a failure is
        stopped before the error propagates. Shown in notebooks/12 §7.
        """
        if len(starting) != len(weights):
            raise ValueError(f"one weight per replica: {len(starting)} replicas, weights {tuple(weights)}")
        workdir = Path(workdir)
        stack = cls([], None, None, workdir)
        try:
            stack.replicas = [s.wait(timeout) for s in starting]
            if nginx:
                stack.nginx = start_nginx([(r.address, w) for r, w in zip(stack.replicas, weights, strict=True)],
                                          workdir / "nginx")
            if prometheus:
                stack.prometheus = start_prometheus([f"127.0.0.1:{r.metrics_port}" for r in stack.replicas],
                                                    workdir / "prometheus", scrape_interval_s=scrape_interval_s)
        except BaseException:
            for s in starting:
                s.process.stop()
            stack.stop()
            raise
        atexit.register(stack.stop)
        return stack

    def processes(self) -> list[Process]:
        parts = [r.process for r in self.replicas] + [self.nginx and self.nginx.process,
                                                      self.prometheus and self.prometheus.process]
        return [p for p in parts if p is not None]

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """SIGTERM to Prometheus, nginx and the replicas (in that order, all at once), wait for each, SIGKILL what
        is still running after `timeout` s; {name: exit code}. Stopping twice is harmless."""
        atexit.unregister(self.stop)
        processes = list(reversed(self.processes()))
        for process in processes:
            if process.alive():
                process.popen.terminate()
        return {p.name: p.stop(timeout, signalled=True) for p in processes}

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
