"""Run profiles: the single source of every size a notebook uses, one small section per part of the series.

`smoke` runs each notebook in minutes on a 2-core CPU; `full` is a real run on one GPU. The default is
`full` when CUDA is available, else `smoke`; `$COOKBOOK_PROFILE` overrides it.

    P = profile()
    P.train.steps, P.data.seq_len, P.model.name

`full` is sized for a short GPU window (the whole series in minutes on one H200). With more GPU time, scale
its pretraining up: `COOKBOOK_SCALE=4` gives 4x the optimizer steps, 4x the evaluation interval (the same
number of evaluations) and 4x the training-token cap (the same share of an epoch while the corpus is larger
than the cap; the run reports its epochs).
"""

from __future__ import annotations

import dataclasses
import os

import torch

__all__ = ["PROFILES", "CaseSizes", "DataSizes", "DeploySizes", "DistSizes", "DistillSizes", "EvaluateSizes",
           "LoraSizes", "MemorySizes", "ModelSizes", "MonitorSizes", "PrecisionSizes", "Profile", "QuantSizes",
           "RobustSizes", "ThroughputSizes", "TrainSizes", "profile", "scaled"]


@dataclasses.dataclass(frozen=True)
class DataSizes:
    """Corpus and tokenizer (notebooks 01-02)."""

    vocab_size: int  # BPE vocabulary trained on the corpus
    tokenizer_fraction: float  # share of the training split the tokenizer learns from
    data_fraction: float  # share of the corpus the notebooks train on
    seq_len: int  # tokens per packed block
    semantic_sample: int  # texts embedded for semantic deduplication (notebook 01)
    corpus: str = "stdlib"  # stdlib (the standard library) | environment (every installed .py, cleaned)
    max_train_tokens: int | None = None  # cap on training tokens (blocks x seq_len); None: all of the split


@dataclasses.dataclass(frozen=True)
class ModelSizes:
    """The model of the series (notebook 03 on): a name from `cookbook.models.CONFIGS`."""

    name: str
    sample_tokens: int  # new tokens when sampling from a model
    base: str = "pretrained"  # the model chapters 07-14 start from: pretrained (trained here, cached) | reference
    # (the shipped reference model, cookbook.models.reference(): a CPU cannot pretrain a useful model in minutes)


@dataclasses.dataclass(frozen=True)
class TrainSizes:
    """The pretraining run (notebook 04, `train.pretrained`)."""

    steps: int  # optimizer steps
    batch_size: int  # sequences per optimizer micro-step
    lr: float  # peak learning rate
    eval_interval: int  # steps between validation passes
    eval_batches: int  # batches per validation pass
    precision: str  # fp32 | tf32 | bf16 | fp16
    moe_gamma: float  # MoE bias-balancing speed (DeepSeek-V3: 1e-3; short runs need a larger one)
    warmup_fraction: float = 0.1  # share of the steps with a linear lr warm-up


@dataclasses.dataclass(frozen=True)
class ThroughputSizes:
    """Training throughput (notebook 04 §9, benchmarks/train_throughput.py): timed steps of each setting."""

    batch_size: int  # sequences of data.seq_len tokens per step (packed), documents per step (padded)
    big_batch: int  # the batch-size lever
    warmup: int  # untimed steps first (compilation, allocator, first launches)
    steps: int  # timed steps; the median is reported
    precision: str  # the 16-bit lever (bf16 | fp16; fp32 means TF32 on a GPU, and no lever on a CPU)
    compile: bool  # the torch.compile and CUDA-graph levers
    train_steps: int  # steps of the plain-vs-cookbook runs whose validation losses are compared
    eval_batches: int  # validation batches behind that comparison
    dense: tuple[int, int, int, int, int]  # MFU run of a dense Llama: hidden, layers, vocab, batch, seq_len


@dataclasses.dataclass(frozen=True)
class PrecisionSizes:
    """The side-by-side precision comparison (notebook 04)."""

    formats: tuple[str, ...]  # precisions compared
    steps: int  # optimizer steps of each comparison run


@dataclasses.dataclass(frozen=True)
class MemorySizes:
    """Gradient accumulation and memory (notebook 05)."""

    grad_accum: int  # micro-batches per optimizer step in the accumulation demo
    micro_batches: tuple[int, ...]  # micro-batch sizes of the memory sweep
    check_steps: int  # steps of the big-batch vs accumulated Trainer runs


