import random
import warnings

import numpy as np
import pytest
import torch

from cookbook import env


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(3)

    env.seed_everything(123)
    a = draw()
    env.seed_everything(123)
    b = draw()
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    env.seed_everything(124)
    assert draw()[0] != a[0]


@pytest.mark.parametrize("bad", [-1, 1.5, "0", None])
def test_seed_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="seed"):
        env.seed_everything(bad)


def test_device_is_cpu_without_accelerators():
    if torch.cuda.is_available():
        assert env.device().type == "cuda"
    elif not torch.backends.mps.is_available():
        assert env.device() == torch.device("cpu")


def test_cache_dir_honours_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("COOKBOOK_CACHE", str(tmp_path / "c"))
    assert env.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_report_lists_the_stack():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our pinned stack must not trip the known-bad warnings
        table = env.report()
    assert table.loc["torch", "value"] == torch.__version__
    for item in ("python", "cuda (torch build)", "gpu", "transformers", "datasets", "peft", "accelerate"):
        assert item in table.index


def test_report_warns_on_known_bad_versions(monkeypatch):
    monkeypatch.setattr(env, "_version", lambda package: "4.40.0" if package == "transformers" else "9.0")
    with pytest.warns(UserWarning, match="transformers 4.40.0"):
        env.report()
