"""to_utc: mixed timestamps to UTC, checked against zoneinfo; day-first formats; DST gaps and overlaps."""

import datetime as dt
import warnings
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from cookbook.data import clean
from cookbook.data.clean import step
from tests.data.clean.caller import at_caller

UTC = dt.timezone.utc



def test_to_utc_mixed_offsets_and_naive_strings():
    df = pd.DataFrame({"t": ["2024-03-01T10:00:00+02:00", "2024-03-01 08:00:00", "2024-03-01T08:00:00Z",
                             "2024-03-01T03:00:00-05:00", "2024-03-01T08:00:00+00:00"]})
    result = clean.to_utc(df, "t")
    assert (result.frame["t"] == pd.Timestamp("2024-03-01 08:00", tz="UTC")).all()
    assert str(result.frame["t"].dtype) == "datetime64[ns, UTC]"
    assert result.changed["row"].tolist() == [0, 1, 3]  # already-canonical UTC strings are not changes
    assert result.changed["reason"].tolist() == ["converted from UTC+02:00", "naive, read in UTC",
                                                 "converted from UTC-05:00"]
    stamps = pd.DataFrame({"t": pd.to_datetime(["2024-03-01 08:00", "2024-03-01 09:00"]).tz_localize("UTC")})
    assert clean.to_utc(stamps, "t").changed.empty  # aware UTC datetimes are already standard
    naive = clean.to_utc(stamps.assign(t=stamps["t"].dt.tz_localize(None)), "t", assume_tz="America/New_York")
    assert naive.frame["t"].tolist() == (stamps["t"] + pd.Timedelta(hours=5)).tolist() and len(naive.changed) == 2
    paris = clean.to_utc(df.iloc[[1]], "t", assume_tz="Europe/Paris")  # winter: UTC+1
    assert paris.frame["t"].iloc[0] == pd.Timestamp("2024-03-01 07:00", tz="UTC")


def test_to_utc_unparseable_values_are_named_and_kept_aside():
    df = pd.DataFrame({"t": ["2024-01-01T00:00:00Z", "2024-02-30 10:00", "soon", None, "9999-01-01"]})
    with pytest.warns(UserWarning, match=r"3 bad timestamp\(s\): rows 1, 2 unparseable; row 4 outside the "
                                         r"datetime64\[ns\] range .*; rows removed"):
        result = clean.to_utc(df, "t")
    assert result.removed.index.tolist() == [1, 2, 4] and result.frame.index.tolist() == [0, 3]
    assert result.reasons.tolist() == ["unparseable", "unparseable", "outside the datetime64[ns] range (years "
                                       "1677-2262)"]
    assert pd.isna(result.frame.loc[3, "t"])  # missing stays missing; it is not an error
    with pytest.warns(UserWarning, match="set to NaT"):
        coerced = clean.to_utc(df, "t", errors="coerce")
    assert len(coerced.frame) == 5 and coerced.frame["t"].isna().tolist() == [False, True, True, True, True]
    assert coerced.changed.set_index("row")["reason"][[1, 2]].tolist() == ["unparseable"] * 2
    with pytest.raises(ValueError, match="rows 1, 2 unparseable"):
        clean.to_utc(df, "t", errors="raise")
    with pytest.raises(ValueError, match="errors must be 'remove', 'coerce' or 'raise', got 'nat'"):
        clean.to_utc(df, "t", errors="nat")
    with pytest.raises(ValueError, match="unknown time zone"):
        clean.to_utc(df, "t", assume_tz="Mars/Olympus")


