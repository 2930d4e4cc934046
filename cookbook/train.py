"""The training loop: mixed precision, gradient accumulation, warm-up + cosine, clipping, checkpoints.

One readable loop for any causal LM that takes `input_ids` and returns `.logits` (transformers models,
your own nn.Module). Read `Trainer._train_step` top to bottom: it is the whole algorithm.

    trainer = Trainer(model, train_loader, val_loader, TrainConfig(steps=1000, lr=1e-3, precision="bf16"))
    history = trainer.fit()          # a pandas DataFrame, one row per logged step

Callbacks are plain objects; the trainer calls whichever of these methods they define, in list order:
`on_train_begin(trainer)`, `on_after_backward(trainer, loss)` (every optimizer step, after all micro-steps
and after fp16 unscaling, before clipping and the optimizer step), `on_step_end(trainer, logs)` (logged
steps), `on_evaluate(trainer, logs)`, `on_train_end(trainer)`. A callback stops the run gracefully with
`trainer.should_stop = True` and `trainer.stop_reason = "..."`, or aborts it by raising.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from cookbook import amp, checkpoint, memory, moe

__all__ = ["TrainConfig", "Trainer", "accumulation_error", "backward_micro_batches", "cosine_schedule", "loader", "pad_batch",
           "token_loss"]


@dataclasses.dataclass
class TrainConfig:
    """Every knob of a training run. `TrainConfig.from_profile(P)` takes the sizes from a cookbook profile."""

    steps: int = 100  # optimizer steps
    lr: float = 1e-3  # peak learning rate
    warmup: float = 0.1  # fraction of the steps with a linear warm-up
    min_lr: float = 0.1  # the cosine decays to min_lr x lr
    weight_decay: float = 0.1  # AdamW decay, on matrices only (not norms or biases)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0  # clip the global gradient norm (None: measure, don't clip)
    precision: str = "fp32"  # fp32 | tf32 | bf16 | fp16 (fp16 adds a dynamic loss scaler)
    grad_accum: int = 1  # micro-batches per optimizer step
    eval_interval: int = 0  # steps between validation passes (0: only at the end, if there is a val_loader)
    eval_batches: int | None = 10  # batches per validation pass (None: the whole val_loader)
    log_interval: int = 10  # steps between logged rows (host syncs happen only then)
    compile: bool = False  # torch.compile the model's forward
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute
    checkpoint_dir: str | Path | None = None  # where periodic checkpoints go
    checkpoint_interval: int = 0  # steps between checkpoints (0: only at the end, if checkpoint_dir is set)
    keep_checkpoints: int = 2  # newest periodic checkpoints kept in checkpoint_dir
    patience: int | None = None  # early stopping: evaluations without improvement before stopping
    moe_gamma: float = 1e-3  # auxiliary-loss-free bias update speed (0: off); MoE models only
    moe_alpha: float = 0.0  # sequence-wise auxiliary loss weight (DeepSeek-V3 uses ~1e-4)
    seed: int = 0  # data order of each epoch
    device: str | None = None  # default: cookbook.env.device()
    progress: bool = True  # tqdm progress bar

    def __post_init__(self):
        amp.check(self.precision)
        for name in ("steps", "grad_accum", "log_interval"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if not 0 <= self.min_lr <= 1:
            raise ValueError(f"min_lr is a ratio of lr in [0, 1], got {self.min_lr}")
        if self.lr <= 0 or (self.max_grad_norm is not None and self.max_grad_norm <= 0):
            raise ValueError(f"lr and max_grad_norm must be positive, got {self.lr}, {self.max_grad_norm}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 (or None), got {self.patience}")
        self.betas = tuple(self.betas)

    @classmethod
    def from_profile(cls, profile, **overrides) -> TrainConfig:
        """Steps, lr and evaluation sizes from a `cookbook.env.Profile`; any field can be overridden."""
        sizes = dict(steps=profile.steps, lr=profile.lr, eval_interval=profile.eval_interval,
                     eval_batches=profile.eval_batches, log_interval=max(1, profile.steps // 30),
                     precision=getattr(profile, "train_precision", "fp32"),
                     moe_gamma=getattr(profile, "moe_gamma", 1e-3))
        return cls(**{**sizes, **overrides})


# ----------------------------------------------------------------------------- data
def loader(ds, batch_size: int, *, shuffle: bool = True, seed: int = 0, drop_last: bool = True):
    """A DataLoader of `{"input_ids": LongTensor}` batches from a packed `datasets.Dataset` (or any dataset)."""
    if hasattr(ds, "with_format"):
        ds = ds.with_format("torch", columns=["input_ids"])
    if len(ds) < batch_size and drop_last:
        raise ValueError(f"{len(ds)} examples cannot fill one batch of {batch_size}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                       drop_last=drop_last, pin_memory=torch.cuda.is_available())


def pad_batch(sequences, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad token lists into input_ids/attention_mask/labels; padded targets are -100 (ignored)."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("pad_batch needs at least one non-empty sequence")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def _as_dict(batch) -> dict[str, torch.Tensor]:
    batch = {"input_ids": batch} if torch.is_tensor(batch) else dict(batch)
    if "input_ids" not in batch:
        raise ValueError(f"a batch needs 'input_ids'; got keys {sorted(batch)}")
    if "labels" not in batch:
        mask = batch.get("attention_mask")
        batch["labels"] = batch["input_ids"] if mask is None else batch["input_ids"].masked_fill(mask == 0, -100)
    return batch


def _targets(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the loss is computed on: every label after the first position that is not -100."""
    return int((batch["labels"][:, 1:] != -100).sum())


