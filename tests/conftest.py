"""Shared test set-up: smoke profile, headless plots, a private cache, GPU tests skipped without CUDA."""

import os

os.environ["COOKBOOK_PROFILE"] = "smoke"
os.environ.setdefault("MPLBACKEND", "agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach a hub

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test session writes tokenizers/checkpoints to its own folder, never the user's cache; pytest-xdist's
    workers share one (every cache write is an atomic rename), so a tokenizer is trained once, not once per worker."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("COOKBOOK_CACHE", str((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "cache"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