@dataclasses.dataclass(frozen=True)
class MonitorSizes:
    """The short diagnostic runs (notebook 06)."""

    model: str  # a name from cookbook.models.CONFIGS


@dataclasses.dataclass(frozen=True)
class LoraSizes:
    """LoRA vs full fine-tuning on docstring -> function body (notebook 07)."""

    examples: int  # training examples (prompt -> completion pairs)
    eval_examples: int  # held-out examples, from other files
    max_tokens: int  # longest prompt + completion kept
    steps: int  # optimizer steps of each fine-tuning run
    batch_size: int
    lr: float  # peak learning rate of the adapters
    full_lr: float  # peak learning rate of full fine-tuning
    rank: int  # LoRA rank of the target comparison
    ranks: tuple[int, ...]  # ranks of the rank sweep


@dataclasses.dataclass(frozen=True)
class DistillSizes:
    """Knowledge distillation from the pretrained model into a smaller student (notebook 08)."""

    student: str  # a name from cookbook.models.CONFIGS, smaller than the profile's model
    steps: int  # optimizer steps of each student run
    batch_size: int
    lr: float
    temperature: float  # softmax temperature of the soft targets
    temperatures: tuple[float, ...]  # the temperature sweep
    alpha: float  # weight of the distillation term (1 - alpha on the hard labels)
    feature_weight: float  # weight of the hidden-state (FitNets) loss in the "soft + features" run


@dataclasses.dataclass(frozen=True)
class RobustSizes:
    """Adversarial robustness and DP-SGD on the digits CNN, embedding-space adversarial training (notebook 10)."""

    batch_size: int  # images per batch
    epochs: int  # training epochs of the digits CNN (standard and PGD-trained)
    lr: float  # AdamW learning rate of the digits CNN (standard and PGD-trained)
    eps: float  # L-inf radius in [0, 1] pixel units the PGD model trains at; the headline figures use it
    eps_grid: tuple[float, ...]  # radii of the robustness curves
    pgd_steps: int  # PGD steps of the evaluation attack
    train_pgd_steps: int  # PGD steps inside adversarial training
    eval_examples: int  # test images attacked per radius
    lm_steps: int  # embedding-space adversarial fine-tuning steps of the code model (and of its clean control)
    lm_eps: float  # embedding-perturbation radius, as a fraction of the mean token-embedding norm
    lm_eval_batches: int  # validation batches of the embedding-robustness table
    dp_epsilons: tuple[float, ...]  # DP-SGD privacy targets (the table adds eps = inf: no DP)
    dp_epochs: int  # epochs of each DP-SGD run
    dp_lr: float  # AdamW learning rate of the DP-SGD runs (noisy clipped gradients want a larger one)
    accountant: str  # rdp (fast) | prv (tighter, Opacus's default, ~5x slower to compute)


@dataclasses.dataclass(frozen=True)
class QuantSizes:
    """Quantization, QAT and sparsity measured side by side (notebook 09)."""

    eval_batches: int  # validation batches (train.batch_size x data.seq_len tokens) behind each perplexity
    calibration_batches: int  # training batches that fix the static int8 activation scales
    latency_batch: int  # sequences of data.seq_len tokens in each timed forward
    repeats: int  # timed forwards per variant and device (the median is reported) ...
    warmup: int  # ... after this many untimed ones
    qat_steps: int  # fine-tuning steps of QAT and of its same-steps full-precision control
    qat_lr: float  # peak learning rate of that fine-tuning
    sparsities: tuple[float, ...]  # fractions of each weight matrix zeroed by magnitude pruning


