"""`python -m cookbook.scale.train_lm` on 2 CPU ranks (gloo): DDP and FSDP2 follow the single-process run step for
step, an FSDP2 checkpoint resumes on 1 process and on 2 ranks, and a dead rank ends the job fast and clearly."""

import contextlib
import math
import re
import signal
import time
import types

import pytest
import torch
import torch.nn.functional as F

from cookbook import profiles, scale
from cookbook.scale import checkpoint, train_lm
from tests.scale import ranks

D = profiles.profile("smoke").dist
STEPS, SAVE = 6, 3
ARGS = ranks.SCRIPT[2:]  # the counting data, micro-batches of 2, no progress bar
FIRST_LOSS = 4.570306  # seeded tripwire: the tiny model's first step on the counting data (CPU, torch 2.13)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run per engine with the same global batch: 1 process (4 micro-steps), DDP and FSDP2 (2 ranks x 2)."""
    base = tmp_path_factory.mktemp("runs")
    assert train_lm.main([*ARGS, "--steps", str(STEPS), "--out", str(base / "single")]) == 0  # in-process
    # torchrun --standalone --nproc_per_node=2 -m cookbook.scale.train_lm ...
    scale.run_local([*ARGS, "--engine", "ddp", "--steps", STEPS], base / "ddp", nproc=2, timeout=240)
    scale.run_local([*ARGS, "--engine", "fsdp2", "--steps", STEPS, "--save-every", SAVE], base / "fsdp2", nproc=2,
                    timeout=240)
    return base


def _losses(out, key="loss"):
    return [row[key] for row in ranks.history(out) if key in row]


def test_single_process_run_is_pinned_and_learns(runs):
    losses = _losses(runs / "single")
    assert len(losses) == STEPS and losses[0] == pytest.approx(FIRST_LOSS, rel=1e-5)
    assert losses[-1] < losses[0] - 0.2


@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_two_ranks_follow_the_single_process_run(runs, engine):
    """Same global batch, summed token counts: the same loss, gradient norm and validation loss at every step."""
    for key in ("loss", "grad_norm", "val_loss"):
        assert _losses(runs / engine, key) == pytest.approx(_losses(runs / "single", key), rel=1e-5, abs=1e-6)


