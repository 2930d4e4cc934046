"""Tabular cleaning: one function per rule, and a pipeline that reports what each rule did.

Every rule takes a DataFrame and returns a `RuleResult`: the cleaned frame, the rows it removed (kept
aside with their original values, never silently lost) and the cells it changed (before → after).
`pipeline(df, [step(rule, ...), ...])` chains rules and checks that rows in = rows out + rows removed.

    >>> result = pipeline(df, [step(drop_duplicate_keys, keys=["id"]),
    ...                        step(fill_missing, column="age", strategy="median")])
    >>> result.frame, result.summary, result.removed, result.changes

`to_utc` (timestamps) lives in `cookbook.data.clean.timestamps` and follows the same contract.

Bad input (not a frame, empty frame, missing column, wrong dtype, all-missing column, undecodable
bytes) gives a `ValueError`/`TypeError` or a warning naming the column and rows, before pandas is asked
to do anything.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
import warnings
from collections.abc import Callable, Sequence

import ftfy
import numpy as np
import pandas as pd

__all__ = [
    "PipelineResult",
    "RuleResult",
    "drop_duplicate_keys",
    "fill_missing",
    "fix_mojibake",
    "fix_unicode",
    "iqr_outliers",
    "map_text",
    "normalize_whitespace",
    "pipeline",
    "step",
    "zscore_outliers",
]

_CHANGE_COLUMNS = ["row", "column", "before", "after", "reason"]


@dataclasses.dataclass
class RuleResult:
    """One rule's output: the kept frame, the removed rows and the changed cells (row, column, before, after,
    reason). `reasons` says why each removed row went (by row label); rows it does not name share `note`."""

    frame: pd.DataFrame
    removed: pd.DataFrame
    changed: pd.DataFrame
    note: str = ""
    reasons: pd.Series | None = None


@dataclasses.dataclass
class PipelineResult:
    """A pipeline's output: the cleaned frame, a per-rule summary, removed rows (original values plus
    `removed_by` and `reason`) and changed cells (row, column, before, after, reason, rule)."""

    frame: pd.DataFrame
    summary: pd.DataFrame
    removed: pd.DataFrame
    changes: pd.DataFrame


# ------------------------------------------------------------------------------------------ checks
def _check_frame(df) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if df.empty:
        raise ValueError("empty frame: there is nothing to clean (0 rows or 0 columns)")
    if not df.index.is_unique:
        raise ValueError("the frame's index has repeated labels; call df.reset_index(drop=True) first so "
                         "removed and changed rows can be named unambiguously")


def _check_column(df, column: str, numeric: bool = False) -> None:
    _check_frame(df)
    if column not in df.columns:
        raise ValueError(f"no column {column!r}; columns are {list(df.columns)}")
    if numeric and not (pd.api.types.is_numeric_dtype(df[column]) and not pd.api.types.is_bool_dtype(df[column])):
        raise ValueError(f"column {column!r} has dtype {df[column].dtype}, not numeric; convert it first, "
                         f"e.g. pd.to_numeric(df[{column!r}], errors='coerce')")


def _rows(labels, limit: int = 8) -> str:
    labels = list(labels)
    return ", ".join(map(str, labels[:limit])) + (f" … ({len(labels)} rows)" if len(labels) > limit else "")


def _changes(column: str, before: pd.Series, after: pd.Series, reason: str | pd.Series) -> pd.DataFrame:
    """Cells where `after` differs from `before` (NaN → value counts as a change, NaN → NaN does not)."""
    b, a = before.astype(object), after.astype(object)
    same = (b == a) | (b.isna() & a.isna())
    idx = same.index[~same.to_numpy(dtype=bool)]
    why = reason[idx].to_numpy() if isinstance(reason, pd.Series) else reason
    return pd.DataFrame({"row": idx, "column": column, "before": b[idx].to_numpy(), "after": a[idx].to_numpy(),
                         "reason": why}, columns=_CHANGE_COLUMNS)


def _show(value) -> str:
    return f"{value:.6g}" if isinstance(value, (float, np.floating)) else repr(value)


def _no_changes() -> pd.DataFrame:
    return pd.DataFrame(columns=_CHANGE_COLUMNS)


def _result(df, keep_mask, column=None, new_values=None, note="", why: str | pd.Series = "") -> RuleResult:
    """Split `df` by a keep-mask and/or replace one column; record what changed and why (`why`: one reason
    for every row, or one per row label; default: the note)."""
    why = why if isinstance(why, pd.Series) else pd.Series(why or note, index=df.index, dtype=object)
    out = df.copy()
    changed = _no_changes()
    if column is not None:
        changed = _changes(column, df[column], new_values, why)
        out[column] = new_values
    keep_mask = np.asarray(keep_mask, dtype=bool)
    removed = df[~keep_mask]
    out = out[keep_mask]
    changed = changed[changed["row"].isin(out.index)] if len(changed) else changed
    return RuleResult(out, removed, changed.reset_index(drop=True), note, why[removed.index])


# ------------------------------------------------------------------------------------------- rules
def drop_duplicate_keys(df: pd.DataFrame, keys: str | Sequence[str], keep: str = "first") -> RuleResult:
    """Remove rows whose key columns repeat an earlier (`keep="first"`) or later (`"last"`) row."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    for key in keys:
        _check_column(df, key)
    if keep not in ("first", "last"):
        raise ValueError(f"keep must be 'first' or 'last', got {keep!r}")
    dup = df.duplicated(subset=keys, keep=keep).to_numpy()
    return _result(df, ~dup, note=f"{int(dup.sum())} rows repeat a key in {keys}",
                   why=f"repeats the key {keys} of another row (keep={keep!r})")