@dataclasses.dataclass(frozen=True)
class EvaluateSizes:
    """Evaluation, tuning and the data-centric loop (notebook 13)."""

    ppl_groups: int  # held-out stdlib packages with a perplexity each
    ppl_blocks: int  # blocks of data.seq_len tokens (at most) per package
    functions: int  # held-out functions whose generated bodies get BLEU / chrF / ROUGE-L
    samples: int  # completions per task for pass@k (n of the unbiased estimator)
    ks: tuple[int, ...]  # the k of pass@k (each <= samples)
    max_new_tokens: int  # longest generated function body
    temperature: float  # sampling temperature of the completions
    exec_timeout: float  # seconds one candidate and its hidden tests may run
    workers: int  # sandboxed subprocesses at once
    trials: int  # trials of each tuning back end (Optuna, Ax, random): the same budget
    epochs: int  # epochs of one tuning trial (the digits MLP)
    hidden: int  # hidden units of the digits MLP
    lr_range: tuple[float, float]  # learning-rate search range (log scale)
    dropout_range: tuple[float, float]  # dropout search range
    al_initial: int  # labelled images the active-learning loop starts from
    al_batch: int  # images labelled per round
    al_rounds: int  # labelling rounds
    al_epochs: int  # epochs of each round's fresh model (few labels: many small epochs)
    al_lr: float  # its learning rate
    ewc_lambda: float  # EWC penalty weight
    ewc_epochs: int  # epochs on each continual-learning task
    kl_docs: int  # documents per corpus in the KL-shift comparison
    finetune_steps: int  # continued-pretraining steps of checkpoint B in the A/B test
    bootstrap: int  # paired bootstrap resamples
    alpha: float  # significance level an A/B switch needs (the guide: p < 0.01)
    seeds: int  # seeds of each tuning back end's search (a winner needs >= 3 that do not overlap)


@dataclasses.dataclass(frozen=True)
class DistSizes:
    """Multi-process training with `cookbook.scale.train_lm` on CPU ranks, and the launch plans (notebook 11)."""

    model: str  # a name from cookbook.models.CONFIGS, trained on ragged counting sequences
    vocab: int  # token ids of the counting sequences
    sequences: int  # training sequences (the validation set is a quarter of it, another seed)
    seq_len: int  # longest sequence (lengths vary from 2 tokens up to this)
    steps: int  # optimizer steps of each demo run
    global_batch: int  # sequences per optimizer step, over all ranks and micro-steps
    micro_batch: int  # sequences per rank and micro-step
    lr: float  # peak learning rate
    processes: int  # ranks of the CPU demo (gloo)
    timeout_s: float  # process-group timeout of the demo: how long a rank waits for a dead peer
    gpus_per_node: int  # GPUs per node in the printed launch plans ...
    nodes: int  # ... and nodes of the multi-node plan
    gpu_memory_gb: float  # memory of each of those GPUs, for the ZeRO plans
    plan_seq_len: int = 2048  # tokens per sequence (micro-batch 1, checkpointed activations) in the ZeRO plans


@dataclasses.dataclass(frozen=True)
class DeploySizes:
    """Export, the gRPC service, nginx + Prometheus and the load tests (notebook 12)."""

    export_shape: tuple[int, int]  # (batch, seq) of the example input the exports trace (both >= 2: dynamic axes)
    parity_shapes: tuple[tuple[int, int], ...]  # (batch, seq) inputs ONNX Runtime is checked on against PyTorch
    parity_tol: float  # largest |logit difference| accepted between ONNX Runtime and PyTorch
    max_prompt_tokens: int  # the service's prompt limit
    max_tokens_limit: int  # the largest max_tokens a request may ask for
    gen_tokens: int  # max_tokens of every load-test request
    max_batch: int  # requests per micro-batch
    batch_wait_ms: float  # how long a micro-batch waits for company
    weights: tuple[int, ...]  # nginx weights of the replicas, one replica each (the guide's 3:2)
    concurrency: tuple[int, ...]  # load-test concurrency levels
    load_requests: int  # requests per load-test run ...
    load_seconds: float  # ... or this many seconds, whichever ends first
    scrape_interval_s: float  # Prometheus scrape interval