def test_fsdp2_checkpoint_resumes_in_one_process(runs):
    folder = runs / "fsdp2" / f"checkpoint-{SAVE:06d}"
    assert sorted(p.name for p in folder.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one file per rank
    out = runs / "resumed-1"
    assert train_lm.main([*ARGS, "--steps", str(STEPS), "--resume", str(folder),
                          "--out", str(out)]) == 0
    assert _losses(out)[SAVE:] == pytest.approx(_losses(runs / "single")[SAVE:], rel=1e-5)
    assert _losses(out, "val_loss") == pytest.approx(_losses(runs / "single", "val_loss"), rel=1e-5)


def test_fsdp2_checkpoint_resumes_on_two_ranks(runs):
    out = runs / "resumed-2"
    scale.run_local([*ARGS, "--engine", "fsdp2", "--steps", STEPS, "--resume",
                     runs / "fsdp2" / f"checkpoint-{SAVE:06d}"], out, nproc=2, timeout=240)
    assert _losses(out)[SAVE:] == pytest.approx(_losses(runs / "single")[SAVE:], rel=1e-5)


def test_resume_needs_a_complete_checkpoint_and_checks_it_before_building(tmp_path, monkeypatch):
    monkeypatch.setattr(train_lm.models, "build", lambda *a, **k: pytest.fail("built a model before checking --resume"))
    with pytest.raises(FileNotFoundError, match="no train_state.json"):
        train_lm.main([*ARGS, "--steps", "2", "--resume", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="--resume .*nowhere: no such folder"):
        train_lm.main([*ARGS, "--steps", "2", "--resume", str(tmp_path / "nowhere")])


@pytest.mark.parametrize("change, refused", [
    (["--global-batch", "4"], "global_batch: checkpoint 8, this run 4 (pass --override global_batch"),
    (["--lr", "0.01"], "lr: checkpoint 0.003, this run 0.01 (pass --override lr"),
    (["--steps", "9"], "steps: checkpoint 6, this run 9 (pass --override steps"),
    (["--model", "smoke"], "model: checkpoint 'tiny', this run 'smoke' (it cannot be overridden)"),
    (["--seed", "1"], "seed: checkpoint 0, this run 1 (it cannot be overridden)"),
])
def test_resume_with_changed_settings_is_refused_naming_the_setting(runs, monkeypatch, change, refused):
    monkeypatch.setattr(train_lm.models, "build", lambda *a, **k: pytest.fail("built a model before checking --resume"))
    folder = runs / "fsdp2" / f"checkpoint-{SAVE:06d}"
    with pytest.raises(ValueError, match=re.escape(f"resume refused, setting changed: {refused}")):
        train_lm.main([*ARGS, "--steps", str(STEPS), "--resume", str(folder), *change])


def test_an_override_is_logged_and_the_new_schedule_applies(runs, tmp_path, capsys):
    folder = runs / "fsdp2" / f"checkpoint-{SAVE:06d}"
    assert train_lm.main([*ARGS, "--steps", str(STEPS), "--resume", str(folder), "--lr", "0.006", "--override", "lr",
                          "--out", str(tmp_path)]) == 0
    assert "override lr: checkpoint 0.003, this run 0.006" in capsys.readouterr().out
    old, new = _losses(runs / "single", "lr"), _losses(tmp_path, "lr")
    assert new[:SAVE] == old[:SAVE] and new[SAVE:] == pytest.approx([2 * lr for lr in old[SAVE:]], rel=1e-12)
    state = checkpoint.read_state(tmp_path / f"checkpoint-{STEPS:06d}")
    assert state["overrides"] == ["override lr: checkpoint 0.003, this run 0.006"] and state["settings"]["lr"] == 0.006
    with pytest.raises(SystemExit, match="--override applies to --resume only"):
        train_lm.main([*ARGS, "--override", "lr"])


def test_deepspeed_without_a_launcher_names_the_command(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit, match="--engine deepspeed needs a launcher to start its ranks: deepspeed --num_gpus N"):
        train_lm.main([*ARGS, "--engine", "deepspeed"])
    assert train_lm.parse_args([*ARGS, "--local_rank=1"]).local_rank == 1  # what the deepspeed launcher appends


def test_check_resume_engines_and_world_sizes():
    dcp = dict(engine="fsdp2", world_size=2, settings=dict(lr=1.0))
    assert checkpoint.check_resume(dcp, dict(lr=1.0), engine="ddp", world_size=3) == []  # DCP: any engine, any N
    with pytest.raises(ValueError, match="written by engine fsdp2; engine deepspeed cannot read it"):
        checkpoint.check_resume(dcp, dict(lr=1.0), engine="deepspeed", world_size=2)
    zero = dict(engine="deepspeed", world_size=2, settings=dict(zero_stage=2))
    with pytest.raises(ValueError, match="world size: this DeepSpeed checkpoint was written by 2 rank"):
        checkpoint.check_resume(zero, dict(zero_stage=2), engine="deepspeed", world_size=4)
    with pytest.raises(ValueError, match="zero_stage: checkpoint 2, this run 3 \\(it cannot be overridden\\)"):
        checkpoint.check_resume(zero, dict(zero_stage=3), engine="deepspeed", world_size=2)
    with pytest.raises(ValueError, match="--override model: only global_batch, lr, warmup_fraction, steps"):
        checkpoint.check_resume(dcp, dict(lr=1.0), engine="ddp", world_size=1, overrides=["model"])


def _dead_rank(tmp_path, sig, timeout_s):
    """Kill (or freeze) rank 1 after step 2; rank 0 must end by itself, with the explanation, in bounded time."""
    procs = ranks.start_ranks(["--engine", "ddp", "--steps", 10_000, "--timeout", timeout_s], tmp_path)
    try:
        ranks.wait_for_step(tmp_path / "rank0.out", 2, procs[0], timeout=180)
        procs[1].send_signal(sig)
        start = time.monotonic()
        code = procs[0].wait(timeout=timeout_s + 60)  # subprocess.TimeoutExpired: a hang
        seconds = time.monotonic() - start
    finally:
        ranks.stop(procs)
    message = (tmp_path / "rank0.err").read_text()
    assert code == 1
    assert "rank 0 of 2: a collective failed, so another rank died or stopped responding" in message
    assert f"process-group timeout {timeout_s:g} s" in message
    return seconds


def test_a_killed_rank_ends_the_job_with_a_clear_message(tmp_path):
    # the dead rank's sockets close: rank 0's next collective fails at once (gloo: "Connection reset by peer")
    assert _dead_rank(tmp_path, signal.SIGKILL, D.timeout_s) < D.timeout_s + 30


@pytest.mark.slow
def test_a_frozen_rank_ends_the_job_after_the_timeout(tmp_path):
    # a stopped rank keeps its sockets open: only the process-group timeout ends the wait
    seconds = _dead_rank(tmp_path, signal.SIGSTOP, 5)
    assert 5 <= seconds < 5 + 40


# -- _step and _evaluate on one simulated rank of two: fast, no process group --------------------------------------

class _Rank:
    """Stand-in for `launch.World`: `all_sum` adds what the other ranks contribute (given in call order)."""

    def __init__(self, world_size, others=()):
        self.world_size, self.others, self.device, self.calls = world_size, list(others), torch.device("cpu"), 0

    def all_sum(self, value):
        self.calls += 1
        other = self.others.pop(0) if self.world_size > 1 else 0
        return torch.as_tensor(value).detach().to(torch.float64) + torch.as_tensor(other, dtype=torch.float64)


class _Bigram(torch.nn.Module):
    """Next token from the current one (a linear layer over one-hot ids); records whether it ran in training mode."""

    def __init__(self, vocab=13):
        super().__init__()
        self.vocab, self.modes = vocab, []
        self.proj = torch.nn.Linear(vocab, vocab)
        with torch.no_grad():
            self.proj.weight.copy_(torch.linspace(-1, 1, vocab * vocab).reshape(vocab, vocab).sin())
            self.proj.bias.copy_(torch.linspace(-0.5, 0.5, vocab))

    def forward(self, input_ids, attention_mask=None):
        self.modes.append(self.training)
        return types.SimpleNamespace(logits=self.proj(F.one_hot(input_ids, self.vocab).float()))


def _rank_batches():
    """Two ranks x two micro-batches of 2 sequences with different target counts, and the whole step as one batch."""
    rows = scale.ragged_counting(8, 7, 13, seed=1).rows
    micro = [{k: v[i:i + 2] for k, v in rows.items()} for i in range(0, 8, 2)]
    return micro[:2], micro[2:], rows


def _mean_loss(model, rows):
    """Reference: the big batch's mean next-token cross-entropy over its targets."""
    logits = model(input_ids=rows["input_ids"]).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), rows["labels"][:, 1:].flatten(), ignore_index=-100)


