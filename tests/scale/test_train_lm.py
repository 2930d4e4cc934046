"""`python -m cookbook.scale.train_lm` on 2 CPU ranks (gloo): DDP and FSDP2 follow the single-process run step for
step, an FSDP2 checkpoint resumes on 1 process and on 2 ranks, and a dead rank ends the job fast and clearly."""

import re
import signal
import time

import pytest

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