def fill_missing(df: pd.DataFrame, column: str, strategy: str = "median", value=None) -> RuleResult:
    """Fill missing values of one column with its mean, median, mode or a constant `value`."""
    strategies = ("mean", "median", "mode", "constant")
    if strategy not in strategies:
        raise ValueError(f"strategy must be one of {strategies}, got {strategy!r}")
    _check_column(df, column, numeric=strategy in ("mean", "median"))
    col = df[column]
    missing = col.isna()
    if strategy == "constant":
        if value is None:
            raise ValueError("strategy='constant' needs a fill value")
        fill = value
    elif missing.all():
        raise ValueError(f"column {column!r} is all missing ({len(col)} rows): there is no {strategy} to fill "
                         "with; use strategy='constant' or drop the column")
    elif strategy == "mean":
        fill = col.mean()
    elif strategy == "median":
        fill = col.median()
    else:
        fill = col.mode(dropna=True).iloc[0]  # the smallest of tied modes, deterministic
    new = col.where(~missing, fill) if missing.any() else col
    return _result(df, np.ones(len(df), bool), column, new,
                   note=f"{int(missing.sum())} missing filled with {strategy} = {_show(fill)}",
                   why=f"missing: filled with {strategy} = {_show(fill)}")


def zscore_outliers(df: pd.DataFrame, column: str, threshold: float = 3.0) -> RuleResult:
    """Remove rows whose |z-score| = |x − mean| / std exceeds `threshold` (missing values are kept)."""
    _check_column(df, column, numeric=True)
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    x = df[column].astype(float)
    std = x.std(ddof=0)
    if not np.isfinite(std) or std == 0:
        warnings.warn(f"column {column!r} has no spread (std={std}); no outliers removed", stacklevel=2)
        return _result(df, np.ones(len(df), bool), note="no spread")
    z = ((x - x.mean()) / std).abs()
    outlier = (z > threshold).to_numpy()
    return _result(df, ~outlier, note=f"{int(outlier.sum())} rows with |z| > {threshold}",
                   why=z.map(lambda v: f"|z| = {v:.3g} > {threshold}"))


