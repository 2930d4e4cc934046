"""Cleaning rules, the pipeline report and its nothing-lost invariant, text cleaning and PII masking."""

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cookbook.data import clean
from cookbook.data.clean import step


def frame():
    return pd.DataFrame({
        "id": [1, 2, 2, 3, 4, 1],
        "age": [20.0, np.nan, 40.0, 30.0, np.nan, 50.0],
        "city": ["Oslo", None, "Rome", "Oslo", "Rome", "Oslo"],
        "x": [1.0, 2.0, 3.0, 4.0, 5.0, 100.0],
    })


# ---------------------------------------------------------------------------------------- rules
def test_drop_duplicate_keys_keeps_first_or_last():
    result = clean.drop_duplicate_keys(frame(), keys="id")
    assert result.frame.index.tolist() == [0, 1, 3, 4] and result.removed.index.tolist() == [2, 5]
    assert clean.drop_duplicate_keys(frame(), keys=["id"], keep="last").removed.index.tolist() == [0, 1]
    with pytest.raises(ValueError, match="keep must be"):
        clean.drop_duplicate_keys(frame(), keys="id", keep="none")


@pytest.mark.parametrize("strategy, expected", [("mean", 35.0), ("median", 35.0), ("constant", -1.0)])
def test_fill_missing_numeric(strategy, expected):
    result = clean.fill_missing(frame(), "age", strategy, value=-1.0 if strategy == "constant" else None)
    assert result.frame["age"].tolist() == [20.0, expected, 40.0, 30.0, expected, 50.0]
    assert result.changed["row"].tolist() == [1, 4]
    assert result.changed["before"].isna().all() and (result.changed["after"] == expected).all()


def test_fill_missing_mode_takes_the_most_frequent_value():
    result = clean.fill_missing(frame(), "city", "mode")
    assert result.frame.loc[1, "city"] == "Oslo" and len(result.changed) == 1


def test_fill_missing_bad_input_names_the_column():
    df = frame().assign(empty=np.nan)
    with pytest.raises(ValueError, match="'empty' is all missing"):
        clean.fill_missing(df, "empty", "median")
    with pytest.raises(ValueError, match="column 'city' has dtype .* not numeric"):
        clean.fill_missing(df, "city", "mean")
    with pytest.raises(ValueError, match="no column 'salary'"):
        clean.fill_missing(df, "salary")
    with pytest.raises(ValueError, match="strategy must be"):
        clean.fill_missing(df, "age", "average")
    with pytest.raises(ValueError, match="needs a fill value"):
        clean.fill_missing(df, "age", "constant")


def test_zscore_matches_hand_computation():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0])
    z = np.abs(x - x.mean()) / x.std()  # population std, as the rule documents
    result = clean.zscore_outliers(frame(), "x", threshold=2.0)
    assert result.removed.index.tolist() == np.flatnonzero(z > 2.0).tolist() == [5]
    assert clean.zscore_outliers(frame(), "x", threshold=3.0).removed.empty  # |z| = 2.236: masking by a small n
    with pytest.warns(UserWarning, match="no spread"):
        assert clean.zscore_outliers(frame().assign(c=1.0), "c").removed.empty


def test_iqr_matches_tukey_fences():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0])
    q1, q3 = np.percentile(x, [25, 75])
    outside = (x < q1 - 1.5 * (q3 - q1)) | (x > q3 + 1.5 * (q3 - q1))
    assert clean.iqr_outliers(frame(), "x").removed.index.tolist() == np.flatnonzero(outside).tolist() == [5]
    with pytest.raises(ValueError, match="all missing"):
        clean.iqr_outliers(frame().assign(e=np.nan), "e")


def test_to_utc_mixed_offsets_and_naive_strings():
    df = pd.DataFrame({"t": ["2024-03-01T10:00:00+02:00", "2024-03-01 08:00:00", "2024-03-01T08:00:00Z",
                             "2024-03-01T03:00:00-05:00", "2024-03-01T08:00:00+00:00"]})
    result = clean.to_utc(df, "t")
    assert (result.frame["t"] == pd.Timestamp("2024-03-01 08:00", tz="UTC")).all()
    assert str(result.frame["t"].dtype) == "datetime64[ns, UTC]"
    assert result.changed["row"].tolist() == [0, 1, 3]  # already-canonical UTC strings are not changes
    stamps = pd.DataFrame({"t": pd.to_datetime(["2024-03-01 08:00", "2024-03-01 09:00"]).tz_localize("UTC")})
    assert clean.to_utc(stamps, "t").changed.empty  # aware UTC datetimes are already standard
    naive = clean.to_utc(stamps.assign(t=stamps["t"].dt.tz_localize(None)), "t", assume_tz="America/New_York")
    assert naive.frame["t"].tolist() == (stamps["t"] + pd.Timedelta(hours=5)).tolist() and len(naive.changed) == 2
    paris = clean.to_utc(df.iloc[[1]], "t", assume_tz="Europe/Paris")  # winter: UTC+1
    assert paris.frame["t"].iloc[0] == pd.Timestamp("2024-03-01 07:00", tz="UTC")