# ----------------------------------------------------------------------------- loss and accumulation
def token_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum (not mean) of next-token cross-entropies over the batch's targets (labels != -100)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    # Position t predicts token t+1. The loss is computed in (at least) float32, even under autocast.
    logits = logits[:, :-1].flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, batch["labels"][:, 1:].flatten(),
                           ignore_index=-100, reduction="sum")


def backward_micro_batches(model, micro_batches, *, normalize: str = "tokens", precision: str = "fp32",
                           scaler=None, balancer=None, device=None) -> torch.Tensor:
    """Forward + backward over the micro-batches of one optimizer step; returns the step's mean loss.

    The gradients left in `.grad` are those of the mean loss over every target token of the step, exactly
    as if the micro-batches were one big batch (`normalize="tokens"`). `normalize="steps"` is the naive
    recipe `mean_loss / k`, which is only right when every micro-batch holds the same number of targets.
    """
    if normalize not in ("tokens", "steps"):
        raise ValueError(f"normalize must be 'tokens' or 'steps', got {normalize!r}")
    micro_batches = [_as_dict(b) for b in micro_batches]
    counts = [_targets(b) for b in micro_batches]  # counted on the host copy: no device sync
    n_targets, n_sequences = sum(counts), sum(len(b["input_ids"]) for b in micro_batches)
    if n_targets == 0:
        raise ValueError("the micro-batches hold no target tokens (all labels are -100 or sequences have length 1)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    losses = []
    for batch, count in zip(micro_batches, counts, strict=True):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        recording = balancer.recording() if balancer is not None else contextlib.nullcontext()
        with amp.autocast(precision, device), recording:
            loss_sum = token_loss(model, batch)
        if normalize == "tokens":
            # Divide by the target tokens of the WHOLE step, not of this micro-batch: the k backward passes
            # then add up to exactly the big-batch gradient. (`mean / k` over-weights the tokens of short
            # micro-batches whenever micro-batches hold different numbers of targets.)
            loss = loss_sum / n_targets
        else:
            loss = loss_sum / max(count, 1) / len(micro_batches)
        losses.append(loss.detach())
        if balancer is not None:  # the aux loss is a mean over sequences: weight micro-batches by their share
            loss = loss + balancer.aux_loss() * (len(batch["input_ids"]) / n_sequences)
        (scaler.scale(loss) if scaler is not None else loss).backward()
    return torch.stack(losses).sum()


def _concat(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One batch holding every sequence of `batches`, right-padded to the widest (padding is masked out)."""
    width = max(b["input_ids"].shape[1] for b in batches)
    fills = {"input_ids": 0, "attention_mask": 0, "labels": -100}
    out = {}
    for key, fill in fills.items():
        parts = []
        for b in batches:
            value = b.get(key, torch.ones_like(b["input_ids"]) if key == "attention_mask" else None)
            parts.append(F.pad(value, (0, width - value.shape[1]), value=fill))
        out[key] = torch.cat(parts)
    return out


def accumulation_error(model, micro_batches, *, device="cpu"):
    """Relative gradient error of accumulating `micro_batches` vs one big batch of all their sequences.

    A DataFrame with one row per normalisation ("tokens": exact, "steps": the naive mean / k). Use a
    float64 model to see the difference between a real error and rounding.
    """
    import pandas as pd

    micro_batches = [_as_dict(b) for b in micro_batches]

    def gradient(batches, normalize):
        model.zero_grad(set_to_none=True)
        loss = backward_micro_batches(model, batches, normalize=normalize, device=device)
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        model.zero_grad(set_to_none=True)
        return loss.item(), grad

    big_loss, reference = gradient([_concat(micro_batches)], "tokens")
    rows = []
    for normalize in ("tokens", "steps"):
        loss, grad = gradient(micro_batches, normalize)
        rows.append(dict(normalize=normalize, loss=loss, big_batch_loss=big_loss,
                         relative_gradient_error=((grad - reference).norm() / reference.norm()).item()))
    return pd.DataFrame(rows).set_index("normalize")


def cosine_schedule(step: int, *, steps: int, warmup_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up from 1/warmup_steps to 1, then cosine decay to `min_ratio` at `steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(model, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with decay on matrices only, using the fused kernel (one pass over all parameters) on CUDA and CPU.

    On CPU the default per-tensor loop is ~50x slower than the fused kernel for a model with many small tensors.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    groups = [dict(params=[p for p in params if p.ndim >= 2], weight_decay=config.weight_decay),
              dict(params=[p for p in params if p.ndim < 2], weight_decay=0.0)]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas, eps=config.eps,
                             fused=device.type in ("cuda", "cpu"))


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """Trains a causal LM; see the module docstring. `history` is a DataFrame of the logged steps."""

    def __init__(self, model, train_loader, val_loader=None, config: TrainConfig | None = None, callbacks=()):
        from cookbook.env import device as default_device

        self.config = c = config or TrainConfig()
        self.device = torch.device(c.device) if c.device else default_device()
        ok, why = amp.supported(c.precision, self.device)
        if not ok:
            warnings.warn(f"precision {c.precision} on {self.device}: {why}", stacklevel=2)
        self.model = model.to(self.device)
        self.train_loader, self.val_loader, self.callbacks = train_loader, val_loader, list(callbacks)
        if c.grad_checkpointing:  # non-reentrant: works with autocast, hooks and frozen inputs
            memory.set_checkpointing(model, True)
        self.balancer = moe.LoadBalancer(model, c.moe_gamma, c.moe_alpha) if moe.routers(model) else None
        self.optimizer = _optimizer(model, c, self.device)
        schedule = functools.partial(cosine_schedule, steps=c.steps, warmup_steps=max(1, round(c.warmup * c.steps)),
                                     min_ratio=c.min_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.scaler = amp.grad_scaler(c.precision, self.device)
        self._forward = torch.compile(model) if c.compile else model
        self.step = 0  # optimizer steps done
        self.epoch, self.batch_in_epoch, self.tokens_seen = 0, 0, 0
        self.should_stop, self.stop_reason = False, ""
        self.best_val_loss, self._bad_evals = math.inf, 0
        self._rows: list[dict] = []
        self._batches = None
        self._flops_per_token = self._peak_flops = None
        self._seq_len = 0

    # -- data position: each epoch's order depends only on (seed, epoch), so a resumed run sees the same batches
    def _epoch_batches(self, skip: int):
        seed = self.config.seed * 1_000_003 + self.epoch
        if getattr(self.train_loader, "generator", None) is not None:
            self.train_loader.generator.manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # a sampler drawing its seed from torch's RNG gets a fixed one
            torch.manual_seed(seed)
            batches = iter(self.train_loader)
            first = next(batches, None)
        if first is None:
            raise ValueError("train_loader yielded no batches")
        return itertools.islice(itertools.chain([first], batches), skip, None)

    def _next_batch(self):
        for _ in range(2):
            if self._batches is None:
                self._batches = self._epoch_batches(self.batch_in_epoch)
            batch = next(self._batches, None)
            if batch is not None:
                self.batch_in_epoch += 1
                return batch
            self.epoch, self.batch_in_epoch, self._batches = self.epoch + 1, 0, None
        raise ValueError("train_loader has fewer batches than the saved position (did the data change?)")

    def _callback(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if method is not None:
                method(self, *args)

    # -- one optimizer step: the whole algorithm
    def _train_step(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        c = self.config
        micro_batches = [_as_dict(self._next_batch()) for _ in range(c.grad_accum)]
        self.model.train()
        loss = backward_micro_batches(self._forward, micro_batches, precision=c.precision, scaler=self.scaler,
                                      balancer=self.balancer, device=self.device)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # true gradients from here on (clipping needs them)
        self._callback("on_after_backward", loss)
        # Clip the global norm to max_grad_norm; the returned norm is before clipping (inf/nan on fp16 overflow).
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.max_grad_norm or math.inf)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the gradients hold inf/nan ...
            self.scaler.update()  # ... and then the scale halves; after 2000 clean steps it doubles
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.balancer is not None:
            self.balancer.update_bias()  # DeepSeek-V3: nudge each expert's routing bias toward even load
        self.step += 1
        tokens = sum(b["input_ids"].numel() for b in micro_batches)
        self._seq_len = int(micro_batches[0]["input_ids"].shape[1])  # for FLOPs per token (MFU)
        self.tokens_seen += tokens
        return loss, grad_norm, tokens

    def fit(self):
        """Train until `config.steps` optimizer steps (or a callback / early stopping stops it); the history."""
        from tqdm.auto import tqdm

        c = self.config
        bar = tqdm(total=c.steps, initial=self.step, desc="training", disable=not c.progress, leave=False)
        tf32 = amp.tf32(c.precision == "tf32") if self.device.type == "cuda" else contextlib.nullcontext()
        skipped = torch.zeros((), device=self.device)
        window_start, window_tokens = time.perf_counter(), 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._callback("on_train_begin")
        try:
            with tf32:
                while self.step < c.steps and not self.should_stop:
                    lr = self.scheduler.get_last_lr()[0]
                    loss, grad_norm, tokens = self._train_step()
                    if self.scaler is not None:  # fp16: the scaler skipped this step (counted without a sync)
                        skipped += ~torch.isfinite(grad_norm)
                    window_tokens += tokens
                    bar.update()
                    last = self.step == c.steps
                    evaluate = self.val_loader is not None and (
                        (c.eval_interval and self.step % c.eval_interval == 0) or last)
                    if self.step % c.log_interval == 0 or evaluate or last:
                        if self.device.type == "cuda":
                            torch.cuda.synchronize(self.device)  # the GPU may still be busy with queued steps
                        seconds = time.perf_counter() - window_start
                        row = self._log(loss, lr, grad_norm, skipped, window_tokens, seconds)
                        bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}")
                        skipped.zero_()
                        window_start, window_tokens = time.perf_counter(), 0
                    if evaluate:
                        self._evaluate_and_maybe_stop()
                        window_start = time.perf_counter()  # evaluation time is not training throughput
                    if c.checkpoint_dir and (last or (c.checkpoint_interval and self.step % c.checkpoint_interval == 0)):
                        self.save_checkpoint(Path(c.checkpoint_dir) / f"step-{self.step:06d}.safetensors")
                        checkpoint.prune(c.checkpoint_dir, keep=c.keep_checkpoints)
        finally:
            bar.close()
            self._callback("on_train_end")
        return self.history

    def _log(self, loss, lr, grad_norm, skipped, tokens, seconds) -> dict:
        row = dict(step=self.step, loss=loss.item(), lr=lr, grad_norm=grad_norm.item(),
                   tokens_per_s=tokens / max(seconds, 1e-9), mfu=math.nan, peak_mem_gb=math.nan,
                   skipped=int(skipped.item()), scale=self.scaler.get_scale() if self.scaler else math.nan,
                   epoch=self.epoch)
        row["mfu"] = self._mfu(row["tokens_per_s"])
        if self.device.type == "cuda":
            row["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
            torch.cuda.reset_peak_memory_stats(self.device)  # the next row reports its own window's peak
        if self.balancer is not None:
            load = self.balancer.load_fraction()
            row["load_maxvio"] = moe.max_violation(self.balancer.last_load).mean().item()
            row["expert_load"] = load.cpu().numpy().round(4)
        self._rows.append(row)
        self._callback("on_step_end", row)
        return row

    def _mfu(self, tokens_per_s: float) -> float:
        """Model FLOPs utilisation against the GPU's peak for this precision (NaN on CPU / unknown GPUs)."""
        from cookbook import planning

        if self.device.type != "cuda":
            return math.nan
        if self._flops_per_token is None:
            try:
                self._flops_per_token = planning.flops_per_token(self.model.config, self._seq_len)
                self._peak_flops = planning.peak_flops(None, self.config.precision)
            except (ValueError, AttributeError, TypeError, KeyError) as exc:
                warnings.warn(f"MFU not available: {exc}", stacklevel=3)
                self._flops_per_token = self._peak_flops = math.nan
        if math.isnan(self._peak_flops):
            return math.nan
        return planning.mfu(tokens_per_s, self._flops_per_token, self._peak_flops)

    @property
    def history(self):
        """One row per logged step (plus val_loss/val_ppl on evaluation steps), as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self._rows)

    # -- evaluation and early stopping
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean next-token loss and perplexity over `eval_batches` batches of the validation loader."""
        if self.val_loader is None:
            raise ValueError("evaluate() needs a val_loader")
        c, total, count = self.config, torch.zeros((), device=self.device), 0
        self.model.eval()
        try:
            for batch in itertools.islice(self.val_loader, c.eval_batches):
                batch = _as_dict(batch)
                count += _targets(batch)
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                with amp.autocast(c.precision, self.device):
                    total += token_loss(self._forward, batch).float()
        finally:
            self.model.train()
        if count == 0:
            raise ValueError("the validation loader yielded no target tokens")
        val_loss = total.item() / count
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}

    def _evaluate_and_maybe_stop(self) -> None:
        metrics = self.evaluate()
        if self._rows and self._rows[-1]["step"] == self.step:
            self._rows[-1].update(metrics)
        self._callback("on_evaluate", {"step": self.step, **metrics})
        if metrics["val_loss"] < self.best_val_loss:
            self.best_val_loss, self._bad_evals = metrics["val_loss"], 0
        else:
            self._bad_evals += 1
            patience = self.config.patience
            if patience is not None and self._bad_evals >= patience:
                self.should_stop = True
                self.stop_reason = (f"early stopping: validation loss has not improved for {patience} evaluation(s) "
                                    f"(best {self.best_val_loss:.4f})")

    # -- checkpoints
    def save_checkpoint(self, path) -> Path:
        """Write everything needed to resume exactly to one safetensors file, atomically; returns its path."""
        state = dict(step=self.step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                     tokens_seen=self.tokens_seen, best_val_loss=self.best_val_loss, bad_evals=self._bad_evals,
                     config={k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self.config).items()},
                     history=[{k: v.tolist() if hasattr(v, "tolist") else v for k, v in r.items()} for r in self._rows])
        return checkpoint.save(path, self.model, self.optimizer, self.scheduler, self.scaler, state)

    def load_checkpoint(self, path) -> None:
        """Restore a checkpoint file (or the newest readable one in a folder) to continue exactly where it was."""
        import numpy as np

        state = checkpoint.load(path, self.model, self.optimizer, self.scheduler, self.scaler)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.tokens_seen, self.best_val_loss, self._bad_evals = (state["tokens_seen"], state["best_val_loss"],
                                                                 state["bad_evals"])
        self._rows = [{k: np.asarray(v) if k == "expert_load" else v for k, v in r.items()} for r in state["history"]]
        self._batches = None  # re-open the data at the saved position on the next step
        self.should_stop, self.stop_reason = False, ""
