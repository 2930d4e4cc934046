"""Throughput measurement: the lever ladder, the ablation table, the plain Hugging Face loop, padded batches."""

import dataclasses
import math

import pytest
import torch

from cookbook import models, profiles, train
from cookbook.train import throughput
from tests.blocks import VOCAB, counting_ids, loader

SMOKE = profiles.PROFILES["smoke"]


def test_ladder_order_and_skips_on_cpu():
    ladder = throughput.levers(SMOKE, "cpu", moe=True)
    names = [lever.name for lever in ladder]
    assert names[0].startswith("baseline") and names[-1].startswith("+ activation checkpointing")
    assert names.index("+ packed blocks (no padding)") < names.index("+ fused linear cross-entropy")
    skipped = {lever.name: lever.skip for lever in ladder if lever.skip}
    assert skipped == {"+ fp32 matmuls": "fp32 in smoke (P.throughput.precision)",
                       "+ torch.compile": "off in smoke (P.throughput.compile)",
                       "+ CUDA graphs": "off in smoke (P.throughput.compile)"}
    bf16 = dataclasses.replace(SMOKE, throughput=dataclasses.replace(SMOKE.throughput, compile=True, precision="bf16"))
    assert {lever.name: lever.skip for lever in throughput.levers(bf16, "cpu", moe=False) if lever.skip} == {
        "+ CUDA graphs": "CUDA only"}
    cuda = {lever.name: lever for lever in throughput.levers(bf16, "cuda", moe=True)}
    assert not any(lever.skip for lever in cuda.values())
    # CUDA graphs switch compile on themselves: measured right even when the compile lever before them failed
    assert cuda["+ CUDA graphs"].config == dict(compile=True, compile_mode="reduce-overhead")
    assert throughput.levers(SMOKE, "cuda", moe=True)[1].name == "+ tf32 matmuls"  # fp32 training on a GPU: TF32
    assert not any("experts" in lever.name for lever in throughput.levers(SMOKE, "cpu", moe=False))


def _padded(n=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 24, (n,), generator=gen).tolist()
    return [row[:length].tolist() for row, length in zip(counting_ids(n, 24, seed), lengths, strict=True)]


def test_padded_loader_pads_and_refuses_empty_documents():
    docs = _padded()
    batch = next(iter(train.batches.padded_loader(docs, 4, seed=1)))
    widths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape == (4, int(widths.max()))
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert train.batches.real_tokens(batch) == int(widths.sum())
    with pytest.raises(ValueError, match="1 empty sequence"):
        train.batches.padded_loader([[1, 2], [], [3]], 2)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        train.batches.padded_loader([[1, 2]], 2)


def test_trainer_counts_real_tokens_not_padding():
    """12 documents, batches of 4, 3 steps: one epoch, so every document's tokens are counted once."""
    docs = _padded(n=12)
    config = train.TrainConfig(steps=3, log_interval=1, progress=False, device="cpu")
    trainer = train.Trainer(models.build("tiny", VOCAB, seed=0), train.batches.padded_loader(docs, 4), config=config)
    trainer.fit()
    assert trainer.tokens_seen == sum(len(d) for d in docs) < 12 * max(len(d) for d in docs)


def test_ablation_measures_each_lever_on_a_fresh_model():
    ladder = [throughput.Lever("baseline", dict(fused_optimizer=False), data="padded"),
              throughput.Lever("+ packed", data="packed"),
              throughput.Lever("+ compile", dict(compile=True), skip="not here"),
              throughput.Lever("+ fused loss", dict(fused_cross_entropy=True))]
    builds = []

    def build():
        builds.append(models.build("tiny", VOCAB, seed=0))
        return builds[-1]

    loaders = dict(padded=train.batches.padded_loader(_padded(), 4), packed=loader())
    table = throughput.ablation(build, loaders, ladder, base=train.TrainConfig(device="cpu"), steps=2, warmup=1)
    assert list(table.index) == ["baseline", "+ packed", "+ compile", "+ fused loss"]
    assert len(builds) == 3 and table.loc["+ compile", "skipped"] == "not here"
    assert table.loc["baseline", "speedup"] == 1.0 and math.isnan(table.loc["+ compile", "tokens_per_s"])
    assert (table["tokens_per_s"].dropna() > 0).all() and table["mfu"].isna().all()  # no MFU on a CPU
    with pytest.raises(ValueError, match="uses data 'big'"):
        throughput.ablation(build, loaders, [throughput.Lever("x", data="big")], base=train.TrainConfig(device="cpu"),
                            steps=1, warmup=0)


