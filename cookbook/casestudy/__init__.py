"""The case study: the guide's e-commerce recommender, from raw logs to a quantized model, measured end to end.

logs (seeded interaction logs with bots, duplicates and malformed rows; cleaning with `cookbook.data.clean`; the
future window) · etl (filter by action, group by user and item, count; sessions; training pairs) · embeddings
(item2vec: skip-gram over sessions with gensim, the `casestudy` extra) · widedeep (Wide & Deep and its training
loop with `train.precision` and `monitor.TrainingMonitor`) · baselines (popularity, matrix factorisation,
in-process serving latency/QPS) · metrics (recall@k, NDCG@k, AUC) · spark (the ETL on PySpark, the optional
`spark` extra, imported when a session starts). Shown in notebooks/14.
"""

from cookbook.casestudy import spark
from cookbook.casestudy.baselines import popularity_scores, serving_benchmark, svd_factors
from cookbook.casestudy.embeddings import category_agreement, item2vec, nearest, require_gensim
from cookbook.casestudy.etl import (
    COUNTED,
    interaction_counts,
    session_sequences,
    training_pairs,
    user_top_category,
)
from cookbook.casestudy.logs import (
    ACTIONS,
    KEYS,
    InteractionLogs,
    clean_logs,
    drop_bots,
    interaction_logs,
    split_window,
    valid_events,
)
from cookbook.casestudy.metrics import auc, ndcg_at_k, rank_metrics, recall_at_k, top_k
from cookbook.casestudy.widedeep import WideDeep, fit, pair_features, predict, score_matrix

__all__ = ["ACTIONS", "COUNTED", "KEYS", "InteractionLogs", "WideDeep", "auc", "category_agreement", "clean_logs",
           "drop_bots", "fit", "interaction_counts", "interaction_logs", "item2vec", "ndcg_at_k", "nearest",
           "pair_features", "popularity_scores", "predict", "rank_metrics", "recall_at_k", "require_gensim",
           "score_matrix", "serving_benchmark", "session_sequences", "spark", "split_window", "svd_factors", "top_k",
           "training_pairs", "user_top_category", "valid_events"]