def iqr_outliers(df: pd.DataFrame, column: str, k: float = 1.5) -> RuleResult:
    """Remove rows outside [Q1 − k·IQR, Q3 + k·IQR] (Tukey's fences; missing values are kept)."""
    _check_column(df, column, numeric=True)
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    x = df[column].astype(float)
    if x.isna().all():
        raise ValueError(f"column {column!r} is all missing: no quartiles to compute")
    q1, q3 = x.quantile(0.25), x.quantile(0.75)
    low, high = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
    outlier = ((x < low) | (x > high)).to_numpy()
    return _result(df, ~outlier, note=f"{int(outlier.sum())} rows outside [{low:.4g}, {high:.4g}]",
                   why=x.map(lambda v: f"{v:.4g} outside [{low:.4g}, {high:.4g}]"))


# -------------------------------------------------------------------------------------- text cells
def _fix_mojibake(text: str) -> tuple[str, str]:
    """ftfy's encoding repair and the steps it took ("" when the text was left alone)."""
    fixed = ftfy.fix_encoding_and_explain(text)
    return fixed.text, ", ".join(f"{action} {how}" for action, how in fixed.explanation)


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 text that was decoded with a one-byte code page such as cp1252 or latin-1, in any script
    ("cafÃ©" → "café", "ÐŸÑ€Ð¸Ð²ÐµÑ‚" → "Привет"), repeatedly if double-encoded.

    This is ftfy's encoding repair only (quotes, HTML entities and character widths are left as they are);
    ftfy changes text only when the repaired version is much more plausible, so correct text is left alone.
    """
    return _fix_mojibake(text)[0]


def _decode(value: bytes) -> tuple[str, str]:
    try:
        return value.decode("utf-8"), "bytes decoded as UTF-8"
    except UnicodeDecodeError:  # legacy Windows/latin-1 text, the usual culprit
        return value.decode("cp1252", errors="replace"), "bytes not valid UTF-8: decoded as cp1252"


def fix_unicode(df: pd.DataFrame, column: str, form: str = "NFC") -> RuleResult:
    """Decode bytes cells (UTF-8, else cp1252 with a warning naming the rows), repair mojibake with ftfy
    (`fix_mojibake`), normalize to NFC. Each changed cell's `reason` says which of these fixed it, and for
    mojibake the steps ftfy took (e.g. "encode sloppy-windows-1252, decode utf-8"). Shown in notebooks/01 §2."""
    _check_column(df, column)
    if form not in ("NFC", "NFKC", "NFD", "NFKD"):
        raise ValueError(f"form must be a Unicode normal form (NFC, NFKC, NFD, NFKD), got {form!r}")
    values, reasons, undecodable, repaired = [], [], [], 0
    for row, value in df[column].items():
        steps = []
        if isinstance(value, (bytes, bytearray)):
            value, how = _decode(bytes(value))
            steps.append(how)
            if how.startswith("bytes not"):
                undecodable.append(row)
        if isinstance(value, str):
            value, how = _fix_mojibake(value)
            if how:
                steps.append(f"mojibake repaired by ftfy: {how}")
                repaired += 1
            normal = unicodedata.normalize(form, value)
            if normal != value:
                steps.append(f"normalized to {form}")
            value = normal
        values.append(value)
        reasons.append("; ".join(steps))
    if undecodable:
        warnings.warn(f"column {column!r}: rows {_rows(undecodable)} were not valid UTF-8; decoded as cp1252",
                      stacklevel=2)
    new = pd.Series(values, index=df.index, dtype=object)
    return _result(df, np.ones(len(df), bool), column, new, note=f"{repaired} mojibake repaired, "
                   f"{len(undecodable)} non-UTF-8 cells", why=pd.Series(reasons, index=df.index, dtype=object))


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u2060\ufeff]")
_SPACES = re.compile(r"\s+")


def normalize_whitespace(df: pd.DataFrame, column: str) -> RuleResult:
    """Drop control and zero-width characters, collapse whitespace runs to one space, strip the ends."""
    _check_column(df, column)
    new = df[column].astype(object).map(lambda v: _SPACES.sub(" ", _CONTROL.sub("", v)).strip()
                                        if isinstance(v, str) else v)
    return _result(df, np.ones(len(df), bool), column, new, why="whitespace or control characters")


def map_text(df: pd.DataFrame, column: str, fn: Callable[[str], str]) -> RuleResult:
    """Apply a text function (e.g. `clean_text.mask_pii`) to every string cell of one column."""
    _check_column(df, column)
    new = df[column].astype(object).map(lambda v: fn(v) if isinstance(v, str) else v)
    return _result(df, np.ones(len(df), bool), column, new, note=getattr(fn, "__name__", "text function"))


# ---------------------------------------------------------------------------------------- pipeline
def step(rule: Callable[..., RuleResult], **params) -> Callable[[pd.DataFrame], RuleResult]:
    """A pipeline step: `rule` with its parameters bound, named for the report, e.g. fill_missing(age, median)."""
    if not callable(rule):
        raise TypeError(f"rule must be a function such as clean.fill_missing, got {rule!r}")

    def run(df: pd.DataFrame) -> RuleResult:
        return rule(df, **params)

    shown = ", ".join(v.__name__ if callable(v) else str(v) for v in params.values())
    run.__name__ = f"{rule.__name__}({shown})"
    return run


def pipeline(df: pd.DataFrame, rules: Sequence[Callable[[pd.DataFrame], RuleResult]]) -> PipelineResult:
    """Apply rules in order; return the frame, a summary per rule, removed rows and changed cells.

    Invariant (checked): rows in = rows out + rows removed, and every removed row keeps its original
    values plus `removed_by`, the rule that dropped it.
    """
    _check_frame(df)
    if not rules:
        raise ValueError("pipeline needs at least one rule")
    current, summary, removed, changes = df, [], [], []
    for rule in rules:
        name = getattr(rule, "__name__", repr(rule))
        if current.empty:  # an earlier rule removed every row: nothing left for this one
            summary.append({"rule": name, "rows in": 0, "rows out": 0, "rows removed": 0, "cells changed": 0,
                            "note": "skipped: no rows left"})
            continue
        result = rule(current)
        if not isinstance(result, RuleResult):
            raise TypeError(f"rule {name} returned {type(result).__name__}, not a RuleResult")
        if len(result.frame) + len(result.removed) != len(current):
            raise AssertionError(f"rule {name} lost rows: {len(current)} in, {len(result.frame)} out, "
                                 f"{len(result.removed)} removed")
        summary.append({"rule": name, "rows in": len(current), "rows out": len(result.frame),
                        "rows removed": len(result.removed), "cells changed": len(result.changed),
                        "note": result.note})
        if len(result.removed):
            reasons = result.reasons if result.reasons is not None else pd.Series(dtype=object)
            reason = reasons.reindex(result.removed.index).fillna(result.note or name)
            removed.append(df.loc[result.removed.index].assign(removed_by=name, reason=reason))  # original values
        if len(result.changed):
            changes.append(result.changed.assign(rule=name))
        current = result.frame
    removed_df = pd.concat(removed) if removed else df.iloc[:0].assign(removed_by=pd.Series(dtype=object),
                                                                         reason=pd.Series(dtype=object))
    changes_df = pd.concat(changes, ignore_index=True) if changes else _no_changes().assign(rule=[])
    if current.empty:
        warnings.warn(f"the pipeline removed all {len(df)} rows; see result.removed", stacklevel=2)
    if len(current) + len(removed_df) != len(df):
        raise AssertionError("pipeline lost rows")  # cannot happen after the per-rule check; kept as a guard
    return PipelineResult(current, pd.DataFrame(summary), removed_df, changes_df)
