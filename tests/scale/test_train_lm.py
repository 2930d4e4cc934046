"""`python -m cookbook.scale.train_lm` on 2 CPU ranks (gloo): DDP and FSDP2 follow the single-process run step for
step, an FSDP2 checkpoint resumes on 1 process and on 2 ranks, and a dead rank ends the job fast and clearly."""

import signal
import time

import pytest

from cookbook import profiles, scale
from cookbook.scale import train_lm
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


def test_resume_needs_a_complete_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no train_state.json"):
        train_lm.main([*ARGS, "--steps", "2", "--resume", str(tmp_path)])


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