def test_to_utc_unparseable_values_are_named_and_kept_aside():
    df = pd.DataFrame({"t": ["2024-01-01T00:00:00Z", "2024-02-30 10:00", "soon", None]})
    with pytest.warns(UserWarning, match=r"2 unparseable timestamp\(s\) in rows 1, 2; rows removed"):
        result = clean.to_utc(df, "t")
    assert result.removed.index.tolist() == [1, 2] and result.frame.index.tolist() == [0, 3]
    assert pd.isna(result.frame.loc[3, "t"])  # missing stays missing; it is not an error
    with pytest.warns(UserWarning, match="set to NaT"):
        assert len(clean.to_utc(df, "t", errors="nat").frame) == 4
    with pytest.raises(ValueError, match="rows 1, 2"):
        clean.to_utc(df, "t", errors="raise")
    with pytest.raises(ValueError, match="unknown time zone"):
        clean.to_utc(df, "t", assume_tz="Mars/Olympus")


def test_fix_unicode_repairs_mojibake_bytes_and_nfd():
    df = pd.DataFrame({"s": ["cafÃ©", "São Paulo", "Cafe\u0301", "naïve".encode(), "Müller".encode("cp1252"),
                             "plain", "â€œquotedâ€\x9d"]})
    with pytest.warns(UserWarning, match=r"rows 4 were not valid UTF-8"):
        result = clean.fix_unicode(df, "s")
    assert result.frame["s"].tolist() == ["café", "São Paulo", "Café", "naïve", "Müller", "plain", "“quoted”"]
    assert result.changed["row"].tolist() == [0, 2, 3, 4, 6]
    assert clean.fix_mojibake("cafÃƒÂ©") == "café"  # double-encoded
    assert clean.fix_mojibake("Ãgua é vida") == "Ãgua é vida"  # no telltale pair: left alone


def test_normalize_whitespace_removes_controls():
    df = pd.DataFrame({"s": ["  a  b\t", "x\x00y", "\u200bz", "ok", None]})
    result = clean.normalize_whitespace(df, "s")
    assert result.frame["s"].tolist()[:4] == ["a b", "xy", "z", "ok"] and pd.isna(result.frame["s"].iloc[4])
    assert result.changed["row"].tolist() == [0, 1, 2]


def test_rules_reject_bad_frames():
    with pytest.raises(ValueError, match="empty frame"):
        clean.fill_missing(pd.DataFrame({"a": []}), "a")
    with pytest.raises(TypeError, match="expected a pandas DataFrame"):
        clean.normalize_whitespace([1, 2], "a")
    with pytest.raises(ValueError, match="repeated labels"):
        clean.normalize_whitespace(pd.DataFrame({"a": ["x", "y"]}, index=[0, 0]), "a")
    with pytest.raises(ValueError, match="column 'flag' has dtype bool"):
        clean.zscore_outliers(pd.DataFrame({"flag": [True, False]}), "flag")


# ------------------------------------------------------------------------------------- pipeline
def test_pipeline_report_counts_and_removed_rows():
    rules = [step(clean.drop_duplicate_keys, keys=["id"]), step(clean.fill_missing, column="age", strategy="median"),
             step(clean.iqr_outliers, column="x"), step(clean.fill_missing, column="city", strategy="mode")]
    result = clean.pipeline(frame(), rules)
    assert result.summary["rule"].tolist()[0] == "drop_duplicate_keys(['id'])"
    assert result.summary[["rows in", "rows out", "rows removed"]].values.tolist() == [
        [6, 4, 2], [4, 4, 0], [4, 4, 0], [4, 4, 0]]
    assert result.summary["cells changed"].tolist() == [0, 2, 0, 1]
    assert result.removed["removed_by"].tolist() == ["drop_duplicate_keys(['id'])"] * 2
    pd.testing.assert_frame_equal(result.removed.drop(columns="removed_by"), frame().loc[[2, 5]])
    assert set(result.changes["rule"]) == {"fill_missing(age, median)", "fill_missing(city, mode)"}