# ------------------------------------------------------------------------------------- ISO vs day-first
# Every ISO 8601 spelling with a day <= 12 (where a day/month swap would still be a valid date), and the
# instant it means, written out by hand.
ISO = {
    "2024-03-05T10:15:00Z": dt.datetime(2024, 3, 5, 10, 15, tzinfo=UTC),
    "2024-03-05T10:15:00+02:00": dt.datetime(2024, 3, 5, 8, 15, tzinfo=UTC),
    "2024-01-02T23:30:00-0530": dt.datetime(2024, 1, 3, 5, 0, tzinfo=UTC),
    "2024-12-11T10:15:00.250Z": dt.datetime(2024, 12, 11, 10, 15, 0, 250000, tzinfo=UTC),
    " 2024-03-05T10:15Z ": dt.datetime(2024, 3, 5, 10, 15, tzinfo=UTC),
    "2024-03-05 10:15:00": dt.datetime(2024, 3, 5, 10, 15),  # naive: read in assume_tz
    "2024-03-05T10:15": dt.datetime(2024, 3, 5, 10, 15),
    "2024-04-06": dt.datetime(2024, 4, 6),
}


@pytest.mark.parametrize("assume_tz", ["UTC", "Europe/Paris"])
@pytest.mark.parametrize("dayfirst", [True, False])
def test_iso_values_parse_as_iso_whatever_dayfirst_says(dayfirst, assume_tz):
    others = {"05/03/2024 10:15": dt.datetime(2024, 3, 5, 10, 15) if dayfirst else dt.datetime(2024, 5, 3, 10, 15),
              "11/12/2024": dt.datetime(2024, 12, 11) if dayfirst else dt.datetime(2024, 11, 12)}
    values = {**ISO, **others}
    df = pd.DataFrame({"t": list(values)})
    result = clean.to_utc(df, "t", assume_tz=assume_tz, dayfirst=dayfirst)
    zone = ZoneInfo(assume_tz)
    expected = [(v if v.tzinfo else v.replace(tzinfo=zone)).astimezone(UTC) for v in values.values()]
    assert result.removed.empty
    assert [ts.to_pydatetime() for ts in result.frame["t"]] == expected


# ------------------------------------------------------------------------------------- DST gaps and overlaps
def _kind(naive: dt.datetime, zone: ZoneInfo) -> str:
    """zoneinfo's verdict on a wall-clock time: ok, nonexistent (in a gap) or ambiguous (in an overlap)."""
    first, second = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return "ok"
    round_trip = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    return "ambiguous" if round_trip == naive else "nonexistent"


def _wall_clock_cases(zone_name: str) -> dict[dt.datetime, str]:
    """For each DST change of 2024 in a zone: the middle of the gap or overlap, and times around it."""
    zone = ZoneInfo(zone_name)
    cases = {}
    step_ = dt.timedelta(minutes=15)
    t = dt.datetime(2024, 1, 1, tzinfo=UTC)
    while t.year == 2024:
        old, new = t.astimezone(zone).utcoffset(), (t + step_).astimezone(zone).utcoffset()
        if old != new:  # t + step_ is the first instant on the new offset
            change = (t + step_).replace(tzinfo=None)
            low, high = sorted([change + old, change + new])  # the wall-clock times skipped or repeated
            cases[low + (high - low) / 2] = "nonexistent" if new > old else "ambiguous"
            for around in (low - dt.timedelta(hours=2), high + dt.timedelta(hours=3)):
                cases[around] = "ok"
        t += step_
    assert len(cases) == 6, zone_name  # two changes a year, three times each
    assert all(_kind(naive, zone) == kind for naive, kind in cases.items())  # the hand-made cases agree
    return cases


ZONES = ["America/New_York", "Europe/Paris", "Australia/Sydney", "America/Santiago"]