def _count(batches):
    return sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)


def _one_rank(batches, other_count, *, max_grad_norm=1e9, engine="none", balancer=None, others=()):
    model = _Bigram()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    world = _Rank(2, [other_count, *others])
    args = types.SimpleNamespace(engine=engine, precision="fp32", max_grad_norm=max_grad_norm)
    before = [p.detach().clone() for p in model.parameters()]
    loss, norm = train_lm._step(model, batches, optimizer, scheduler, balancer, world, args)
    update = [b - p.detach() for b, p in zip(before, model.parameters(), strict=True)]  # SGD, lr 1: the gradient
    return loss, norm, update, model, optimizer, scheduler


def test_step_normalises_by_the_targets_of_every_rank():
    """Two ranks' updates averaged (what DDP / FSDP do) = the gradient of the big batch's mean loss."""
    rank0, rank1, rows = _rank_batches()
    assert _count(rank0) != _count(rank1)  # uneven ranks: dividing by a rank's own count would be wrong
    reference = _Bigram()
    loss = _mean_loss(reference, rows)
    loss.backward()
    results = [_one_rank(rank0, _count(rank1)), _one_rank(rank1, _count(rank0))]
    for i, grad in enumerate(p.grad for p in reference.parameters()):
        assert torch.allclose((results[0][2][i] + results[1][2][i]) / 2, grad, rtol=1e-5, atol=1e-7)
    # the logged loss: the mean over ranks of each rank's share x N
    assert ((results[0][0] + results[1][0]) / 2).item() == pytest.approx(loss.item(), rel=1e-6)
    for step_loss, norm, update, model, _, scheduler in results:
        assert norm.item() == pytest.approx(torch.cat([u.flatten() for u in update]).norm().item(), rel=1e-5)
        assert step_loss.shape == () and scheduler.last_epoch == 1
        assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True)


