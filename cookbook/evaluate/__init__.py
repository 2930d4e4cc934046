"""Evaluation, hyperparameter search and the data-centric loop.

metrics (perplexity over a dataset, classification report and F1, BLEU / chrF / ROUGE / exact match) · execution (hidden-test
runs under bubblewrap of generated code, unbiased pass@k) · codegen (a small task set, held-out functions, sampled
completions) · classifier (a small MLP and its training loop) · tuning (one search API over Optuna TPE, Ax's
BoTorch GP and random search; median and early-stopping pruners; history and importance plots) · tracking (an
MLflow sink for the Trainer and the monitor, tuning trials as MLflow runs) · active (uncertainty sampling, a
simulated labelling loop, Cohen's kappa) · continual (EWC, KL shift between corpora) · abtest (paired bootstrap,
McNemar, paired t, the switch decision, shadow mode). Optional libraries come with the `evaluate` extra.
Shown in notebooks/13.
"""

from cookbook.evaluate import classifier
from cookbook.evaluate.abtest import Decision, Shadow, decide, mcnemar, paired_bootstrap, paired_t
from cookbook.evaluate.active import (
    STRATEGIES,
    cohen_kappa,
    labelling_curve,
    noisy_labels,
    select,
    uncertainty,
)
from cookbook.evaluate.codegen import TASKS, Task, complete, function_body_end, held_out_functions
from cookbook.evaluate.continual import EWC, fisher_diagonal, kl_shift, token_counts
from cookbook.evaluate.execution import (
    ISOLATIONS,
    STATUSES,
    SandboxUnavailable,
    SandboxWarning,
    Verdict,
    execution_pass_at_k,
    pass_at_k,
    run_candidate,
)
from cookbook.evaluate.metrics import (
    ROUGE_TYPES,
    bleu,
    chrf,
    classification_report,
    exact_match,
    f1_scores,
    per_example,
    perplexity,
    perplexity_by,
    perplexity_from_nll,
    rouge,
    rouge_l,
    text_batches,
    text_scores,
)
from cookbook.evaluate.tracking import MlflowSink, default_uri, runs, trial_logger
from cookbook.evaluate.tuning import (
    BACKENDS,
    PRUNERS,
    Choice,
    Float,
    Int,
    Pruned,
    SearchResult,
    StallPruner,
    Trial,
    history_plot,
    importance,
    importance_plot,
    search,
)

__all__ = [
    "BACKENDS", "EWC", "ISOLATIONS", "PRUNERS", "ROUGE_TYPES", "STATUSES", "STRATEGIES", "TASKS", "Choice", "Decision", "Float", "Int",
    "MlflowSink", "Pruned", "SandboxUnavailable", "SandboxWarning", "SearchResult", "Shadow", "StallPruner", "Task", "Trial", "Verdict", "bleu", "chrf",
    "classification_report", "classifier", "cohen_kappa", "complete", "decide", "default_uri",
    "exact_match", "execution_pass_at_k", "f1_scores", "fisher_diagonal", "function_body_end", "held_out_functions", "history_plot",
    "importance", "importance_plot", "kl_shift", "labelling_curve", "mcnemar", "noisy_labels", "paired_bootstrap",
    "paired_t", "pass_at_k", "per_example", "perplexity", "perplexity_by", "perplexity_from_nll", "rouge", "rouge_l", "run_candidate", "runs", "search", "select",
    "text_batches", "text_scores", "token_counts", "trial_logger", "uncertainty",
]
