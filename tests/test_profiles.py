import dataclasses

import pytest
import torch

from cookbook import models, profiles


def test_profile_default_is_smoke_on_cpu(monkeypatch):
    monkeypatch.delenv("COOKBOOK_PROFILE", raising=False)
    expected = "full" if torch.cuda.is_available() else "smoke"
    assert profiles.profile().name == expected


def test_profile_env_override_and_argument(monkeypatch):
    monkeypatch.setenv("COOKBOOK_PROFILE", "full")
    assert profiles.profile().name == "full"
    assert profiles.profile("smoke").name == "smoke"  # an explicit name wins over the environment


def test_unknown_profile_lists_valid_names(monkeypatch):
    monkeypatch.setenv("COOKBOOK_PROFILE", "huge")
    with pytest.raises(ValueError, match="smoke, full"):
        profiles.profile()


def test_profiles_scale_up_from_smoke_to_full():
    smoke, full = profiles.PROFILES["smoke"], profiles.PROFILES["full"]
    for section, field in [("data", "vocab_size"), ("data", "seq_len"), ("train", "batch_size"), ("train", "steps")]:
        assert getattr(getattr(full, section), field) > getattr(getattr(smoke, section), field), field
    assert 0 < smoke.data.data_fraction <= full.data.data_fraction <= 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        smoke.train.steps = 1  # profiles are frozen: a notebook cannot silently change another's sizes


@pytest.mark.parametrize("name", list(profiles.PROFILES))
def test_every_profile_names_real_models_and_precisions(name):
    P = profiles.PROFILES[name]
    assert P.model.name in models.CONFIGS and P.monitor.model in models.CONFIGS
    assert P.train.precision in P.precision.formats
    assert set(P.precision.formats) <= {"fp32", "tf32", "bf16", "fp16"}
    assert P.data.seq_len <= models.config(P.model.name, P.data.vocab_size).max_position_embeddings
