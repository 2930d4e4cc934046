import random
import re
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


def test_device_is_cuda_or_cpu_and_never_mps_unasked(monkeypatch):
    monkeypatch.delenv("COOKBOOK_DEVICE", raising=False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)  # an Apple machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert env.device() == torch.device("cpu")  # MPS is opt-in: wrong losses are reported on it
    monkeypatch.setenv("COOKBOOK_DEVICE", "mps")
    assert env.device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("COOKBOOK_DEVICE")
    assert env.device() == torch.device("cuda")


def test_device_override_is_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("COOKBOOK_DEVICE", "tpu")
    with pytest.raises(ValueError, match="valid: cuda, mps, cpu"):
        env.device()
    monkeypatch.setenv("COOKBOOK_DEVICE", "cuda")
    with pytest.raises(ValueError, match="no cuda device"):
        env.device()


def test_cache_dir_honours_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("COOKBOOK_CACHE", str(tmp_path / "c"))
    assert env.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_report_lists_the_stack():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our pinned stack must not trip the known-bad warnings
        table = env.report()
    # the local tag differs by build: "+cpu" in the CPU wheel's metadata, "+cu130" only in a CUDA wheel's __version__
    assert table.loc["torch", "value"].split("+")[0] == torch.__version__.split("+")[0]
    for item in ("python", "cuda (torch build)", "gpu", "pins", "transformers", "datasets", "peft", "accelerate"):
        assert item in table.index
    assert list(table.columns) == ["value", "pinned", "status"]
    assert not table.loc["pins", "value"].startswith("/")  # no machine's absolute path in a committed notebook


def test_report_warns_on_known_bad_versions(monkeypatch):
    installed = {**env._installed(), "transformers": "4.40.0"}
    monkeypatch.setattr(env, "_installed", lambda: installed)
    with pytest.warns(UserWarning, match="transformers 4.40.0"):
        env.report()


def test_read_pins(tmp_path):
    path = tmp_path / "constraints-py312.txt"
    path.write_text("# tested pins\n\n-c other.txt\nHuggingface_Hub==1.2.3  # normalised name\n"
                    "numpy==2.2.6; python_version < '3.0'\nnumpy==2.4.6; python_version >= '3.0'\ntorch==2.13.0+cpu\n")
    assert env.read_pins(path) == {"huggingface-hub": "1.2.3", "numpy": "2.4.6", "torch": "2.13.0+cpu"}
    for line, match in (("numpy>=2", "line 1: 'numpy>=2' is not an exact pin"), ("numpy = 2", "line 1: not a requirement")):
        path.write_text(line + "\n")
        with pytest.raises(ValueError, match=match):
            env.read_pins(path)


def test_pins_file_for_this_python(tmp_path):
    assert env.pins_file(tmp_path) is None  # no requirements/ folder: a wheel install
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "constraints-py312.txt").write_text("")
    assert env.pins_file(tmp_path, (3, 12)).name == "constraints-py312.txt"
    assert env.pins_file(tmp_path, (3, 9)) is None  # an unsupported Python has no tested pins


def test_check_packages_marks_each_status(tmp_path, monkeypatch):
    installed = {"torch": "2.13.0+cpu", "numpy": "2.4.6", "pandas": "3.1.1", "extra-tool": "1.0"}
    monkeypatch.setattr(env, "_installed", lambda: installed)
    monkeypatch.setattr(env, "_required", lambda: {"torch", "numpy", "pandas", "tqdm"})
    pins = tmp_path / "constraints.txt"
    pins.write_text("torch==2.13.0\nnumpy==2.2.6\ntqdm==4.70.1\nextra-tool==1.0\ntensorboard==2.20.0\n")
    status = env.check_packages(pins)["status"].to_dict()
    assert status == {"extra-tool": "OK", "numpy": "MISMATCH", "pandas": "UNPINNED", "tensorboard": "MISSING (optional)",
                      "torch": "OK",  # 2.13.0+cpu is the pinned 2.13.0 (a build label, not another version)
                      "tqdm": "MISSING"}
    shown = env.report(pins=pins)
    assert set(shown.index) >= {"torch", "numpy", "pandas", "tqdm"} and "tensorboard" not in shown.index
    assert "extra-tool" not in shown.index  # an optional package as pinned: counted, not listed
    assert {"tensorboard", "extra-tool"} <= set(env.report(pins=pins, every_package=True).index)


