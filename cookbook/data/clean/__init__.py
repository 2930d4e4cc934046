"""Cleaning: tabular rules with a pipeline that keeps every removed row (tables, timestamps), and text clean-up
(text).

Shown in notebooks/01.
"""

from cookbook.data.clean.tables import (
    PipelineResult,
    RuleResult,
    drop_duplicate_keys,
    fill_missing,
    fix_mojibake,
    fix_unicode,
    iqr_outliers,
    map_text,
    normalize_whitespace,
    pipeline,
    step,
    zscore_outliers,
)
from cookbook.data.clean.text import STOPWORDS, clean_text, docstrings, find_pii, mask_pii, remove_stopwords
from cookbook.data.clean.timestamps import to_utc

__all__ = [
    "STOPWORDS", "PipelineResult", "RuleResult", "clean_text", "docstrings", "drop_duplicate_keys", "fill_missing",
    "find_pii", "fix_mojibake", "fix_unicode", "iqr_outliers", "map_text", "mask_pii", "normalize_whitespace",
    "pipeline", "remove_stopwords", "step", "to_utc", "zscore_outliers",
]