def test_a_failing_lever_is_listed_and_not_built_upon(monkeypatch):
    """A lever that raises (as a compiler error would) gets its error in the table; the next lever is measured
    without it."""
    seen = []
    real = throughput.measure

    def measure(model, loader, config, **kw):
        seen.append(config.fused_cross_entropy)
        if config.fused_cross_entropy:
            raise RuntimeError("no kernel for this device")
        return real(model, loader, config, **kw)

    monkeypatch.setattr(throughput, "measure", measure)
    ladder = [throughput.Lever("base", data="packed"), throughput.Lever("+ fused", dict(fused_cross_entropy=True)),
              throughput.Lever("+ unfused AdamW", dict(fused_optimizer=False))]
    with pytest.warns(UserWarning, match="lever '\\+ fused' failed: no kernel"):
        table = throughput.ablation(lambda: models.build("tiny", VOCAB, seed=0), dict(packed=loader()), ladder,
                                    base=train.TrainConfig(device="cpu"), steps=1, warmup=0)
    assert table.loc["+ fused", "skipped"] == "failed: RuntimeError: no kernel for this device"
    assert seen == [False, True, False] and table["tokens_per_s"].notna().sum() == 2


def test_plain_hf_loop_is_the_mean_token_loss_and_times_each_step():
    """Its first loss is transformers' own mean next-token loss of the first batch; four rows timed, two dropped."""
    batches = loader(shuffle=False)
    model = models.build("tiny", VOCAB, seed=0)
    first = next(iter(batches))["input_ids"]
    with torch.no_grad():
        expected = model(input_ids=first, labels=first).loss.item()
    summary = throughput.plain_hf(model, [{"input_ids": first}], steps=1, warmup=0, precision="fp32", device="cpu")
    assert summary["loss"] == pytest.approx(expected, rel=1e-6)
    summary = throughput.plain_hf(models.build("tiny", VOCAB, seed=0), batches, steps=2, warmup=2, precision="fp32",
                                  device="cpu")
    assert summary["tokens_per_s"] > 0 and math.isnan(summary["mfu"]) and math.isnan(summary["peak_mem_gb"])


def test_validation_loss_is_the_trainers():
    model = models.build("tiny", VOCAB, seed=0)
    val = loader(n=16, shuffle=False)
    expected = train.Trainer(model, val, val, train.TrainConfig(eval_batches=2, device="cpu")).evaluate()["val_loss"]
    assert throughput.validation_loss(model, val, precision="fp32", batches=2, device="cpu") == expected


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown compile_mode"):
        train.TrainConfig(compile_mode="fastest")
    with pytest.raises(ValueError, match="steps"):
        throughput.measure(models.build("tiny", VOCAB, seed=0), loader(), train.TrainConfig(device="cpu"), steps=0,
                           warmup=1)


# ----------------------------------------------------------------------------- CUDA paths (pytest -m gpu)
@pytest.mark.gpu
@pytest.mark.parametrize("compile_mode", [None, "default", "reduce-overhead"])
def test_cuda_fast_paths_train_like_the_plain_path(compile_mode):
    """bf16 on a GPU: the Trainer with the fused loss and grouped experts (then compiled, then with CUDA graphs)
    follows the plain Trainer's losses on the same batches, to bf16 tolerance, and reports MFU and memory."""
    def run(**switches):
        config = train.TrainConfig(steps=6, lr=3e-3, log_interval=1, progress=False, device="cuda",
                                   precision="bf16", **switches)
        return train.Trainer(models.build("tiny", VOCAB, seed=0), loader(), config=config).fit()

    compiled = {} if compile_mode is None else dict(compile=True, compile_mode=compile_mode)
    plain, fast = run(), run(fused_cross_entropy=True, grouped_experts=True, **compiled)
    assert fast["loss"].tolist() == pytest.approx(plain["loss"].tolist(), rel=3e-2)
    assert (fast["peak_mem_gb"] > 0).all()