def test_runs_dir_is_one_folder_at_the_project_root(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # where a notebook kernel runs
    monkeypatch.delenv("COOKBOOK_RUNS_DIR", raising=False)
    assert env.runs_dir("06_monitoring") == tmp_path / "runs" / "06_monitoring"
    assert (tmp_path / "runs" / "06_monitoring").is_dir() and not (tmp_path / "notebooks" / "runs").exists()
    monkeypatch.setenv("COOKBOOK_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert env.runs_dir("x") == tmp_path / "elsewhere" / "x"


def test_setup_prints_profile_device_seed_and_commit(capsys):
    P = env.setup(seed=3, profile_name="smoke")
    line = capsys.readouterr().out
    assert P.name == "smoke" and line.startswith("profile smoke · device cpu · seed 3 · commit ")
    assert torch.initial_seed() == 3


def test_commit_names_the_code_or_what_the_environment_says(monkeypatch):
    monkeypatch.delenv("COOKBOOK_COMMIT", raising=False)
    assert re.fullmatch(r"[0-9a-f]{7,}(\+changes)?|unknown", env.commit())
    monkeypatch.setenv("COOKBOOK_COMMIT", "abc1234")  # a copy without .git, told by the GPU pass
    assert env.commit() == "abc1234"


def test_optional_tools_found_on_path_missing_or_hidden(tmp_path, monkeypatch):
    fake = tmp_path / "prometheus"
    fake.write_text("#!/bin/sh\necho 'prometheus, version 9.9.9 (fake)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing else: nginx cannot be found even in /usr/sbin here
    monkeypatch.setattr(env.shutil, "which", lambda name, path=None: str(fake) if name == "prometheus" and path is None
                        else None)
    monkeypatch.delenv("COOKBOOK_HIDE_TOOLS", raising=False)
    monkeypatch.delenv("COOKBOOK_CHROMIUM", raising=False)
    table = env.optional_tools()
    assert table.loc["prometheus", "version"] == "prometheus, version 9.9.9 (fake)" and table.loc["prometheus", "install"] == ""
    assert table.loc["nginx", "version"] == "missing" and "sudo apt-get install nginx" in table.loc["nginx", "install"]
    assert list(table.index) == ["nginx", "prometheus", "chromium"]
    monkeypatch.setenv("COOKBOOK_HIDE_TOOLS", "nginx, prometheus")  # CI's stage without the optional programs
    assert env.find_tool("prometheus") is None
    monkeypatch.setenv("COOKBOOK_CHROMIUM", "/opt/my/chrome")
    assert env.find_tool("chromium") == "/opt/my/chrome"
    assert env.install_hint("chromium").startswith("chromium is not installed (needed by make test-browser): ")
    with pytest.raises(ValueError, match="unknown optional tool 'redis'; valid: nginx, prometheus, chromium"):
        env.find_tool("redis")


@pytest.mark.parametrize("datasets_on", [True, False])
def test_quiet_progress_silences_both_libraries_and_restores_each(datasets_on):
    import datasets
    from transformers.utils import logging as hf_logging

    (datasets.enable_progress_bars if datasets_on else datasets.disable_progress_bars)()
    hf_logging.enable_progress_bar()
    try:
        with pytest.raises(KeyError), env.quiet_progress():  # restored on the way out of an error too
            assert not datasets.is_progress_bar_enabled() and not hf_logging.is_progress_bar_enabled()
            raise KeyError
        assert datasets.is_progress_bar_enabled() is datasets_on  # a user's own choice is kept
        assert hf_logging.is_progress_bar_enabled()
    finally:
        datasets.enable_progress_bars()
