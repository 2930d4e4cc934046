"""Timestamps: one rule, `to_utc`, that turns a column of mixed timestamps into one UTC column.

A `clean.tables` rule like the others (a `RuleResult`, usable in `clean.pipeline`), in its own module
because time is where cleaning goes wrong quietly: day-first dates, and local times that do not exist
or happen twice at a daylight-saving change.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd

from cookbook.data.clean.tables import _CHANGE_COLUMNS, RuleResult, _check_column, _rows

__all__ = ["to_utc"]

# ISO 8601 (date, optional time, optional Z or offset) is unambiguous, so it is always read as ISO: pandas'
# `dayfirst` would otherwise turn "2024-03-05T10:15:00Z" into 3 May, even in a column of "05/03/2024" values.
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?",
                  re.IGNORECASE)


_NUMBER = "a number, not a timestamp (epoch values: pd.to_datetime(column, unit='s', utc=True) first)"


def _parse_utc(value, assume_tz: str, dayfirst: bool) -> tuple[pd.Timestamp, str, bool]:
    """(the instant in UTC or NaT, how it was read or why it could not be, whether it is good)."""
    if pd.api.types.is_scalar(value) and pd.isna(value):  # None, NaN, NaT, pd.NA
        return pd.NaT, "missing", True
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        # pandas reads a bare number as nanoseconds since 1970 and the zone would then be guessed: an epoch's
        # unit (s, ms, …) and its UTC-ness are the writer's to say, so a number is a bad value with that reason
        return pd.NaT, _NUMBER, False
    try:
        if isinstance(value, str):
            text = value.strip()
            ts = pd.Timestamp(text) if _ISO.fullmatch(text) else pd.to_datetime(text, dayfirst=dayfirst)
        else:
            ts = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        return pd.NaT, "unparseable", False
    if ts is pd.NaT:
        return pd.NaT, "unparseable", False
    if ts.tzinfo is None:
        local = ts.tz_localize(assume_tz, ambiguous="NaT", nonexistent="NaT")
        if local is pd.NaT:  # a wall-clock time at a DST change: no offset can be chosen without guessing
            if ts.tz_localize(assume_tz, ambiguous=True, nonexistent="NaT") is pd.NaT:
                return pd.NaT, f"nonexistent in {assume_tz} (clocks skip this hour at a DST change)", False
            return pd.NaT, f"ambiguous in {assume_tz} (this hour happens twice at a DST change)", False
        ts, how = local, f"naive, read in {assume_tz}"
    else:
        how = f"converted from {ts.tzname()}"
    try:
        return ts.tz_convert("UTC").as_unit("ns"), how, True
    except (ValueError, OverflowError):  # OutOfBoundsDatetime is a ValueError
        return pd.NaT, "outside the datetime64[ns] range (years 1677-2262)", False


def to_utc(df: pd.DataFrame, column: str, assume_tz: str = "UTC", errors: str = "remove",
           dayfirst: bool = False) -> RuleResult:
    """Parse mixed timestamps (ISO with any offset, `Z`, naive strings, datetimes) to one UTC column.

    Naive values are read in `assume_tz`; bare numbers are bad values (an epoch's unit is not in the number). ISO 8601 values are always read as ISO; `dayfirst` applies to
    the other formats only ("05/03/2024" is 5 March with `dayfirst=True`). Bad values are unparseable
    text, out-of-range dates, and naive times that do not exist (the hour skipped when clocks go forward)
    or are ambiguous (the hour repeated when they go back) in `assume_tz`: there is no right answer for
    those without an offset, so write one ("-05:00") to keep them. Bad rows are removed
    (`errors="remove"`), set to NaT (`"coerce"`) or raise (`"raise"`); every case names each bad row and
    its reason (warning or error), and the reason is kept in `RuleResult.reasons` (removed rows) or in
    `changed["reason"]` (coerced cells). Changed cells are those whose input was not already written as
    the UTC instant in ISO form. Shown in notebooks/01 §2.
    """
    _check_column(df, column)
    if errors not in ("remove", "coerce", "raise"):
        raise ValueError(f"errors must be 'remove', 'coerce' or 'raise', got {errors!r}")
    try:
        pd.Timestamp("2000-01-01").tz_localize(assume_tz)
    except Exception as exc:
        raise ValueError(f"unknown time zone {assume_tz!r}") from exc
    before = df[column]
    seen: dict[str, tuple] = {}  # text values repeat (dates, sentinels): parse each distinct one once

    def parse(value) -> tuple:
        if not isinstance(value, str):
            return _parse_utc(value, assume_tz, dayfirst)
        if value not in seen:
            seen[value] = _parse_utc(value, assume_tz, dayfirst)
        return seen[value]

    results = [parse(v) for v in before]
    parsed = pd.Series([r[0] for r in results], index=df.index, dtype="datetime64[ns, UTC]")
    why = pd.Series([r[1] for r in results], index=df.index, dtype=object)
    bad = ~np.array([r[2] for r in results], dtype=bool)
    if bad.any():
        by_reason: dict[str, list] = {}
        for row, reason in why[bad].items():
            by_reason.setdefault(reason, []).append(row)
        detail = "; ".join(f"{'row' if len(rows) == 1 else 'rows'} {_rows(rows)} {reason}"
                           for reason, rows in by_reason.items())
        message = f"column {column!r} has {int(bad.sum())} bad timestamp(s): {detail}"
        if errors == "raise":
            raise ValueError(message)
        warnings.warn(message + ("; rows removed" if errors == "remove" else "; set to NaT"), stacklevel=2)
    canonical = {i: {ts.isoformat(), ts.strftime("%Y-%m-%dT%H:%M:%SZ"), ts.strftime("%Y-%m-%d %H:%M:%S+00:00")}
                 for i, ts in parsed.dropna().items()}

    def already_utc(i, v) -> bool:
        if isinstance(v, str):
            return v.strip() in canonical.get(i, ())
        return getattr(v, "tzinfo", None) is not None and v.utcoffset() == pd.Timedelta(0)

    differs = np.array([how != "missing" and not already_utc(i, v)
                        for (i, v), how in zip(before.items(), why, strict=True)], dtype=bool)
    keep = ~bad if errors == "remove" else np.ones(len(df), bool)
    out = df.copy()
    out[column] = parsed
    changed_idx = df.index[differs & keep]
    changed = pd.DataFrame({"row": changed_idx, "column": column, "before": before[changed_idx].to_numpy(),
                            "after": parsed[changed_idx].astype(object).to_numpy(),
                            "reason": why[changed_idx].to_numpy()}, columns=_CHANGE_COLUMNS)
    note = f"{len(changed_idx)} timestamps standardized to UTC"
    if bad.any():
        note += f"; {int(bad.sum())} bad ({'removed' if errors == 'remove' else 'set to NaT'})"
    return RuleResult(out[keep], df[~keep], changed, note, why[~keep])
