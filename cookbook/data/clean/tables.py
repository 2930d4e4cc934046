"""Tabular cleaning: one function per rule, and a pipeline that reports what each rule did.

Every rule takes a DataFrame and returns a `RuleResult`: the cleaned frame, the rows it removed (kept
aside with their original values, never silently lost) and the cells it changed (before → after).
`pipeline(df, [step(rule, ...), ...])` chains rules and checks that rows in = rows out + rows removed.

    >>> result = pipeline(df, [step(drop_duplicate_keys, keys=["id"]),
    ...                        step(fill_missing, column="age", strategy="median")])
    >>> result.frame, result.summary, result.removed, result.changes

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
    "to_utc",
    "zscore_outliers",
]

_CHANGE_COLUMNS = ["row", "column", "before", "after"]


@dataclasses.dataclass
class RuleResult:
    """One rule's output: the kept frame, the removed rows and the changed cells (row, column, before, after)."""

    frame: pd.DataFrame
    removed: pd.DataFrame
    changed: pd.DataFrame
    note: str = ""


@dataclasses.dataclass
class PipelineResult:
    """A pipeline's output: the cleaned frame, a per-rule summary, removed rows (with `removed_by`), changes."""

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


def _changes(column: str, before: pd.Series, after: pd.Series) -> pd.DataFrame:
    """Cells where `after` differs from `before` (NaN → value counts as a change, NaN → NaN does not)."""
    b, a = before.astype(object), after.astype(object)
    same = (b == a) | (b.isna() & a.isna())
    idx = same.index[~same.to_numpy(dtype=bool)]
    return pd.DataFrame({"row": idx, "column": column, "before": b[idx].to_numpy(), "after": a[idx].to_numpy()},
                        columns=_CHANGE_COLUMNS)


def _show(value) -> str:
    return f"{value:.6g}" if isinstance(value, (float, np.floating)) else repr(value)


def _no_changes() -> pd.DataFrame:
    return pd.DataFrame(columns=_CHANGE_COLUMNS)


def _result(df, keep_mask, column=None, new_values=None, note="") -> RuleResult:
    """Split `df` by a keep-mask and/or replace one column; record what changed."""
    out = df.copy()
    changed = _no_changes()
    if column is not None:
        changed = _changes(column, df[column], new_values)
        out[column] = new_values
    keep_mask = np.asarray(keep_mask, dtype=bool)
    removed = df[~keep_mask]
    out = out[keep_mask]
    changed = changed[changed["row"].isin(out.index)] if len(changed) else changed
    return RuleResult(out, removed, changed.reset_index(drop=True), note)


