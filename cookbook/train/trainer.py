"""The training loop: mixed precision, gradient accumulation, warm-up + cosine, clipping, checkpoints.

One readable loop for any causal LM that takes `input_ids` and returns `.logits` (transformers models,
your own nn.Module). Read `Trainer._train_step` top to bottom: it is the whole algorithm.

    trainer = Trainer(model, train_loader, val_loader, TrainConfig(steps=1000, lr=1e-3, precision="bf16"))
    history = trainer.fit()          # a pandas DataFrame, one row per logged step

Callbacks are plain objects; the trainer calls whichever of these methods they define, in list order:
`on_train_begin(trainer)`, `on_after_backward(trainer, loss)` (every optimizer step, after all micro-steps
and after fp16 unscaling, before clipping and the optimizer step), `on_step_end(trainer, logs)` (logged
steps), `on_evaluate(trainer, logs)`, `on_train_end(trainer)`. A callback stops the run gracefully with
`trainer.should_stop = True` and `trainer.stop_reason = "..."`, or aborts it by raising; early stopping is
such a callback (`cookbook.monitor.EarlyStopping`, or a TrainingMonitor's `stalled` rule). Callbacks with a
`state_dict()` are saved in checkpoints and restored by `load_checkpoint` (`load_state_dict`).

MoE models (routers found by `cookbook.models.routers`) get DeepSeek-V3's bias balancing, counted on real
tokens only (attention_mask 1), and their routers learn at `router_lr_ratio` x lr.
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

import datasets
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cookbook import checkpoint, env, models, planning
from cookbook.checks import positive_int
from cookbook.train import precision as amp
from cookbook.train.batches import as_batch, real_tokens, target_count
from cookbook.train.loss import backward_micro_batches, decoder_and_head, fused_token_loss, token_loss
from cookbook.train.memory import set_checkpointing
from cookbook.train.schedule import adamw, cosine_schedule

__all__ = ["COMPILE_MODES", "TrainConfig", "Trainer"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


@dataclasses.dataclass
class TrainConfig:
    """Every knob of a training run. `TrainConfig.from_profile(P)` takes the sizes from a cookbook profile."""

    steps: int = 100  # optimizer steps
    lr: float = 1e-3  # peak learning rate
    warmup_fraction: float = 0.1  # fraction of the steps with a linear warm-up
    min_lr_ratio: float = 0.1  # the cosine decays to min_lr_ratio x lr (a ratio, not an absolute lr)
    weight_decay: float = 0.1  # AdamW decay, on matrices only (not norms or biases)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    fused_optimizer: bool = True  # one fused AdamW kernel (False: torch's per-tensor loop)
    max_grad_norm: float | None = 1.0  # clip the global gradient norm (None: measure, don't clip)
    precision: str = "fp32"  # fp32 | tf32 | bf16 | fp16 (fp16 adds a dynamic loss scaler)
    grad_accum: int = 1  # micro-batches per optimizer step
    eval_interval: int = 0  # steps between validation passes (0: only at the end, if there is a val_loader)
    eval_batches: int | None = 10  # batches per validation pass (None: the whole val_loader)
    log_interval: int = 10  # steps between logged rows (host syncs happen only then)
    compile: bool = False  # torch.compile the model's forward
    compile_mode: str = "default"  # torch.compile mode: "reduce-overhead" adds CUDA graphs, "max-autotune" ...
    fused_cross_entropy: bool = False  # loss without the (tokens x vocab) logits (train.fused_token_loss)
    grouped_experts: bool = False  # MoE experts as grouped GEMMs on bf16 copies of fp32 weights (models.experts)
    activation_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute
    checkpoint_dir: str | Path | None = None  # where periodic checkpoints go
    checkpoint_interval: int = 0  # steps between checkpoints (0: only at the end, if checkpoint_dir is set)
    keep_checkpoints: int = 2  # newest periodic checkpoints kept in checkpoint_dir
    moe_gamma: float = 1e-3  # auxiliary-loss-free bias update speed (0: off); MoE models only
    moe_alpha: float = 0.0  # sequence-wise auxiliary loss weight (DeepSeek-V3 uses ~1e-4)
    router_lr_ratio: float = 0.1  # MoE routers learn at this x lr: early winners are not reinforced faster than
    # the bias balancing can even them out (smoke runs: MaxVio above 2 on 13 of 30 steps at 1.0, 5 at 0.1)
    seed: int = 0  # data order of each epoch
    device: str | None = None  # default: cookbook.env.device()
    progress: bool = True  # tqdm progress bar

    def __post_init__(self):
        amp.check(self.precision)
        for name in ("steps", "grad_accum", "log_interval"):
            positive_int(name, getattr(self, name))
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction is a fraction of the steps in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio is a ratio of lr in [0, 1], got {self.min_lr_ratio} (an absolute "
                             "minimum lr divided by lr gives it)")
        if self.lr <= 0 or (self.max_grad_norm is not None and self.max_grad_norm <= 0):
            raise ValueError(f"lr and max_grad_norm must be positive, got {self.lr}, {self.max_grad_norm}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile_mode {self.compile_mode!r}; valid: {', '.join(COMPILE_MODES)}")
        if not self.router_lr_ratio > 0 or self.moe_gamma < 0 or self.moe_alpha < 0:
            raise ValueError(f"need router_lr_ratio > 0, moe_gamma >= 0 and moe_alpha >= 0; got "
                             f"{self.router_lr_ratio}, {self.moe_gamma}, {self.moe_alpha}")
        self.betas = tuple(self.betas)

    @classmethod
    def from_profile(cls, profile, **overrides) -> TrainConfig:
        """Steps, lr, precision and evaluation sizes from a profile's `train` section; any field can be overridden."""
        t = profile.train
        sizes = dict(steps=t.steps, lr=t.lr, eval_interval=t.eval_interval, eval_batches=t.eval_batches,
                     log_interval=max(1, t.steps // 30), precision=t.precision, moe_gamma=t.moe_gamma,
                     warmup_fraction=t.warmup_fraction)
        return cls(**{**sizes, **overrides})




# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """Trains a causal LM; see the module docstring. `history` is a DataFrame of the logged steps."""

    def __init__(self, model, train_loader, val_loader=None, config: TrainConfig | None = None, callbacks=(), *,
                 loss_fn=token_loss):
        """`loss_fn(model, batch)` is the training loss summed over target tokens (see `backward_micro_batches`);
        `evaluate` always reports `token_loss`, so validation losses stay comparable across objectives."""
        self.config = c = config or TrainConfig()
        if c.fused_cross_entropy and loss_fn is not token_loss:
            raise ValueError("fused_cross_entropy replaces token_loss; a custom loss_fn computes its own loss")
        self.loss_fn = fused_token_loss if c.fused_cross_entropy else loss_fn
        self.device = torch.device(c.device) if c.device else env.device()
        ok, why = amp.supported(c.precision, self.device)
        if not ok:
            warnings.warn(f"precision {c.precision} on {self.device}: {why}", stacklevel=2)
        for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
            _check_loader(name, loader)
        self.model = model.to(self.device)
        self.train_loader, self.val_loader, self.callbacks = train_loader, val_loader, list(callbacks)
        self._vocab_size = _vocab_size(model)
        if c.activation_checkpointing:  # non-reentrant: works with autocast, hooks and frozen inputs
            set_checkpointing(model, True)
        self.balancer = models.LoadBalancer(model, c.moe_gamma, c.moe_alpha) if models.routers(model) else None
        self.optimizer = adamw(model, lr=c.lr, weight_decay=c.weight_decay, betas=c.betas, eps=c.eps, device=self.device,
                               router_lr_ratio=c.router_lr_ratio, fused=c.fused_optimizer)
        schedule = functools.partial(cosine_schedule, steps=c.steps,
                                     warmup_steps=max(1, round(c.warmup_fraction * c.steps)), min_ratio=c.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.scaler = amp.grad_scaler(c.precision, self.device)
        if c.grouped_experts:
            models.use_grouped_experts(model)
        self._forward = _compiled(model, c) if c.compile else model
        self.step = 0  # optimizer steps done
        self.epoch, self.batch_in_epoch, self.tokens_seen = 0, 0, 0
        self.should_stop, self.stop_reason = False, ""
        self.best_val_loss = math.inf
        self._rows: list[dict] = []
        self._batches = None
        self._flops_per_token = self._peak_flops = None
        self._seq_len = 0
        self._ids_checked = False

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

    def _check_batch(self, batch, source: str) -> dict[str, torch.Tensor]:
        """The batch as a dict, after checking what would otherwise fail deep inside the model."""
        batch = as_batch(batch)
        ids = batch["input_ids"]
        if not torch.is_tensor(ids) or ids.dim() != 2:
            what = f"a {ids.dim()}-d tensor" if torch.is_tensor(ids) else f"a {type(ids).__name__}"
            raise TypeError(f"{source} yielded input_ids as {what}; the Trainer needs batches of shape (batch, "
                            "seq_len): iterate a DataLoader such as cookbook.train.loader(dataset, batch_size)")
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TypeError(f"{source} yielded input_ids of dtype {ids.dtype}; token ids are integers")
        # Host tensors are checked for free; a loader that yields device tensors only once (a sync otherwise).
        if self._vocab_size is not None and ids.numel() and (ids.device.type == "cpu" or not self._ids_checked):
            self._ids_checked = True
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= self._vocab_size:
                raise ValueError(f"{source} yielded token id {high if high >= self._vocab_size else low}, but the model "
                                 f"embeds {self._vocab_size} tokens (ids 0..{self._vocab_size - 1}): the tokenizer "
                                 f"has at least {high + 1} ids; build the model with vocab_size=len(tokenizer)")
        return batch

    def _callback(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if method is not None:
                method(self, *args)

    # -- one optimizer step: the whole algorithm
    def _train_step(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        c = self.config
        micro_batches = [self._check_batch(self._next_batch(), "train_loader") for _ in range(c.grad_accum)]
        self.model.train()
        if c.compile and c.compile_mode == "reduce-overhead":  # CUDA graphs: a new step may reuse their outputs
            torch.compiler.cudagraph_mark_step_begin()
        loss = backward_micro_batches(self._forward, micro_batches, precision=c.precision, scaler=self.scaler,
                                      balancer=self.balancer, device=self.device, loss_fn=self.loss_fn)
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
        tokens = sum(real_tokens(b) for b in micro_batches)  # padding is not throughput
        self._seq_len = int(micro_batches[0]["input_ids"].shape[1])  # for FLOPs per token (MFU)
        self.tokens_seen += tokens
        return loss, grad_norm, tokens

    def fit(self):
        """Train until `config.steps` optimizer steps (or a callback / early stopping stops it); the history."""
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
                        self._evaluate()
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
            row["load_maxvio"] = models.max_violation(self.balancer.last_load).mean().item()
            row["expert_load"] = load.cpu().numpy().round(4)
        self._rows.append(row)
        self._callback("on_step_end", row)
        return row

    def _mfu(self, tokens_per_s: float) -> float:
        """Model FLOPs utilisation against the GPU's peak for this precision (NaN on CPU / unknown GPUs)."""
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
                batch = self._check_batch(batch, "val_loader")
                count += target_count(batch)
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                with amp.autocast(c.precision, self.device):
                    total += token_loss(self._forward, batch).float()
        finally:
            self.model.train()
        if count == 0:
            raise ValueError("the validation loader yielded no target tokens")
        val_loss = total.item() / count
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}

    def _evaluate(self) -> None:
        metrics = self.evaluate()
        if self._rows and self._rows[-1]["step"] == self.step:
            self._rows[-1].update(metrics)
        self.best_val_loss = min(self.best_val_loss, metrics["val_loss"])
        self._callback("on_evaluate", {"step": self.step, **metrics})  # early stopping is a callback's decision

    # -- checkpoints
    def save_checkpoint(self, path) -> Path:
        """Write everything needed to resume exactly to one safetensors file, atomically; returns its path."""
        state = dict(step=self.step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                     tokens_seen=self.tokens_seen, best_val_loss=self.best_val_loss,
                     # callbacks with state (an early-stopping counter ...) resume where they were
                     callbacks=[cb.state_dict() if hasattr(cb, "state_dict") else None for cb in self.callbacks],
                     config={k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self.config).items()},
                     history=[{k: v.tolist() if hasattr(v, "tolist") else v for k, v in r.items()} for r in self._rows])
        return checkpoint.save(path, self.model, self.optimizer, self.scheduler, self.scaler, state)

    def load_checkpoint(self, path) -> None:
        """Restore a checkpoint file (or the newest readable one in a folder) to continue exactly where it was."""
        state = checkpoint.load(path, self.model, self.optimizer, self.scheduler, self.scaler)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.tokens_seen, self.best_val_loss = state["tokens_seen"], state["best_val_loss"]
        saved = state.get("callbacks", [])
        if len(saved) != len(self.callbacks) and any(s is not None for s in saved):
            raise ValueError(f"the checkpoint holds the state of {len(saved)} callbacks, this trainer has "
                             f"{len(self.callbacks)}: pass the same callbacks, in the same order")
        for cb, cb_state in zip(self.callbacks, saved, strict=False):
            if cb_state is not None and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(cb_state)
        self._rows = [{k: np.asarray(v) if k == "expert_load" else v for k, v in r.items()} for r in state["history"]]
        self._batches = None  # re-open the data at the saved position on the next step
        self.should_stop, self.stop_reason = False, ""


def _compiled(model, c: TrainConfig):
    """The forward the loop calls. The fused loss runs the decoder and the head separately, so there the decoder
    is compiled in place (`nn.Module.compile`) and the chunked head stays eager; otherwise the whole model."""
    if c.fused_cross_entropy:
        decoder_and_head(model)[0].compile(mode=c.compile_mode)
        return model
    return torch.compile(model, mode=c.compile_mode)


def _check_loader(name: str, loader) -> None:
    """A dataset yields single examples, not batches: say so, instead of failing inside the loss."""
    hugging_face = (datasets.Dataset, datasets.DatasetDict, datasets.IterableDataset, datasets.IterableDatasetDict)
    torch_map_style = isinstance(loader, torch.utils.data.Dataset) and not isinstance(loader, torch.utils.data.IterableDataset)
    if isinstance(loader, hugging_face) or torch_map_style:
        raise TypeError(f"{name} is a {type(loader).__name__}, which yields single examples; the Trainer takes "
                        "batches: pass a DataLoader, e.g. cookbook.train.loader(dataset, batch_size)")


def _vocab_size(model) -> int | None:
    """Rows of the model's input embedding (the largest token id + 1 it accepts), or None if it has none."""
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embedding = None
    if embedding is None:
        embedding = next((m for m in model.modules() if isinstance(m, torch.nn.Embedding)), None)
    return getattr(embedding, "num_embeddings", None)
