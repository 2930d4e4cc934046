"""What a cluster adds: srun's tasks as ranks (SLURM variables set by hand for 3 processes), the sbatch template
run end to end (torchrun under a stand-in `srun` / `scontrol`), and validation equal on 1, 2 and 3 ranks.

Global batch 12 (divisible by 2 x 2 and 3 x 2) and 64 validation sequences (6 batches of 12, capped by the
64-sequence validation set), which no split over 3 ranks shares out evenly: the old padded sampler gave
4.41945 (1 process) vs 4.420996 (3 ranks)."""

import os
import stat
import subprocess
import sys

import datasets
import pytest

from cookbook.data import tokenizer
from cookbook.scale import train_lm
from tests.scale import ranks

ARGS = [*ranks.SCRIPT[2:], "--global-batch", "12", "--eval-batches", "6", "--steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single-gb12")
    assert train_lm.main([*ARGS, "--out", str(out)]) == 0
    return ranks.history(out)


def _same_run(history, single):
    for key in ("loss", "grad_norm", "val_loss"):
        got, want = [r[key] for r in history if key in r], [r[key] for r in single if key in r]
        assert got == pytest.approx(want, rel=1e-6), key


def test_srun_tasks_train_one_model_on_three_ranks(tmp_path, single):
    """`srun --ntasks 3 python -m cookbook.scale.train_lm`: SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID only."""
    port, procs = ranks.free_port(), []
    for task in range(3):
        env = ranks.environment(SLURM_PROCID=str(task), SLURM_NTASKS="3", SLURM_LOCALID=str(task), SLURM_NNODES="1",
                                SLURM_JOB_ID="4242", MASTER_PORT=str(port))
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
            env.pop(name, None)
        with open(tmp_path / f"task{task}.out", "w") as out, open(tmp_path / f"task{task}.err", "w") as err:
            procs.append(subprocess.Popen([sys.executable, *ranks.SCRIPT, *ARGS[len(ranks.SCRIPT) - 2:], "--engine",
                                           "fsdp2", "--out", str(tmp_path)], cwd=ranks.ROOT, env=env, stdout=out,
                                          stderr=err))
    try:
        codes = [proc.wait(timeout=240) for proc in procs]
    finally:
        ranks.stop(procs)
    assert codes == [0, 0, 0], (tmp_path / "task0.err").read_text()[-3000:]
    assert "engine fsdp2 · 3 rank(s) on cpu (gloo)" in (tmp_path / "task0.out").read_text()  # one world, not 3 runs
    assert (tmp_path / "task1.out").read_text() == ""  # only rank 0 prints
    _same_run(ranks.history(tmp_path), single)


def _stand_in(folder, name, body):
    path = folder / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_sbatch_template_runs_torchrun_under_srun(tmp_path, single):
    """configs/slurm/train_lm.sbatch on a 1-node "allocation": `srun` and `scontrol` are stand-ins that run the
    command once and name this host; torchrun starts 2 CPU ranks that meet at the rendezvous the template builds."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    # srun --ntasks-per-node=1 --kill-on-bad-exit=1 CMD...: one node, one task: run CMD as task 0 of 1
    _stand_in(bin_, "srun", 'while [[ "$1" == --* ]]; do shift; done\n'
                            'SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_LOCALID=0 exec "$@"')
    _stand_in(bin_, "scontrol", '[[ "$1 $2 $3" == "show hostnames localhost" ]] && echo localhost')
    env = ranks.environment(PATH=f"{bin_}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="777",
                            SLURM_JOB_NODELIST="localhost", SLURM_JOB_NUM_NODES="1", GPUS_PER_NODE="2",
                            MASTER_PORT=str(ranks.free_port()), PYTHON=sys.executable, SLURM_SUBMIT_DIR=str(ranks.ROOT))
    done = subprocess.run(["bash", "configs/slurm/train_lm.sbatch", *ARGS, "--engine", "ddp", "--out", str(tmp_path)],
                          cwd=ranks.ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "job 777: 1 node(s) x 2 GPU(s), rendezvous localhost:" in done.stdout
    assert "engine ddp · 2 rank(s) on cpu (gloo)" in done.stdout
    _same_run(ranks.history(tmp_path), single)


def test_sbatch_template_names_every_requirement():
    text = (ranks.ROOT / "configs" / "slurm" / "train_lm.sbatch").read_text()
    assert '--rdzv-id="$SLURM_JOB_ID"' in text and 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in text
    assert "#SBATCH --ntasks-per-node=1" in text and "$COOKBOOK_CACHE" in text
    assert subprocess.run(["bash", "-n", str(ranks.ROOT / "configs" / "slurm" / "train_lm.sbatch")]).returncode == 0


def test_a_tokenizer_another_rank_published_first_is_kept(tmp_path, monkeypatch):
    """Two ranks of a node train the profile's tokenizer at once into one cache (before: one fixed `.tmp` folder,
    and the second publish failed with "Directory not empty"). The loser keeps the winner's tokenizer."""
    ds = datasets.Dataset.from_dict({"text": [f"def f{i}(x):\n    return x + {i}\n" for i in range(40)]})
    real_train, published = tokenizer.train, []

    def another_rank_finishes_first(texts, vocab_size):
        monkeypatch.setattr(tokenizer, "train", real_train)
        published.append(tokenizer.trained(ds, vocab_size, cache=tmp_path))  # the other rank, start to end
        return real_train(texts, vocab_size)

    monkeypatch.setattr(tokenizer, "train", another_rank_finishes_first)
    mine = tokenizer.trained(ds, 300, cache=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [p.name for p in tmp_path.glob("tokenizer-300-*")]  # no tmp left
    assert len(published) == 1 and mine.get_vocab() == published[0].get_vocab()
