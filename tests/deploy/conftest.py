"""A tiny DeepSeek-V3, its dense twin and a small BPE tokenizer trained on three stdlib modules, shared by the
deploy tests; ONNX exports made once per session."""

import importlib.util
import inspect
import json
import shutil

import pytest
import torch

from cookbook import models
from cookbook.data import tokenizer

# cookbook.deploy needs the `serve` extra; without it nothing here can be imported, so the folder is left out and
# the test header says why
_MISSING = [m for m in ("grpc", "grpc_health", "prometheus_client", "onnx", "onnxscript", "onnxruntime")
            if importlib.util.find_spec(m) is None]
if _MISSING:
    collect_ignore_glob = ["test_*.py"]

    def pytest_report_header(config):
        return f"tests/deploy skipped: {', '.join(_MISSING)} missing (pip install 'cookbook[serve]')"


@pytest.fixture(scope="session")
def tok():
    texts = [inspect.getsource(module) for module in (inspect, json.decoder, json.encoder, shutil)]
    return tokenizer.train(texts, vocab_size=320)


@pytest.fixture(scope="session")
def moe(tok):
    return models.build("tiny", len(tok), seed=0).eval()


@pytest.fixture(scope="session")
def dense(moe):
    return models.build_dense(moe.config, seed=0).eval()


@pytest.fixture(scope="session")
def example_ids(tok):
    return torch.randint(0, len(tok), (2, 8), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def programs(moe, dense, example_ids):
    """`torch.export` programs: the MoE on its default experts path (grouped_mm) and the dense twin."""
    from cookbook import deploy  # here, not at the top: the file must import without the serve extra

    return {"moe": deploy.torch_export(moe, example_ids, max_seq=256),
            "dense": deploy.torch_export(dense, example_ids, max_seq=256)}


@pytest.fixture(scope="session")
def onnx_files(tmp_path_factory, moe, programs, example_ids):
    """{"moe": ExportResult, "dense": ExportResult}: the slow part of these tests, once. onnxscript's optimiser is
    skipped here for time (ONNX Runtime still optimises at load); the notebook runs it."""
    from cookbook import deploy

    folder = tmp_path_factory.mktemp("onnx")
    return {"moe": deploy.onnx_export(moe, folder / "moe.onnx", example_ids, max_seq=256, optimize=False),
            "dense": deploy.onnx_from_program(programs["dense"], folder / "dense.onnx", optimize=False)}
