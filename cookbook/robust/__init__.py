"""Robustness and privacy: adversarial attacks, adversarial training, DP-SGD.

attacks (FGSM, PGD in L∞/L2, robust-accuracy table) · digits (scikit-learn's bundled digits, a small CNN, an
in-model Normalize layer, an image grid of predictions) · adversarial (Madry PGD-AT for classifiers, embedding-space adversarial training
and robustness of language models) · privacy (DP-SGD with Opacus to a target ε, the accountant; the optional
`privacy` extra). Shown in notebooks/10.
"""

from cookbook.robust.adversarial import (
                                         EmbeddingAdversary,
                                         adversarial_training,
                                         embedding_pgd,
                                         lm_robustness,
                                         lm_sequence_losses,
)
from cookbook.robust.attacks import NORMS, accuracy, eval_mode, fgsm, perturb, pgd, robust_accuracy
from cookbook.robust.digits import Normalize, cnn, digits, example_grid
from cookbook.robust.privacy import ACCOUNTANTS, DPResult, dp_train, epsilon

__all__ = ["ACCOUNTANTS", "NORMS", "DPResult", "EmbeddingAdversary", "Normalize", "accuracy",
           "adversarial_training", "cnn", "digits", "dp_train", "embedding_pgd", "epsilon", "eval_mode",
           "example_grid", "fgsm", "lm_robustness", "lm_sequence_losses", "perturb", "pgd", "robust_accuracy"]
