"""The same script under `accelerate launch` (the committed CPU config), DeepSpeed ZeRO-1/2 under torchrun, and
the real `deepspeed` launcher, on 2 CPU ranks.

Slow (run with `pytest -m slow tests/scale`): accelerate adds its own launcher start-up, and DeepSpeed JIT-compiles
its shared-memory communication op (deepspeed_shm_comm) on first use: about a minute on an idle 2-core machine,
3.5 minutes on a loaded one (cached in ~/.cache/torch_extensions afterwards)."""

import subprocess
import sys
from pathlib import Path

import pytest

from cookbook import scale
from cookbook.scale import train_lm
from tests.scale import ranks

ARGS, STEPS = ranks.SCRIPT[2:], 4


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert train_lm.main([*ARGS, "--steps", str(STEPS), "--out", str(out)]) == 0
    return [row["loss"] for row in ranks.history(out)]


@pytest.mark.slow
def test_accelerate_launch_runs_two_real_ranks(tmp_path, single):
    pytest.importorskip("accelerate")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ranks.ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port",
               str(ranks.free_port()), *ranks.SCRIPT, "--engine", "accelerate", "--steps", str(STEPS),
               "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ranks.ROOT, env=ranks.environment(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "engine accelerate · 2 rank(s) on cpu (gloo)" in done.stdout  # two ranks, not the MULTI_CPU trap's one
    assert [row["loss"] for row in ranks.history(tmp_path)] == pytest.approx(single, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_zero_on_two_cpu_ranks(tmp_path, single, stage):
    pytest.importorskip("deepspeed")
    history = scale.run_local([*ARGS, "--engine", "deepspeed", "--zero-stage", stage, "--steps", STEPS], tmp_path,
                              nproc=2, timeout=600)
    assert [row["loss"] for row in history] == pytest.approx(single, rel=1e-4)


@pytest.mark.slow
def test_the_deepspeed_launcher_runs_two_real_ranks_and_resumes(tmp_path, single):
    """`deepspeed --num_gpus 2 --module cookbook.scale.train_lm ...`: the launcher appends --local_rank=N (which
    the parser must accept); on a machine without GPUs DeepSpeed's CPU accelerator gives 2 gloo ranks."""
    pytest.importorskip("deepspeed")
    def launch(out, *extra):
        command = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port",
                   str(ranks.free_port()), "--module", *ranks.SCRIPT[1:], "--engine", "deepspeed", "--zero-stage", "2",
                   "--steps", str(STEPS), "--out", str(out), *extra]
        # a session of its own: the launcher signals its whole process group when a rank fails
        return subprocess.run(command, cwd=ranks.ROOT, env=ranks.environment(), capture_output=True, text=True,
                              timeout=600, start_new_session=True)
    done = launch(tmp_path / "run", "--save-every", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "engine deepspeed · 2 rank(s) on cpu (gloo)" in done.stdout
    assert [row["loss"] for row in ranks.history(tmp_path / "run")] == pytest.approx(single, rel=1e-4)
    resumed = launch(tmp_path / "resumed", "--resume", str(tmp_path / "run" / "checkpoint-000002"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [row["loss"] for row in ranks.history(tmp_path / "resumed")] == pytest.approx(single, rel=1e-4)
