"""A DeepSeek-V3-architecture model pretrained on the profile's corpus, cached: the start of every later notebook."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

from transformers import DeepseekV3ForCausalLM

from cookbook import env, models, profiles
from cookbook.data import corpus, sources, tokenizer
from cookbook.train.batches import loader
from cookbook.train.trainer import TrainConfig, Trainer

__all__ = ["base_model", "pretrained"]


def pretrained(name: str | None = None, profile: profiles.Profile | str | None = None):
    """A DeepSeek-V3-architecture model pretrained on the stdlib corpus, and its tokenizer: (model, tokenizer).

    Trained once per (model, profile sizes, corpus fingerprint) with `cookbook.train.Trainer` and cached as
    safetensors under `cookbook.env.cache_dir()`, so later notebooks start from a real pretrained model
    whatever order they run in. `name` defaults to the profile's model; `profile` is a name or a
    `cookbook.profiles.Profile` (default: the current one). The model comes back on the CPU in eval mode.
    Shown in notebooks/04.
    """
    P = profile if isinstance(profile, profiles.Profile) else profiles.profile(profile)
    name = name or P.model.name
    if name not in models.CONFIGS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(models.CONFIGS)}")
    ds = sources.for_profile(P)  # the stdlib sample in smoke, the environment corpus in full
    recipe = dict(model=name, sizes=models.CONFIGS[name], corpus=corpus.fingerprint(ds), recipe=3,
                  data=dataclasses.asdict(P.data), train=dataclasses.asdict(P.train))
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    folder = env.cache_dir() / f"pretrained-{name}-{P.name}-{key}"
    if (folder / "model.safetensors").exists():
        with env.quiet_progress():
            return DeepseekV3ForCausalLM.from_pretrained(str(folder)).eval(), tokenizer.load(folder)

    with env.quiet_progress():
        tok = tokenizer.for_profile(P, ds)
        blocks = tokenizer.blocks_for_profile(P, tok, ds)
    model = models.build(name, len(tok), seed=0)
    config = TrainConfig.from_profile(P, eval_interval=0, progress=False)
    trainer = Trainer(model, loader(blocks["train"], P.train.batch_size, seed=0),
                      loader(blocks["validation"], P.train.batch_size, shuffle=False, drop_last=False), config)
    history = trainer.fit()
    model = trainer.model.to("cpu").eval()
    if trainer.balancer is not None:
        trainer.balancer.remove()

    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    with env.quiet_progress():
        model.save_pretrained(str(tmp))  # safetensors + config.json, loadable with from_pretrained
        tok.save_pretrained(str(tmp))
    history.drop(columns=["expert_load"], errors="ignore").to_csv(tmp / "history.csv", index=False)
    try:
        tmp.replace(folder)  # atomic: a half-written model is never picked up
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tok


def base_model(profile: profiles.Profile | str | None = None):
    """(model, tokenizer) the chapters after 04 start from: the profile's `model.base`.

    `reference` (smoke): the shipped reference model, pretrained once for ~2 hours on CPU (`models.reference()`);
    `pretrained` (full): `pretrained()`, the profile's own run, trained here and cached. Shown in notebooks/07-14.
    """
    P = profile if isinstance(profile, profiles.Profile) else profiles.profile(profile)
    if P.model.base == "reference":
        return models.reference()
    if P.model.base == "pretrained":
        return pretrained(profile=P)
    raise ValueError(f"unknown model.base {P.model.base!r} in profile {P.name!r}; valid: reference, pretrained")
