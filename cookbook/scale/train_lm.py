"""One training script for every launcher: plain python, torchrun (DDP or FSDP2), accelerate launch, deepspeed.

    python -m cookbook.scale.train_lm --data counting --steps 20                       # one process
    torchrun --nproc_per_node=2 -m cookbook.scale.train_lm --engine fsdp2 --data counting
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m cookbook.scale.train_lm \
        --engine accelerate --data counting
    deepspeed --num_gpus 8 --module cookbook.scale.train_lm --engine deepspeed --zero-stage 2
    srun --ntasks-per-node=8 python -m cookbook.scale.train_lm --engine fsdp2     # SLURM, one task per GPU
    sbatch --nodes 2 configs/slurm/train_lm.sbatch --engine fsdp2                  # SLURM, torchrun under srun

Every rank runs this file. The step (`_step`) is the cookbook's: token-normalised accumulation
(`cookbook.train.backward_micro_batches`), AdamW with decay on matrices, warm-up + cosine, clipping, and
DeepSeek-V3's bias balancing of the experts. What distribution adds, each in a few lines:
- each rank reads its own slice of every step's global batch (`data.StepBatches`);
- the step's target tokens are summed over all ranks before any loss is divided by them, so N ranks x k
  micro-batches give exactly the gradient of one big batch;
- gradients are synced only on the last micro-step (`engines.gradient_sync`);
- the MoE expert load is summed over ranks before the routing biases move, so they stay identical;
- rank 0 alone prints and writes files; checkpoints are DCP folders that load on any world size, and record
  the run's settings, so a resume with another batch, schedule, model or data is refused (or `--override`n);
- validation sees every example exactly once on any world size (`data.validation_batches`);
- a process-group timeout turns a dead rank into a clear error, and the group is destroyed on every exit.

`--data corpus` (the default) trains the profile's model on the profile's blocks with the profile's
pretraining sizes (notebook 04's run); `--data counting` trains on ragged synthetic sequences (notebook 11).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cookbook import env, models, planning
from cookbook.data import tokenizer
from cookbook.profiles import profile as profile_named
from cookbook.scale import checkpoint, data, engines, launch
from cookbook.train import precision as amp
from cookbook.train.batches import as_batch, target_count
from cookbook.train.loss import backward_micro_batches, token_loss
from cookbook.train.schedule import adamw, cosine_schedule

__all__ = ["main", "parse_args", "train"]


def parse_args(argv=None, profile=None) -> argparse.Namespace:
    """The command line; every size defaults to the profile (`--profile`, else $COOKBOOK_PROFILE / the device)."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--profile", default=None)
    first.add_argument("--data", default="corpus", choices=("corpus", "counting"))
    known, _ = first.parse_known_args(argv)
    P = profile or profile_named(known.profile)
    D, T = P.dist, P.train
    corpus = known.data == "corpus"
    parser = argparse.ArgumentParser(prog="python -m cookbook.scale.train_lm", description=__doc__.splitlines()[0],
                                     parents=[first])
    parser.add_argument("--engine", default="auto", choices=("auto", *engines.ENGINES),
                        help="auto: ddp when launched on several ranks, else none")
    parser.add_argument("--zero-stage", type=int, default=1, choices=(1, 2, 3), help="DeepSpeed ZeRO stage")
    parser.add_argument("--model", default=P.model.name if corpus else D.model, choices=tuple(models.CONFIGS))
    parser.add_argument("--steps", type=int, default=T.steps if corpus else D.steps)
    parser.add_argument("--global-batch", type=int, default=T.batch_size if corpus else D.global_batch,
                        help="sequences per optimizer step over all ranks and micro-steps")
    parser.add_argument("--micro-batch", type=int, default=None,
                        help="sequences per rank and micro-step (default: global batch / ranks)")
    parser.add_argument("--lr", type=float, default=T.lr if corpus else D.lr)
    parser.add_argument("--warmup-fraction", type=float, default=T.warmup_fraction)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--precision", default=T.precision if corpus else "fp32", choices=("fp32", "bf16"))
    parser.add_argument("--moe-gamma", type=float, default=T.moe_gamma, help="expert bias-balancing speed (0: off)")
    parser.add_argument("--eval-batches", type=int, default=T.eval_batches,
                        help="validation batches of --global-batch sequences (split over the ranks)")
    parser.add_argument("--log-interval", type=int, default=max(1, T.steps // 30) if corpus else 1,
                        help="steps between logged rows (the only steps that wait for the GPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: CUDA when available")
    parser.add_argument("--timeout", type=float, default=D.timeout_s if not corpus else 600,
                        help="process-group timeout in seconds: how long a rank waits for a dead peer")
    parser.add_argument("--out", type=Path, default=None, help="history.json and checkpoints go here (rank 0 writes)")
    parser.add_argument("--save-every", type=int, default=0, help="steps between checkpoints (0: only at the end)")
    parser.add_argument("--resume", type=Path, default=None, help="a checkpoint folder written by this script")
    parser.add_argument("--override", action="append", default=[], choices=checkpoint.OVERRIDABLE,
                        help="on --resume, accept this changed setting (logged); repeat for several")
    # the deepspeed launcher appends --local_rank=N to the script's arguments (deepspeed/launcher/launch.py,
    # unless --no_local_rank); the rank is read from LOCAL_RANK, which it sets too
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty())
    args = parser.parse_args(argv)
    args.sizes = P
    for name in ("steps", "global_batch", "eval_batches", "log_interval"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def _datasets(args, world):
    """(train, validation) datasets and the vocabulary size; rank 0 builds and caches the corpus blocks first."""
    D = args.sizes.dist
    if args.data == "counting":
        return (data.ragged_counting(D.sequences, D.seq_len, D.vocab, seed=args.seed),
                data.ragged_counting(max(1, D.sequences // 4), D.seq_len, D.vocab, seed=args.seed + 1), D.vocab)
    # the first rank of each node trains the tokenizer and tokenizes into the cache, then the others read it (a
    # cache on a filesystem that nodes share is built by several first ranks at once: each writes its own
    # temporary folder and publishes it atomically, see tokenizer.trained / blocks_for_profile)
    for turn in (True, False):
        if (world.local_rank == 0) == turn:
            tok = tokenizer.for_profile(args.sizes)
            blocks = tokenizer.blocks_for_profile(args.sizes, tok)
        world.barrier()
    fmt = dict(type="torch", columns=["input_ids"])
    return blocks["train"].with_format(**fmt), blocks["validation"].with_format(**fmt), len(tok)


def _engine(args, world_size: int) -> str:
    if args.engine == "auto":
        return "ddp" if world_size > 1 else "none"
    if args.engine == "none" and world_size > 1:
        raise ValueError(f"--engine none on {world_size} ranks would train {world_size} separate models; "
                         f"valid engines for several ranks: {', '.join(e for e in engines.ENGINES if e != 'none')}")
    return args.engine


def _deepspeed(model, optimizer, scheduler, args, grad_accum: int):
    import deepspeed  # optional (the `deepspeed` extra), heavy: imported only for this engine

    config = planning.zero_config(args.zero_stage, precision="bf16-mixed" if args.precision == "bf16" else "fp32",
                                  micro_batch_size=args.micro_batch, gradient_accumulation_steps=grad_accum,
                                  gradient_clipping=args.max_grad_norm, pin_memory=torch.cuda.is_available())
    config["steps_per_print"] = 10**9  # the script logs on rank 0 itself
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=config)
    return engine, optimizer, scheduler


def _step(model, micro_batches, optimizer, scheduler, balancer, world, args) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on every rank: (this rank's share of the step's mean loss x N, gradient norm), as
    device tensors (read them only on logged steps: `.item()` waits for the GPU)."""
    # Token-normalised accumulation across ranks: count the targets of the whole step on ALL ranks first ...
    n_targets = world.all_sum(sum(target_count(b) for b in micro_batches)).item()
    # ... and divide by count / N: DDP, FSDP and DeepSpeed *average* gradients over the N ranks, so the
    # average of N rank gradients each divided by count / N is the sum over all targets divided by count.
    divisor = n_targets / world.world_size
    loss = torch.zeros((), device=world.device)
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        if args.engine == "deepspeed":  # the engine counts micro-steps, syncs and steps at the boundary
            batch = {k: v.to(world.device) for k, v in batch.items()}
            with balancer.recording() if balancer else contextlib.nullcontext(), amp.autocast(args.precision, world.device):
                part = token_loss(model, batch) / divisor
            model.backward(part, scale_wrt_gas=False)  # already normalised: no extra 1 / grad_accum
            model.step()
        else:
            with engines.gradient_sync(model, enabled=last):  # all-reduce / reduce-scatter on the last only
                part = backward_micro_batches(model, [batch], n_targets=divisor, precision=args.precision,
                                              balancer=balancer, device=world.device)
        loss += part.detach()
    if args.engine == "deepspeed":
        grad_norm = torch.as_tensor(model.get_global_grad_norm() or math.nan)
    else:
        # FSDP2: the norm of sharded gradients is a DTensor; clip_grad_norm_ reduces it over the ranks
        grad_norm = engines.full_value(torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    if balancer is not None:
        # every rank moves the routing biases by the load of the whole step, so they stay equal everywhere
        if world.world_size > 1:
            balancer.counts = world.all_sum(balancer.counts).to(balancer.counts)
        balancer.update_bias()
    return loss, grad_norm


def _settings(args, engine: str) -> dict:
    """What a checkpoint records of its run, and a resume must match (see `checkpoint.check_resume`)."""
    sizes = args.sizes.dist if args.data == "counting" else args.sizes.data
    data_sizes = (dict(sequences=sizes.sequences, seq_len=sizes.seq_len, vocab=sizes.vocab) if args.data == "counting"
                  else dataclasses.asdict(sizes))
    settings = dict(model=args.model, data=args.data, data_sizes=data_sizes, seed=args.seed,
                    global_batch=args.global_batch, lr=args.lr, warmup_fraction=args.warmup_fraction, steps=args.steps)
    if engine == "deepspeed":
        settings["zero_stage"] = args.zero_stage  # its optimizer files are partitioned per stage
    return settings


def _restart_schedule(scheduler, base_lrs: list[float]) -> None:
    """After a resume: this run's peak lrs and schedule at the restored step (a checkpoint restores its own
    base lrs with the scheduler and optimizer; with no --override they are the same numbers)."""
    scheduler.base_lrs = list(base_lrs)
    for group, base, fn in zip(scheduler.optimizer.param_groups, base_lrs, scheduler.lr_lambdas, strict=True):
        group["initial_lr"], group["lr"] = base, base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


@torch.no_grad()
def _evaluate(model, batches, world, precision: str) -> float:
    """Mean next-token loss over every rank's validation micro-batches: summed losses / summed targets."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    model.eval()
    for batch in batches:
        batch = {k: v.to(world.device) for k, v in batch.items()}
        with amp.autocast(precision, world.device):
            total += token_loss(model, batch).double().cpu()
        count += target_count(batch)
    model.train()
    total, count = world.all_sum(total).item(), world.all_sum(count).item()
    return total / count


def train(args, world, accelerator=None, resumed: dict | None = None) -> list[dict]:
    """The run on this rank; returns the history (one row per logged step) on every rank. `resumed`: the
    checkpoint's train_state, already checked against this run (`checkpoint.check_resume`)."""
    engine = args.engine = _engine(args, world.world_size)
    if args.resume is not None and resumed is None:
        resumed = checkpoint.read_state(args.resume)
    train_set, val_set, vocab = _datasets(args, world)
    args.micro_batch = args.micro_batch or max(1, args.global_batch // world.world_size)
    batches = data.StepBatches(train_set, global_batch=args.global_batch, micro_batch=args.micro_batch,
                               rank=world.rank, world_size=world.world_size, seed=args.seed)
    # validation: the first eval_batches x global_batch sequences, each seen once by one rank (the same set and
    # the same loss on any world size)
    val_set = torch.utils.data.Subset(val_set, range(min(len(val_set), args.eval_batches * args.global_batch)))
    val_batches = data.validation_batches(val_set, micro_batch=args.micro_batch, rank=world.rank,
                                          world_size=world.world_size)

    model = models.build(args.model, vocab, seed=args.seed)  # the same initial weights on every rank
    balancer = models.LoadBalancer(model, args.moe_gamma) if models.routers(model) and args.moe_gamma > 0 else None
    if engine in ("none", "ddp", "fsdp2"):
        model = engines.wrap(model, engine, world)
    else:
        model = model.to(world.device)
    # the optimizer is built after sharding: under FSDP2 it sees (and keeps states for) the local shards only
    optimizer = adamw(model, lr=args.lr, device=world.device, router_lr_ratio=0.1)
    schedule = functools.partial(cosine_schedule, steps=args.steps,
                                 warmup_steps=max(1, round(args.warmup_fraction * args.steps)), min_ratio=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if engine == "accelerate":
        model, optimizer = accelerator.prepare(model, optimizer)
    elif engine == "deepspeed":
        model, optimizer, scheduler = _deepspeed(model, optimizer, scheduler, args, batches.grad_accum)

    # DCP checkpoints for torch's wrappers (they load on any world size); DeepSpeed writes its own format
    raw_optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate wraps the torch optimizer
    start, history = 0, []
    if args.resume is not None:
        base_lrs = list(scheduler.base_lrs)  # this run's; loading brings the checkpoint's
        if engine == "deepspeed":
            model.load_checkpoint(str(args.resume.parent), tag=args.resume.name)
        else:
            checkpoint.load(args.resume, model, raw_optimizer)
            scheduler.load_state_dict(resumed["scheduler"])
        _restart_schedule(scheduler, base_lrs)
        start, history = resumed["step"], resumed["history"]
        world.print(f"resumed from {args.resume.name} at step {start} (saved by {resumed['world_size']} rank(s))")
    world.print(f"engine {engine} · {world.world_size} rank(s) on {world.device} ({world.backend}) · global batch "
                f"{args.global_batch} = {world.world_size} rank(s) x {batches.grad_accum} micro-step(s) x "
                f"{args.micro_batch} sequences · {args.steps} steps")

    def save(step: int) -> None:
        state = dict(step=step, world_size=world.world_size, engine=engine, scheduler=scheduler.state_dict(),
                     history=history, settings=_settings(args, engine),
                     overrides=[*(resumed or {}).get("overrides", []), *getattr(args, "overridden", [])])
        if engine == "deepspeed":  # the scheduler is inside the engine's checkpoint; the state beside it
            model.save_checkpoint(str(args.out), tag=f"checkpoint-{step:06d}")
            checkpoint.write_state(args.out / f"checkpoint-{step:06d}", world, state)
        else:
            checkpoint.save(args.out / f"checkpoint-{step:06d}", model, raw_optimizer, world, state)

    bar = tqdm(total=args.steps, initial=start, desc="training", disable=not (world.main and args.progress))
    window = time.perf_counter()
    for step in range(start, args.steps):
        lr = scheduler.get_last_lr()[0]
        loss, grad_norm = _step(model, [as_batch(b) for b in batches.step(step)], optimizer, scheduler, balancer,
                                world, args)
        bar.update()
        done = step + 1
        if done % args.log_interval == 0 or done == args.steps:
            # the mean loss of the step over every rank's targets (each rank holds its share x N)
            row = dict(step=done, loss=world.all_sum(loss).item() / world.world_size, lr=lr,
                       grad_norm=float(grad_norm),
                       seconds_per_step=(time.perf_counter() - window) / args.log_interval)
            if done == args.steps:
                row["val_loss"] = _evaluate(model, val_batches, world, args.precision)
            history.append(row)
            world.print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}))
            window = time.perf_counter()
        if args.out is not None and (done == args.steps or (args.save_every and done % args.save_every == 0)):
            save(done)
    bar.close()
    if world.main and args.out is not None:
        (args.out / "history.json").write_text(json.dumps(history, indent=1))
    return history


def main(argv=None) -> int:
    """Entry point of `python -m cookbook.scale.train_lm`; returns the exit status."""
    args = parse_args(argv)
    launch.from_slurm()  # srun's tasks become ranks of one world (not N separate runs)
    if args.local_rank is not None and args.local_rank != int(os.environ.get("LOCAL_RANK", args.local_rank)):
        raise SystemExit(f"--local_rank={args.local_rank} but LOCAL_RANK={os.environ['LOCAL_RANK']}: two launchers?")
    if args.engine == "deepspeed" and not launch.launched():
        raise SystemExit("--engine deepspeed needs a launcher to start its ranks: deepspeed --num_gpus N --module "
                         "cookbook.scale.train_lm --engine deepspeed ..., or torchrun --nproc_per_node=N -m "
                         "cookbook.scale.train_lm --engine deepspeed ... (use --engine none for one process)")
    resumed = None
    if args.resume is not None:  # checked before anything is built: a wrong folder or setting fails in a second
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        resumed = checkpoint.read_state(args.resume)
        engine = _engine(args, world_size)
        args.overridden = checkpoint.check_resume(resumed, _settings(args, engine), engine=engine,
                                                  world_size=world_size, overrides=args.override)
        for line in args.overridden:  # logged: printed by rank 0 and kept in the next checkpoints' state
            if int(os.environ.get("RANK", 0)) == 0:
                print(line, flush=True)
    elif args.override:
        raise SystemExit("--override applies to --resume only")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    accelerator = None
    if args.engine == "accelerate":
        from accelerate import Accelerator  # imported only for this engine (it sets the process group up)
        from accelerate.utils import InitProcessGroupKwargs

        # cpu=True is what makes `accelerate launch --multi_gpu` start real gloo ranks on a machine without GPUs
        cpu = (args.device or env.device().type) == "cpu"
        accelerator = Accelerator(cpu=cpu, kwargs_handlers=[
            InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=args.timeout))])
    elif args.engine == "deepspeed":
        import deepspeed  # optional; it must create the group itself (its communication backend wraps it)

        cpu = (args.device or env.device().type) == "cpu"
        deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl",
                                   timeout=datetime.timedelta(seconds=args.timeout), verbose=False)
    with launch.session(timeout_s=args.timeout, device=args.device, init=args.engine not in ("accelerate", "deepspeed")) as world:
        train(args, world, accelerator, resumed)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked DataLoader workers: no tokenizer warnings
    raise SystemExit(main())