@pytest.mark.parametrize("zone_name", ZONES)
def test_dst_gaps_and_overlaps_are_bad_rows_with_a_reason(zone_name):
    cases = _wall_clock_cases(zone_name)
    zone = ZoneInfo(zone_name)
    df = pd.DataFrame({"t": [naive.strftime("%Y-%m-%d %H:%M") for naive in cases], "v": np.arange(len(cases))})
    kinds = pd.Series(list(cases.values()), index=df.index)
    bad = kinds[kinds != "ok"]
    with pytest.warns(UserWarning, match=rf"{len(bad)} bad timestamp\(s\).*rows removed") as caught:
        result = clean.to_utc(df, "t", assume_tz=zone_name)
    message = str(caught[0].message)
    for row, kind in bad.items():
        assert f"row {row} {kind} in {zone_name}" in message
    assert result.removed.index.tolist() == bad.index.tolist()
    assert [reason.split(" ")[0] for reason in result.reasons] == bad.tolist()
    good = [naive.replace(tzinfo=zone).astimezone(UTC) for naive, kind in cases.items() if kind == "ok"]
    assert [ts.to_pydatetime() for ts in result.frame["t"]] == good

    with pytest.warns(UserWarning, match="set to NaT"):
        coerced = clean.to_utc(df, "t", assume_tz=zone_name, errors="coerce")
    assert coerced.frame["t"].isna().tolist() == (kinds != "ok").tolist()
    reasons = coerced.changed.set_index("row")["reason"]
    assert [reasons[row].split(" ")[0] for row in bad.index] == bad.tolist()
    with pytest.raises(ValueError, match=f"row {bad.index[0]} {bad.iloc[0]} in {zone_name}"):
        clean.to_utc(df, "t", assume_tz=zone_name, errors="raise")