# ------------------------------------------------------------------------------------------- rules
def drop_duplicate_keys(df: pd.DataFrame, keys: str | Sequence[str], keep: str = "first") -> RuleResult:
    """Remove rows whose key columns repeat an earlier (`keep="first"`) or later (`"last"`) row."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    for key in keys:
        _check_column(df, key)
    if keep not in ("first", "last"):
        raise ValueError(f"keep must be 'first' or 'last', got {keep!r}")
    dup = df.duplicated(subset=keys, keep=keep).to_numpy()
    return _result(df, ~dup, note=f"{int(dup.sum())} rows repeat a key in {keys}")


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
                   note=f"{int(missing.sum())} missing filled with {strategy} = {_show(fill)}")


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
    return _result(df, ~outlier, note=f"{int(outlier.sum())} rows with |z| > {threshold}")


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
    return _result(df, ~outlier, note=f"{int(outlier.sum())} rows outside [{low:.4g}, {high:.4g}]")


def _parse_utc(value, assume_tz: str, dayfirst: bool):
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return pd.NaT
    try:
        ts = pd.Timestamp(value) if not isinstance(value, str) else pd.to_datetime(value.strip(), dayfirst=dayfirst)
    except (ValueError, TypeError, OverflowError):
        return pd.NaT
    if ts is pd.NaT:
        return pd.NaT
    ts = ts.tz_localize(assume_tz) if ts.tzinfo is None else ts
    return ts.tz_convert("UTC")


def to_utc(df: pd.DataFrame, column: str, assume_tz: str = "UTC", errors: str = "remove",
           dayfirst: bool = False) -> RuleResult:
    """Parse mixed timestamps (ISO with any offset, `Z`, naive strings, datetimes) to one UTC column.

    Naive values are read in `assume_tz`. Unparseable values are removed (`errors="remove"`), set to
    NaT (`"nat"`), or raise (`"raise"`); each case names the rows. Changed cells are those whose input
    was not already written as the UTC instant in ISO form.
    """
    _check_column(df, column)
    if errors not in ("remove", "nat", "raise"):
        raise ValueError(f"errors must be 'remove', 'nat' or 'raise', got {errors!r}")
    try:
        pd.Timestamp("2000-01-01").tz_localize(assume_tz)
    except Exception as exc:
        raise ValueError(f"unknown time zone {assume_tz!r}") from exc
    before = df[column]
    parsed = None
    if assume_tz in ("UTC", "utc"):  # vectorised: with utc=True pandas reads naive values as UTC already
        try:
            parsed = pd.to_datetime(before, utc=True, format="mixed", errors="coerce", dayfirst=dayfirst)
        except (TypeError, ValueError):
            parsed = None  # unusual mixtures of types: fall back to one value at a time
    if parsed is None:
        parsed = pd.Series([_parse_utc(v, assume_tz, dayfirst) for v in before], index=df.index)
    parsed = parsed.astype("datetime64[ns, UTC]")
    bad = parsed.isna() & before.notna()
    if bad.any():
        message = f"column {column!r}: {int(bad.sum())} unparseable timestamp(s) in rows {_rows(df.index[bad])}"
        if errors == "raise":
            raise ValueError(message)
        warnings.warn(message + ("; rows removed" if errors == "remove" else "; set to NaT"), stacklevel=2)
    canonical = {i: {ts.isoformat(), ts.strftime("%Y-%m-%dT%H:%M:%SZ"), ts.strftime("%Y-%m-%d %H:%M:%S+00:00")}
                 for i, ts in parsed.dropna().items()}
    def already_utc(i, v) -> bool:
        if isinstance(v, str):
            return v.strip() in canonical.get(i, ())
        return getattr(v, "tzinfo", None) is not None and v.utcoffset() == pd.Timedelta(0)

    differs = [not pd.isna(v) and not already_utc(i, v) for i, v in before.items()]
    keep = ~bad.to_numpy() if errors == "remove" else np.ones(len(df), bool)
    out = df.copy()
    out[column] = parsed
    changed_idx = df.index[np.asarray(differs) & keep]
    changed = pd.DataFrame({"row": changed_idx, "column": column, "before": before[changed_idx].to_numpy(),
                            "after": parsed[changed_idx].astype(object).to_numpy()}, columns=_CHANGE_COLUMNS)
    return RuleResult(out[keep], df[~keep], changed, f"{len(changed_idx)} timestamps standardized to UTC")


# -------------------------------------------------------------------------------------- text cells
_MOJIBAKE = re.compile("[ÂÃÄÅâ][\u0080-\u00bf\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039"
                       "\u0152\u017d\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u017e\u0178]")


def _cp1252_bytes(text: str) -> bytes:
    """Encode as cp1252, with the five bytes cp1252 leaves undefined passed through as latin-1."""
    out = bytearray()
    for ch in text:
        try:
            out += ch.encode("cp1252")
        except UnicodeEncodeError:
            if ord(ch) > 0xFF:
                raise
            out.append(ord(ch))
    return bytes(out)


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 text that was decoded as cp1252/latin-1 ("cafÃ©" → "café"), repeatedly if double-encoded.

    Only applied when the text shows the telltale byte-pair pattern and the round trip decodes cleanly,
    so correct text (including real "Ã" characters in other contexts) is left alone.
    """
    for _ in range(3):
        if not _MOJIBAKE.search(text):
            break
        try:
            repaired = _cp1252_bytes(text).decode("utf-8")
        except UnicodeError:
            break
        if repaired == text:
            break
        text = repaired
    return text


def _decode(value, column: str, row, undecodable: list):
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            undecodable.append(row)
            return bytes(value).decode("cp1252", errors="replace")  # legacy Windows/latin-1 text, the usual culprit
    return value


def fix_unicode(df: pd.DataFrame, column: str, form: str = "NFC") -> RuleResult:
    """Decode bytes cells (UTF-8, else cp1252 with a warning naming the rows), repair mojibake, normalize to NFC."""
    _check_column(df, column)
    if form not in ("NFC", "NFKC", "NFD", "NFKD"):
        raise ValueError(f"form must be a Unicode normal form (NFC, NFKC, NFD, NFKD), got {form!r}")
    undecodable: list = []
    values = []
    for row, value in df[column].items():
        value = _decode(value, column, row, undecodable)
        if isinstance(value, str):
            value = unicodedata.normalize(form, fix_mojibake(value))
        values.append(value)
    if undecodable:
        warnings.warn(f"column {column!r}: rows {_rows(undecodable)} were not valid UTF-8; decoded as cp1252",
                      stacklevel=2)
    new = pd.Series(values, index=df.index, dtype=object)
    return _result(df, np.ones(len(df), bool), column, new, note=f"{len(undecodable)} non-UTF-8 cells")


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u2060\ufeff]")
_SPACES = re.compile(r"\s+")


def normalize_whitespace(df: pd.DataFrame, column: str) -> RuleResult:
    """Drop control and zero-width characters, collapse whitespace runs to one space, strip the ends."""
    _check_column(df, column)
    new = df[column].astype(object).map(lambda v: _SPACES.sub(" ", _CONTROL.sub("", v)).strip()
                                        if isinstance(v, str) else v)
    return _result(df, np.ones(len(df), bool), column, new)


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
            removed.append(df.loc[result.removed.index].assign(removed_by=name))  # original values
        if len(result.changed):
            changes.append(result.changed.assign(rule=name))
        current = result.frame
    removed_df = pd.concat(removed) if removed else df.iloc[:0].assign(removed_by=pd.Series(dtype=object))
    changes_df = pd.concat(changes, ignore_index=True) if changes else _no_changes().assign(rule=[])
    if current.empty:
        warnings.warn(f"the pipeline removed all {len(df)} rows; see result.removed", stacklevel=2)
    if len(current) + len(removed_df) != len(df):
        raise AssertionError("pipeline lost rows")  # cannot happen after the per-rule check; kept as a guard
    return PipelineResult(current, pd.DataFrame(summary), removed_df, changes_df)