@dataclasses.dataclass(frozen=True)
class CaseSizes:
    """The e-commerce recommender case study, raw logs to a quantized model (notebook 14)."""

    users: int  # real users of the generated logs (bots come on top)
    items: int  # catalogue size
    categories: int  # item categories
    days: int  # logged days ...
    future_days: int  # ... of which the last ones are the held-out evaluation window
    sessions_per_day: float  # mean sessions per user and day
    embed_dim: int  # item2vec (skip-gram) dimension (the guide: 128)
    window: int  # skip-gram context window, items on each side
    w2v_epochs: int  # passes of the skip-gram over the sessions
    dim: int  # Wide & Deep embedding size of user, category and top category
    hidden: tuple[int, ...]  # the deep tower (the guide: 256 -> 128 -> 64)
    negatives: int  # sampled negative items per positive (user, item) pair
    batch_size: int  # the guide: 1024
    lr: float  # Adam learning rate (the guide: 0.001)
    epochs: int  # passes over the training pairs (early stopping may end sooner) ...
    patience: int  # ... after this many epochs without a better validation loss
    precision: str  # fp32 | bf16 | fp16 (autocast); CPUs without AVX512-BF16/AMX run bf16 slower than fp32
    mf_rank: int  # rank of the matrix-factorisation baseline
    ks: tuple[int, ...]  # cut-offs of recall@k and NDCG@k
    eval_users: int  # future-window users ranked against the whole catalogue (at most)
    candidates: int  # items scored per serving request (a ranking stage's candidate list)
    serve_batch: int  # requests per scoring call in the serving measurement
    serve_repeats: int  # timed scoring calls (the median is reported)
    curve_ks: tuple[int, ...]  # cut-offs of the recall@k / NDCG@k figure with bootstrap intervals
    bootstrap: int  # user resamples of those intervals and of the paired differences