def test_dst_change_in_a_pipeline_removes_the_row_and_goes_on():
    df = pd.DataFrame({"t": ["2024-03-10 02:30", "2024-11-03 01:30", "2024-11-03 01:30-04:00", "2024-07-01 12:00"],
                       "v": [1.0, np.nan, 3.0, np.nan]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = clean.pipeline(df, [step(clean.to_utc, column="t", assume_tz="America/New_York"),
                                     step(clean.fill_missing, column="v", strategy="constant", value=0.0)])
    assert [str(w.message) for w in caught] == [
        "column 't' has 2 bad timestamp(s): row 0 nonexistent in America/New_York (clocks skip this hour at a DST "
        "change); row 1 ambiguous in America/New_York (this hour happens twice at a DST change); rows removed"]
    assert result.removed["reason"].str.split(" ").str[0].tolist() == ["nonexistent", "ambiguous"]
    assert result.removed["removed_by"].tolist() == ["to_utc(t, America/New_York)"] * 2
    # with its offset written, the repeated hour is one instant: kept
    assert result.frame["t"].tolist() == [pd.Timestamp("2024-11-03 05:30", tz="UTC"),
                                          pd.Timestamp("2024-07-01 16:00", tz="UTC")]
    assert result.frame["v"].tolist() == [3.0, 0.0]


@pytest.mark.parametrize("errors, rows, note", [
    ("remove", [0, 4], "2 timestamps standardized to UTC; 1 bad (removed)"),
    ("coerce", [0, 2, 4], "3 timestamps standardized to UTC; 1 bad (set to NaT)"),
])
def test_to_utc_change_log_note_and_warning_in_full(errors, rows, note):
    plus_one = dt.timezone(dt.timedelta(hours=1))
    df = pd.DataFrame({"t": ["2024-03-05T10:00:00+02:00", "2024-03-05 08:00:00+00:00", "not a date", None,
                             dt.datetime(2024, 1, 1, tzinfo=plus_one)]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = clean.to_utc(df, "t", errors=errors)
    assert [str(w.message) for w in caught] == [
        "column 't' has 1 bad timestamp(s): row 2 unparseable; " + ("rows removed" if errors == "remove" else "set to NaT")]
    assert at_caller(caught[0], __file__)  # the warning points at the caller's line
    assert result.note == note
    # by hand: 10:00 at +02:00 is 08:00 UTC; midnight at +01:00 is 23:00 UTC the day before; row 1 is already
    # written as the UTC instant, row 3 is missing: neither is a change
    expected = {0: ("2024-03-05T10:00:00+02:00", pd.Timestamp("2024-03-05 08:00", tz="UTC"), "converted from UTC+02:00"),
                2: ("not a date", pd.NaT, "unparseable"),
                4: (dt.datetime(2024, 1, 1, tzinfo=plus_one), pd.Timestamp("2023-12-31 23:00", tz="UTC"),
                    "converted from UTC+01:00")}
    assert list(result.changed.columns) == ["row", "column", "before", "after", "reason"]
    assert result.changed["row"].tolist() == rows and set(result.changed["column"]) == {"t"}
    for row, before, after, reason in result.changed[["row", "before", "after", "reason"]].itertuples(index=False):
        assert (before, reason) == (expected[row][0], expected[row][2])
        assert after == expected[row][1] or (pd.isna(after) and pd.isna(expected[row][1]))
    assert len(result.frame) == (4 if errors == "remove" else 5)


@pytest.mark.parametrize("n, rows", [(8, "rows 0, 1, 2, 3, 4, 5, 6, 7"), (9, "rows 0, 1, 2, 3, 4, 5, 6, 7 … (9 rows)")])
def test_bad_rows_are_listed_up_to_eight(n, rows):
    with pytest.warns(UserWarning) as caught:
        clean.to_utc(pd.DataFrame({"t": ["never"] * n}), "t", errors="coerce")
    assert str(caught[0].message) == f"column 't' has {n} bad timestamp(s): {rows} unparseable; set to NaT"


def test_to_utc_reads_month_first_by_default_and_dates_in_the_assumed_zone():
    df = pd.DataFrame({"t": ["05/03/2024", dt.date(2024, 3, 5)]})
    result = clean.to_utc(df, "t", assume_tz="Europe/Oslo")
    # pandas' (and the US) default: month first, 3 May; a date is local midnight, Oslo is UTC+1 in March
    expected = [dt.datetime(2024, 5, 3, tzinfo=ZoneInfo("Europe/Oslo")), dt.datetime(2024, 3, 5, tzinfo=ZoneInfo("Europe/Oslo"))]
    assert result.frame["t"].tolist() == [pd.Timestamp(e).tz_convert("UTC") for e in expected]
    assert result.changed["reason"].tolist() == ["naive, read in Europe/Oslo"] * 2


def test_to_utc_unparseable_cells_of_any_kind_and_an_all_missing_column():
    df = pd.DataFrame({"t": [[1, 2], "", "NaT", "2024-01-01"]})
    with pytest.warns(UserWarning, match=r"^column 't' has 3 bad timestamp\(s\): rows 0, 1, 2 unparseable; set to NaT$"):
        result = clean.to_utc(df, "t", errors="coerce")
    assert result.changed["reason"].tolist() == ["unparseable"] * 3 + ["naive, read in UTC"]
    assert result.frame["t"].isna().tolist() == [True, True, True, False]
    empty = clean.to_utc(pd.DataFrame({"t": [None, np.nan]}), "t")
    assert str(empty.frame["t"].dtype) == "datetime64[ns, UTC]" and empty.frame["t"].isna().all()
    assert empty.changed.empty and empty.removed.empty  # missing stays missing: not bad, not a change


def test_bare_numbers_are_bad_values_that_say_how_to_read_an_epoch():
    frame = pd.DataFrame({"t": [0, 1_700_000_000, 1.7e12, np.int64(5), "2024-03-05T10:00:00Z", True]})
    with pytest.warns(UserWarning, match=r"rows 0, 1, 2, 3 a number, not a timestamp \(epoch values: "):
        result = clean.to_utc(frame, "t", assume_tz="Europe/Oslo", errors="coerce")
    assert result.frame["t"].isna().tolist() == [True] * 4 + [False, True]  # never 1970 in Oslo, never nanoseconds
    reasons = result.changed.set_index("row")["reason"]
    assert reasons[5] == "unparseable"  # a bool is no number of seconds either
    # what the message advises reads seconds since 1970 in UTC: 1.7e9 s is 2023-11-14 22:13:20Z (by hand)
    assert pd.to_datetime(frame["t"][1], unit="s", utc=True) == pd.Timestamp("2023-11-14 22:13:20", tz="UTC")