def test_step_clips_the_update_to_max_grad_norm_and_reports_the_norm_before():
    rank0, rank1, _ = _rank_batches()
    _, free_norm, *_ = _one_rank(rank0, _count(rank1))
    _, norm, update, *_ = _one_rank(rank0, _count(rank1), max_grad_norm=0.01)
    assert norm.item() == pytest.approx(free_norm.item(), rel=1e-6) and free_norm.item() > 0.01
    assert torch.cat([u.flatten() for u in update]).norm().item() == pytest.approx(0.01, rel=1e-4)


def test_step_syncs_gradients_on_the_last_micro_step_only(monkeypatch):
    flags = []

    @contextlib.contextmanager
    def recording_sync(model, enabled):
        flags.append((model, enabled))
        yield

    monkeypatch.setattr(train_lm.engines, "gradient_sync", recording_sync)
    rank0, rank1, _ = _rank_batches()
    *_, model, _, _ = _one_rank(rank0 + rank1[:1], _count(rank1[1:]))
    assert flags == [(model, False), (model, False), (model, True)]  # the wrapped model: DDP's no_sync, FSDP2's flag


class _Balancer:
    """Stand-in for `models.LoadBalancer`: an expert load per (layer, expert), no aux loss."""

    def __init__(self):
        self.counts, self.seen, self.recorded = torch.tensor([[3, 1], [0, 5]]), [], 0

    @contextlib.contextmanager
    def recording(self):
        self.recorded += 1
        yield

    def aux_loss(self):
        return torch.zeros(())

    def update_bias(self):
        self.seen.append(self.counts.clone())


def test_step_moves_the_routing_biases_by_the_load_of_every_rank():
    rank0, rank1, _ = _rank_batches()
    balancer = _Balancer()
    _one_rank(rank0, _count(rank1), balancer=balancer, others=[torch.tensor([[1, 1], [2, 0]])])
    assert len(balancer.seen) == 1 and torch.equal(balancer.seen[0], torch.tensor([[4, 2], [2, 5]]))
    assert balancer.counts.dtype == torch.long and balancer.recorded == 2  # one recording per micro-batch


class _DeepSpeedEngine(torch.nn.Module):
    """Stand-in for a DeepSpeed engine: backward and step per micro-batch; records what it was given."""

    def __init__(self, norm):
        super().__init__()
        self.module, self.norm, self.scaled, self.steps = _Bigram(), norm, [], 0

    def forward(self, **batch):
        return self.module(**batch)

    def backward(self, loss, scale_wrt_gas=True):
        self.scaled.append(scale_wrt_gas)
        loss.backward()

    def step(self):
        self.steps += 1

    def get_global_grad_norm(self):
        return self.norm