def test_pipeline_skips_rules_once_every_row_is_gone():
    df = pd.DataFrame({"t": ["never", "later"], "v": [1.0, np.nan]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = clean.pipeline(df, [step(clean.to_utc, column="t"), step(clean.fill_missing, column="v")])
    assert [str(w.message) for w in caught] == ["column 't': 2 unparseable timestamp(s) in rows 0, 1; rows removed",
                                                "the pipeline removed all 2 rows; see result.removed"]
    assert result.frame.empty and len(result.removed) == 2
    assert result.summary["note"].tolist()[1] == "skipped: no rows left"


def test_pipeline_rejects_bad_rules():
    with pytest.raises(ValueError, match="at least one rule"):
        clean.pipeline(frame(), [])
    with pytest.raises(TypeError, match="not a RuleResult"):
        clean.pipeline(frame(), [lambda df: df])
    with pytest.raises(AssertionError, match="lost rows"):
        clean.pipeline(frame(), [lambda df: clean.RuleResult(df.iloc[1:], df.iloc[:0], pd.DataFrame())])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)), min_size=1, max_size=40),
    keys=st.lists(st.integers(0, 5), min_size=40, max_size=40),
    texts=st.lists(st.text(max_size=8), min_size=40, max_size=40),
    order=st.permutations(range(7)),
)
def test_nothing_is_ever_lost(values, keys, texts, order):
    n = len(values)
    df = pd.DataFrame({"k": keys[:n], "v": pd.array(values, dtype="Float64").astype(float), "s": texts[:n]},
                      index=np.arange(100, 100 + n))
    rules = [step(clean.drop_duplicate_keys, keys="k"), step(clean.zscore_outliers, column="v", threshold=1.5),
             step(clean.iqr_outliers, column="v"), step(clean.normalize_whitespace, column="s"),
             step(clean.fix_unicode, column="s"), step(clean.fill_missing, column="v", strategy="median"),
             step(clean.to_utc, column="s")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = clean.pipeline(df, [rules[i] for i in order])
        except ValueError as exc:  # an all-missing column is refused by name, never a crash
            assert "all missing" in str(exc)
            return
    assert len(df) == len(result.frame) + len(result.removed)
    assert sorted([*result.frame.index, *result.removed.index]) == df.index.tolist()
    pd.testing.assert_frame_equal(result.removed.drop(columns="removed_by"), df.loc[result.removed.index])


# ------------------------------------------------------------------------------------------ text
def test_clean_text_and_stopwords():
    raw = "<p>Visit   https://example.org/x?y=1 &amp; WIN a Ｃａｒ!</p>"
    assert clean.clean_text(raw) == "visit & win a car!"
    assert clean.clean_text(raw, lowercase=False, strip_punctuation=True) == "Visit WIN a Car"
    assert clean.remove_stopwords("This is not the best of the tests") == "not best tests"
    assert clean.remove_stopwords("a cat", stopwords=["cat"]) == "a"
    assert len(clean.STOPWORDS) > 100 and "not" not in clean.STOPWORDS
    with pytest.raises(TypeError, match="expected str, got float"):
        clean.clean_text(float("nan"))


def test_mask_pii_finds_emails_ips_and_phones_but_not_dates_or_versions():
    text = ("Mail jane.doe+ml@mail.example.co.uk, call +1 (555) 123-4567 or 020 7946 0958, host 10.0.0.255 / "
            "fe80::1ff:fe23:4567:890a. Python 3.11.7 released 2024-03-01, port 8080, 999.1.1.1 is no IP.")
    assert clean.find_pii(text) == [("email", "jane.doe+ml@mail.example.co.uk"), ("phone", "+1 (555) 123-4567"),
                                         ("phone", "020 7946 0958"), ("ip", "10.0.0.255"),
                                         ("ip", "fe80::1ff:fe23:4567:890a")]
    assert clean.mask_pii(text).startswith("Mail <EMAIL>, call <PHONE> or <PHONE>, host <IP> / <IP>. Python 3.11.7")
    assert clean.mask_pii("no pii here") == "no pii here"


def test_map_text_applies_a_text_function_with_a_report():
    df = pd.DataFrame({"note": ["mail a@b.io", "nothing", None]})
    result = clean.map_text(df, "note", clean.mask_pii)
    assert result.frame["note"].tolist()[:2] == ["mail <EMAIL>", "nothing"]
    assert result.changed["row"].tolist() == [0] and result.note == "mask_pii"


def test_docstrings_extracts_summaries_in_order():
    code = 'def f():\n    """Add two\n    numbers.\n\n    Details here."""\n\nclass C:\n    """A class."""\n    x = 1\n'
    assert clean.docstrings(code) == ["Add two numbers.", "A class."]
    assert clean.docstrings(code, first_line=False)[0] == "Add two\nnumbers.\n\nDetails here."
    assert clean.docstrings("def broken(:") == []