@dataclasses.dataclass(frozen=True)
class Profile:
    """Every size of one run of the series, by section: `P.data`, `P.model`, `P.train`, `P.precision` ..."""

    name: str
    data: DataSizes
    model: ModelSizes
    train: TrainSizes
    precision: PrecisionSizes
    throughput: ThroughputSizes
    memory: MemorySizes
    monitor: MonitorSizes
    lora: LoraSizes
    distill: DistillSizes
    robust: RobustSizes
    quant: QuantSizes
    dist: DistSizes
    evaluate: EvaluateSizes
    deploy: DeploySizes
    case: CaseSizes
    scale: float = 1.0  # $COOKBOOK_SCALE: multiplies pretraining steps and the training-token cap


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        data=DataSizes(vocab_size=2048, tokenizer_fraction=0.1, data_fraction=0.1, seq_len=128, semantic_sample=400),
        model=ModelSizes(name="smoke", sample_tokens=32, base="reference"),
        # CPUs without AVX512-BF16/AMX run bf16 autocast slower than fp32
        train=TrainSizes(steps=60, batch_size=8, lr=3e-3, eval_interval=20, eval_batches=4, precision="fp32",
                         # a longer warm-up keeps the tiny routers from collapsing onto one expert early on
                         moe_gamma=1e-2, warmup_fraction=0.3),
        precision=PrecisionSizes(formats=("fp32", "bf16"), steps=6),
        # fp32: this CPU has no fast bf16 path; inductor's CPU compile of the MoE takes minutes on 2 cores
        throughput=ThroughputSizes(batch_size=4, big_batch=8, warmup=1, steps=3, precision="fp32", compile=False,
                                   train_steps=12, eval_batches=2, dense=(128, 2, 2048, 4, 128)),
        memory=MemorySizes(grad_accum=4, micro_batches=(1, 2, 4, 8), check_steps=6),
        monitor=MonitorSizes(model="tiny"),
        # learning rates from a small sweep: LoRA 2e-3 / 5e-3 / 1e-2 / 2e-2, full 5e-4 / 1e-3; 20 steps and a
        # two-rank sweep (r=4 next to the r=8 runs) keep the six runs within the 2-minute smoke budget
        lora=LoraSizes(examples=320, eval_examples=48, max_tokens=160, steps=20, batch_size=8, lr=5e-3,
                       full_lr=1e-3, rank=8, ranks=(4, 8)),
        distill=DistillSizes(student="tiny", steps=40, batch_size=8, lr=3e-3, temperature=2.0,
                             temperatures=(1.0, 2.0, 4.0), alpha=0.5, feature_weight=1.0),
        robust=RobustSizes(batch_size=64, epochs=8, lr=3e-3, eps=0.15, eps_grid=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3),
                           pgd_steps=10, train_pgd_steps=3, eval_examples=200, lm_steps=12, lm_eps=0.5,
                           lm_eval_batches=2, dp_epsilons=(1.0, 3.0, 8.0), dp_epochs=5, dp_lr=1e-2,
                           accountant="rdp"),
        quant=QuantSizes(eval_batches=4, calibration_batches=2, latency_batch=1, repeats=10, warmup=2, qat_steps=12,
                         qat_lr=1e-3, sparsities=(0.2, 0.5, 0.8)),
        dist=DistSizes(model="tiny", vocab=96, sequences=256, seq_len=32, steps=12, global_batch=8, micro_batch=2,
                       lr=3e-3, processes=2, timeout_s=30, gpus_per_node=8, nodes=4, gpu_memory_gb=80),
        evaluate=EvaluateSizes(ppl_groups=6, ppl_blocks=4, functions=8, samples=5, ks=(1, 5), max_new_tokens=32,
                               temperature=0.8, exec_timeout=3.0, workers=2, trials=8, epochs=8, hidden=32,
                               lr_range=(1e-4, 1e-1), dropout_range=(0.0, 0.5), al_initial=20, al_batch=10,
                               al_rounds=8, al_epochs=24, al_lr=1e-2, ewc_lambda=100.0, ewc_epochs=5, kl_docs=40,
                               finetune_steps=12, bootstrap=1000, alpha=0.01, seeds=3),
        deploy=DeploySizes(export_shape=(2, 16), parity_shapes=((1, 8), (4, 64)), parity_tol=1e-4,
                           max_prompt_tokens=128, max_tokens_limit=64, gen_tokens=8, max_batch=16, batch_wait_ms=5.0,
                           weights=(3, 2), concurrency=(1, 4, 16), load_requests=48, load_seconds=3.0,
                           scrape_interval_s=1.0),
        case=CaseSizes(users=600, items=200, categories=10, days=28, future_days=7, sessions_per_day=0.15,
                       embed_dim=32, window=3, w2v_epochs=5, dim=16, hidden=(256, 128, 64), negatives=4,
                       batch_size=1024, lr=1e-3, epochs=30, patience=2, precision="fp32", mf_rank=16, ks=(10, 20),
                       eval_users=400, candidates=100, serve_batch=16, serve_repeats=20,
                       curve_ks=(1, 5, 10, 20, 50), bootstrap=1000),
    ),
    "full": Profile(
        name="full",
        # ~60M tokens of cleaned environment source on a machine with the cookbook installed; the cap keeps
        # the pretraining run under one epoch (2000 steps x 32 x 512 = 33M tokens) and its tokenization short.
        data=DataSizes(vocab_size=8192, tokenizer_fraction=0.1, data_fraction=1.0, seq_len=512,
                       semantic_sample=20000, corpus="environment", max_train_tokens=48_000_000),
        model=ModelSizes(name="full", sample_tokens=96),
        train=TrainSizes(steps=2000, batch_size=32, lr=1e-3, eval_interval=200, eval_batches=20, precision="bf16",
                         moe_gamma=1e-3),
        precision=PrecisionSizes(formats=("fp32", "tf32", "bf16", "fp16"), steps=150),
        # the set-ups: the MoE at 32 x 512, a GPT-2-small-sized dense Llama (32k vocabulary) at 16 x 1024
        throughput=ThroughputSizes(batch_size=32, big_batch=64, warmup=5, steps=20, precision="bf16", compile=True,
                                   train_steps=200, eval_batches=20, dense=(768, 12, 32768, 16, 1024)),
        # short check: float32 rounding differences grow chaotically over long runs
        memory=MemorySizes(grad_accum=4, micro_batches=(4, 8, 16, 32, 64), check_steps=20),
        monitor=MonitorSizes(model="full"),
        # ~1400 test functions fit in 384 tokens: 800 for training (two epochs), 100 held out
        lora=LoraSizes(examples=800, eval_examples=100, max_tokens=384, steps=100, batch_size=16, lr=2e-3,
                       full_lr=3e-4, rank=16, ranks=(4, 8, 16)),
        distill=DistillSizes(student="smoke", steps=300, batch_size=32, lr=2e-3, temperature=2.0,
                             temperatures=(1.0, 2.0, 4.0), alpha=0.5, feature_weight=1.0),
        # the digits are tiny: "full" buys more epochs, stronger attacks, the whole test split and the PRV accountant
        robust=RobustSizes(batch_size=64, epochs=30, lr=3e-3, eps=0.15,
                           eps_grid=(0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3), pgd_steps=20,
                           train_pgd_steps=7, eval_examples=360, lm_steps=150, lm_eps=0.5, lm_eval_batches=8,
                           dp_epsilons=(1.0, 3.0, 8.0), dp_epochs=30, dp_lr=1e-2,
                           accountant="prv"),
        quant=QuantSizes(eval_batches=20, calibration_batches=8, latency_batch=8, repeats=20, warmup=3, qat_steps=200,
                         qat_lr=1e-4, sparsities=(0.2, 0.5, 0.8)),
        # the demo's ranks are CPU processes on every machine (two NCCL ranks cannot share one GPU)
        dist=DistSizes(model="tiny", vocab=96, sequences=512, seq_len=32, steps=30, global_batch=16, micro_batch=2,
                       lr=3e-3, processes=2, timeout_s=30, gpus_per_node=8, nodes=4, gpu_memory_gb=80),
        # the digits experiments run on the CPU in both profiles: "full" buys more trials, epochs and samples
        evaluate=EvaluateSizes(ppl_groups=12, ppl_blocks=8, functions=50, samples=10, ks=(1, 5, 10),
                               max_new_tokens=96, temperature=0.8, exec_timeout=3.0, workers=8, trials=16, epochs=12,
                               hidden=64, lr_range=(1e-4, 1e-1), dropout_range=(0.0, 0.5), al_initial=20,
                               al_batch=20, al_rounds=12, al_epochs=30, al_lr=1e-2, ewc_lambda=100.0, ewc_epochs=10,
                               kl_docs=200, finetune_steps=50, bootstrap=5000, alpha=0.01, seeds=3),
        # the bigger model sums longer dot products: float32 differences grow with width and depth
        deploy=DeploySizes(export_shape=(2, 64), parity_shapes=((1, 16), (8, 512)), parity_tol=1e-3,
                           max_prompt_tokens=512, max_tokens_limit=256, gen_tokens=32, max_batch=32, batch_wait_ms=5.0,
                           weights=(3, 2), concurrency=(1, 8, 32), load_requests=256, load_seconds=8.0,
                           scrape_interval_s=1.0),
        # ~0.3M raw events: cleaning (to_utc parses each timestamp) and item2vec run on the CPU, ~30 s together
        case=CaseSizes(users=8000, items=2000, categories=40, days=56, future_days=14, sessions_per_day=0.1,
                       embed_dim=128, window=3, w2v_epochs=5, dim=32, hidden=(256, 128, 64), negatives=4,
                       batch_size=1024, lr=1e-3, epochs=30, patience=2, precision="bf16", mf_rank=64, ks=(10, 20, 50),
                       eval_users=4000, candidates=200, serve_batch=64, serve_repeats=50,
                       curve_ks=(1, 5, 10, 20, 50, 100), bootstrap=2000),
    ),
}