@pytest.mark.parametrize("norm", [0.5, None])
def test_step_under_deepspeed_normalises_the_same_way(norm):
    rank0, rank1, _ = _rank_batches()
    torch_loss, _, update, *_ = _one_rank(rank0, _count(rank1))  # the torch path's, checked above
    engine = _DeepSpeedEngine(norm)
    world = _Rank(2, [_count(rank1), torch.zeros(2, 2)])
    args = types.SimpleNamespace(engine="deepspeed", precision="fp32", max_grad_norm=1.0)
    balancer = _Balancer()
    loss, grad_norm = train_lm._step(engine, rank0, None, None, balancer, world, args)
    for got, want in zip((p.grad for p in engine.module.parameters()), update, strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    assert engine.scaled == [False, False] and engine.steps == 2 and balancer.recorded == 2
    assert (grad_norm.item() == norm) if norm is not None else math.isnan(grad_norm.item())
    assert loss.item() == pytest.approx(torch_loss.item(), rel=1e-6)
    assert len(balancer.seen) == 1  # the biases move once a step under DeepSpeed too


def test_evaluate_divides_the_summed_losses_by_the_targets_of_every_rank():
    dataset = scale.ragged_counting(7, 7, 13, seed=2)
    mine = scale.validation_batches(dataset, micro_batch=2, rank=0, world_size=2)
    theirs = scale.validation_batches(dataset, micro_batch=2, rank=1, world_size=2)
    model = _Bigram()
    with torch.no_grad():
        their_sum = sum(_mean_loss(model, b) * _count([b]) for b in theirs if _count([b]))
        reference = _mean_loss(model, dataset.rows).item()
    model.modes.clear()
    world = _Rank(2, [their_sum, _count(theirs)])
    assert train_lm._evaluate(model, mine, world, "fp32") == pytest.approx(reference, rel=1e-6)
    assert model.modes == [False] * len(mine) and model.training  # eval mode for the forwards, then back
    alone = train_lm._evaluate(model, scale.validation_batches(dataset, micro_batch=3), _Rank(1), "fp32")
    assert alone == pytest.approx(reference, rel=1e-6)


def test_evaluate_runs_in_the_precision_asked_for():
    dataset = scale.ragged_counting(4, 7, 13, seed=3)
    batches = scale.validation_batches(dataset, micro_batch=4)
    model = _Bigram()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = _mean_loss(model, dataset.rows).item()
    got = train_lm._evaluate(model, batches, _Rank(1), "bf16")
    assert got == pytest.approx(reference, rel=1e-6)
    assert got != pytest.approx(train_lm._evaluate(model, batches, _Rank(1), "fp32"), rel=1e-6)


@pytest.mark.parametrize("engine", ["none", "deepspeed"])
def test_step_runs_the_micro_batches_in_the_precision_asked_for(engine):
    """bf16 autocast on the CPU: the step's loss is the bf16 forward's, each rank's share divided by count / N."""
    rank0, rank1, _ = _rank_batches()
    divisor = (_count(rank0) + _count(rank1)) / 2
    reference_model = _Bigram()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = sum(_mean_loss(reference_model, b) * _count([b]) for b in rank0).item() / divisor
    model = _DeepSpeedEngine(0.5) if engine == "deepspeed" else _Bigram()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    args = types.SimpleNamespace(engine=engine, precision="bf16", max_grad_norm=1e9)
    loss, _ = train_lm._step(model, rank0, optimizer, scheduler, None, _Rank(2, [_count(rank1)]), args)  # no balancer
    assert loss.item() == pytest.approx(reference, rel=1e-5)
    with torch.no_grad():
        in_fp32 = sum(_mean_loss(_Bigram(), b) * _count([b]) for b in rank0).item() / divisor
    assert loss.item() != pytest.approx(in_fp32, rel=1e-5)  # bf16 really changes the loss here


def test_write_state_only_rank_0_writes_and_every_rank_waits(tmp_path):
    barriers = []
    other = types.SimpleNamespace(main=False, barrier=lambda: barriers.append("other"))
    checkpoint.write_state(tmp_path, other, {"step": 0})
    assert list(tmp_path.iterdir()) == []
    main = types.SimpleNamespace(main=True, barrier=lambda: barriers.append("main"))
    checkpoint.write_state(tmp_path, main, {"step": 7, "lr": 0.5})
    assert barriers == ["other", "main"]
    assert [p.name for p in tmp_path.iterdir()] == ["train_state.json"]  # written whole, no .tmp left
    assert checkpoint.read_state(tmp_path) == {"step": 7, "lr": 0.5}