def scaled(P: Profile, factor: float) -> Profile:
    """`P` with `factor` x the pretraining steps, evaluation interval and training-token cap."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < float("inf"):
        raise ValueError(f"scale must be a positive number (e.g. 4 for 4x the steps and tokens), got {factor!r}")
    if factor == 1:
        return P

    def times(n: int) -> int:
        return max(1, round(n * factor))

    cap = P.data.max_train_tokens
    return dataclasses.replace(
        P, scale=P.scale * factor,
        train=dataclasses.replace(P.train, steps=times(P.train.steps), eval_interval=times(P.train.eval_interval)),
        data=dataclasses.replace(P.data, max_train_tokens=None if cap is None else times(cap)))


def profile(name: str | None = None) -> Profile:
    """The run profile: `name`, else $COOKBOOK_PROFILE, else `full` on a GPU and `smoke` on CPU.

    $COOKBOOK_SCALE (a positive number, default 1) scales the pretraining run up or down (`scaled`).
    """
    name = name or os.environ.get("COOKBOOK_PROFILE") or ("full" if torch.cuda.is_available() else "smoke")
    try:
        P = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}") from None
    factor = os.environ.get("COOKBOOK_SCALE", "").strip()
    if not factor:
        return P
    try:
        value = float(factor)
    except ValueError:
        raise ValueError(f"COOKBOOK_SCALE={factor!r} is not a number; use e.g. COOKBOOK_SCALE=4") from None
    return scaled(P, value)
