"""Cleaning rules, the pipeline report and its nothing-lost invariant, mojibake repair (timestamps and text
cleaning have their own test modules)."""

import functools
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cookbook.data import clean
from cookbook.data.clean import step
from tests.data.clean.caller import at_caller


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
    assert clean.zscore_outliers(frame(), "x", threshold=3.0).removed.empty  # |z| = 2.235: masking by a small n
    with pytest.warns(UserWarning, match="no spread"):
        assert clean.zscore_outliers(frame().assign(c=1.0), "c").removed.empty


def test_iqr_matches_tukey_fences():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0])
    q1, q3 = np.percentile(x, [25, 75])
    outside = (x < q1 - 1.5 * (q3 - q1)) | (x > q3 + 1.5 * (q3 - q1))
    assert clean.iqr_outliers(frame(), "x").removed.index.tolist() == np.flatnonzero(outside).tolist() == [5]
    with pytest.raises(ValueError, match="all missing"):
        clean.iqr_outliers(frame().assign(e=np.nan), "e")


def test_fix_unicode_repairs_mojibake_bytes_and_nfd():
    df = pd.DataFrame({"s": ["cafÃ©", "São Paulo", "Cafe\u0301", "naïve".encode(), "Müller".encode("cp1252"),
                             "plain", "â€œquotedâ€\x9d", "ÐŸÑ€Ð¸Ð²ÐµÑ‚"]})
    with pytest.warns(UserWarning, match=r"rows 4 were not valid UTF-8"):
        result = clean.fix_unicode(df, "s")
    assert result.frame["s"].tolist() == ["café", "São Paulo", "Café", "naïve", "Müller", "plain", "“quoted”",
                                          "Привет"]
    assert result.changed["row"].tolist() == [0, 2, 3, 4, 6, 7]
    assert result.changed["reason"].tolist() == [
        "mojibake repaired by ftfy: encode latin-1, decode utf-8", "normalized to NFC", "bytes decoded as UTF-8",
        "bytes not valid UTF-8: decoded as cp1252", "mojibake repaired by ftfy: encode sloppy-windows-1252, "
        "decode utf-8", "mojibake repaired by ftfy: encode sloppy-windows-1252, decode utf-8"]
    assert result.note == "3 mojibake repaired, 1 non-UTF-8 cells"


# One sentence per script family; the damage is done by hand: UTF-8 bytes read as latin-1, or as cp1252
# the way browsers and Windows do it (the five bytes cp1252 leaves undefined pass through as latin-1).
SCRIPTS = {
    "latin": "Crème brûlée à São Paulo, Øresund, Łódź", "cyrillic": "Съешь же ещё этих мягких булок",
    "greek": "Καλημέρα κόσμε, ξεσκεπάζω", "chinese": "中文文本的编码问题", "japanese": "日本語のテキストとカタカナ",
    "korean": "한국어 텍스트입니다", "arabic": "مرحبا بالعالم", "hebrew": "שלום עולם", "devanagari": "नमस्ते दुनिया",
    "thai": "สวัสดีครับ", "emoji": "party 🎉 thumbs 👍🏽 family 👨\u200d👩\u200d👧 done ✅",
}
_CP1252_UNDEFINED = {0x81, 0x8D, 0x8F, 0x90, 0x9D}


def _as_cp1252(raw: bytes) -> str:
    return "".join(chr(b) if b in _CP1252_UNDEFINED else bytes([b]).decode("cp1252") for b in raw)


def _as_latin1(raw: bytes) -> str:
    return "".join(map(chr, raw))


@pytest.mark.parametrize("script", list(SCRIPTS))
@pytest.mark.parametrize("misread", [_as_cp1252, _as_latin1])
def test_mojibake_of_every_script_is_repaired(script, misread):
    text = SCRIPTS[script]
    once = misread(text.encode("utf-8"))
    twice = misread(once.encode("utf-8"))
    assert once != text and clean.fix_mojibake(once) == text
    assert clean.fix_mojibake(twice) == text  # double-encoded
    assert clean.fix_mojibake(text) == text  # correct text is left alone
    result = clean.fix_unicode(pd.DataFrame({"s": [once, text]}), "s")
    assert result.frame["s"].tolist() == [text, text] and result.changed["row"].tolist() == [0]
    codec = "latin-1" if misread is _as_latin1 else "sloppy-windows-1252"
    assert result.changed["reason"][0].startswith(f"mojibake repaired by ftfy: encode {codec}, decode utf-8")


@pytest.mark.parametrize("text", ["Ãgua é vida", "São Paulo", "naïve façade", "“quoted” — dash", "Ångström",
                                  "x ≤ y ± 1 µm", "plain ascii"])
def test_fix_mojibake_leaves_correct_text_alone(text):
    assert clean.fix_mojibake(text) == text


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
    pd.testing.assert_frame_equal(result.removed.drop(columns=["removed_by", "reason"]), frame().loc[[2, 5]])
    assert result.removed["reason"].tolist() == ["repeats the key ['id'] of another row (keep='first')"] * 2
    assert set(result.changes["rule"]) == {"fill_missing(age, median)", "fill_missing(city, mode)"}
    assert result.changes.set_index(["rule", "row"])["reason"].to_dict() == {
        ("fill_missing(age, median)", 1): "missing: filled with median = 25",
        ("fill_missing(age, median)", 4): "missing: filled with median = 25",
        ("fill_missing(city, mode)", 1): "missing: filled with mode = 'Oslo'"}


def test_removed_rows_say_why_row_by_row():
    df = frame()
    z = clean.zscore_outliers(df, "x", threshold=2.0)
    assert z.reasons.to_dict() == {5: "|z| = 2.23 > 2.0"}  # (100 - 19.17) / 36.17 = 2.2346
    iqr = clean.iqr_outliers(df, "x")
    assert iqr.reasons.to_dict() == {5: "100 outside [-1.5, 8.5]"}  # Q1 = 2.25, Q3 = 4.75, k·IQR = 3.75
    custom = clean.pipeline(df, [lambda d: clean.RuleResult(d.iloc[1:], d.iloc[:1], pd.DataFrame(), note="my rule")])
    assert custom.removed["reason"].tolist() == ["my rule"]  # a rule without per-row reasons: its note


def test_pipeline_skips_rules_once_every_row_is_gone():
    df = pd.DataFrame({"t": ["never", "later"], "v": [1.0, np.nan]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = clean.pipeline(df, [step(clean.to_utc, column="t"), step(clean.fill_missing, column="v")])
    assert [str(w.message) for w in caught] == ["column 't' has 2 bad timestamp(s): rows 0, 1 unparseable; rows removed",
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
    pd.testing.assert_frame_equal(result.removed.drop(columns=["removed_by", "reason"]), df.loc[result.removed.index])
    assert result.removed["reason"].map(lambda r: isinstance(r, str) and r != "").all()


def test_map_text_applies_a_text_function_with_a_report():
    df = pd.DataFrame({"note": ["mail a@b.io", "nothing", None]})
    result = clean.map_text(df, "note", clean.mask_pii)
    assert result.frame["note"].tolist()[:2] == ["mail <EMAIL>", "nothing"]
    assert result.changed["row"].tolist() == [0] and result.note == "mask_pii"


def _drop_all(df):
    no_changes = pd.DataFrame(columns=["row", "column", "before", "after", "reason"])
    return clean.RuleResult(df.iloc[:0], df, no_changes, "dropped everything")


def _keep_all(df):
    return clean.RuleResult(df, df.iloc[:0], pd.DataFrame(columns=["row", "column", "before", "after", "reason"]))


def test_pipeline_summary_after_every_row_is_gone_written_out():
    df = pd.DataFrame({"x": [1, 2, 3]})
    unnamed = functools.partial(_keep_all)  # no __name__: the summary names it by repr
    with pytest.warns(UserWarning, match=r"^the pipeline removed all 3 rows; see result.removed$"):
        result = clean.pipeline(df, [_keep_all, _drop_all, unnamed, _keep_all])
    assert result.summary.to_dict("records") == [
        {"rule": "_keep_all", "rows in": 3, "rows out": 3, "rows removed": 0, "cells changed": 0, "note": ""},
        {"rule": "_drop_all", "rows in": 3, "rows out": 0, "rows removed": 3, "cells changed": 0,
         "note": "dropped everything"},
        {"rule": repr(unnamed), "rows in": 0, "rows out": 0, "rows removed": 0, "cells changed": 0,
         "note": "skipped: no rows left"},
        {"rule": "_keep_all", "rows in": 0, "rows out": 0, "rows removed": 0, "cells changed": 0,
         "note": "skipped: no rows left"},  # every later rule is listed, not only the first
    ]
    assert result.removed["removed_by"].tolist() == ["_drop_all"] * 3
    assert result.removed["reason"].tolist() == ["dropped everything"] * 3


def test_pipeline_messages_in_full():
    df = pd.DataFrame({"x": [1]})
    with pytest.raises(ValueError, match="^pipeline needs at least one rule$"):
        clean.pipeline(df, [])
    with pytest.raises(TypeError, match="^rule <lambda> returned DataFrame, not a RuleResult$"):
        clean.pipeline(df, [lambda frame: frame])


def test_iqr_fences_are_inclusive_and_reported():
    df = pd.DataFrame({"x": [1.0, 2, 3, 4, 5]})  # Q1 = 2, Q3 = 4, IQR = 2 (linear quartiles, by hand)
    assert len(clean.iqr_outliers(df, "x", k=0.5).frame) == 5  # fences 1 and 5: on the fence is kept
    result = clean.iqr_outliers(df, "x", k=0.25)  # fences 1.5 and 4.5
    assert result.frame["x"].tolist() == [2.0, 3.0, 4.0] and result.note == "2 rows outside [1.5, 4.5]"
    assert result.reasons.to_dict() == {0: "1 outside [1.5, 4.5]", 4: "5 outside [1.5, 4.5]"}
    assert len(clean.iqr_outliers(df, "x").frame) == 5  # default k = 1.5: fences -1 and 7
    with pytest.raises(ValueError, match="^k must be positive, got 0$"):
        clean.iqr_outliers(df, "x", k=0)


def test_zscore_threshold_is_strict_and_defaults_to_three():
    # one value a among n - 1 zeros has |z| = sqrt(n - 1): exactly 3.0 for n = 10 (mean 1, std 3, z = 9 / 3)
    ten = pd.DataFrame({"x": [0.0] * 9 + [10.0]})
    assert len(clean.zscore_outliers(ten, "x").frame) == 10  # |z| = 3 is not > 3
    eleven = pd.DataFrame({"x": [0.0] * 10 + [11.0]})  # |z| = sqrt(10) = 3.16
    result = clean.zscore_outliers(eleven, "x")
    assert len(result.frame) == 10 and result.note == "1 rows with |z| > 3.0"
    assert result.reasons.to_dict() == {10: "|z| = 3.16 > 3.0"}
    assert len(clean.zscore_outliers(eleven, "x", threshold=4.0).frame) == 11
    assert len(clean.zscore_outliers(ten, "x", threshold=0.5).frame) == 9  # thresholds below 1 are allowed
    with pytest.raises(ValueError, match="^threshold must be positive, got 0$"):
        clean.zscore_outliers(ten, "x", threshold=0)


def test_zscore_without_spread_warns_at_the_caller_and_keeps_every_row():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = clean.zscore_outliers(pd.DataFrame({"x": [2.0, 2.0, 2.0]}), "x")
    assert [str(w.message) for w in caught] == ["column 'x' has no spread (std=0.0); no outliers removed"]
    assert at_caller(caught[0], __file__) and result.note == "no spread" and len(result.frame) == 3
    assert result.removed.empty and result.changed.empty


def test_fill_missing_mode_ignores_missing_and_messages_in_full():
    df = pd.DataFrame({"c": [None, None, None, "b", "a", "a"]})  # missing is the most common "value"
    result = clean.fill_missing(df, "c", "mode")
    assert result.frame["c"].tolist() == ["a", "a", "a", "b", "a", "a"]
    assert result.note == "3 missing filled with mode = 'a'" and result.changed["row"].tolist() == [0, 1, 2]
    assert set(result.changed["reason"]) == {"missing: filled with mode = 'a'"}
    with pytest.raises(ValueError, match=r"^column 'c' has dtype \w+, not numeric"):
        clean.fill_missing(df, "c", "median")
    with pytest.raises(ValueError, match="^strategy='constant' needs a fill value$"):
        clean.fill_missing(df, "c", "constant")
    with pytest.raises(ValueError, match=r"^column 'x' is all missing \(2 rows\): there is no mean to fill with; "
                                         r"use strategy='constant' or drop the column$"):
        clean.fill_missing(pd.DataFrame({"x": [np.nan, np.nan]}), "x", "mean")
    full = clean.fill_missing(pd.DataFrame({"x": [1.0, 3.0]}), "x")
    assert full.changed.empty and full.frame["x"].tolist() == [1.0, 3.0] and full.note.startswith("0 missing")


def test_fix_unicode_change_log_written_out():
    df = pd.DataFrame({"t": [b"caf\xe9", "cafe\u0301", "ok", "caf\u00c3\u00a9", "cafe\u0301".encode()]},
                      index=[10, 11, 12, 13, 14])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = clean.fix_unicode(df, "t")
    assert [str(w.message) for w in caught] == ["column 't': rows 10 were not valid UTF-8; decoded as cp1252"]
    assert at_caller(caught[0], __file__) and result.note == "1 mojibake repaired, 1 non-UTF-8 cells"
    records = result.changed.to_dict("records")
    assert [(r["row"], r["after"]) for r in records] == [(10, "caf\u00e9"), (11, "caf\u00e9"), (13, "caf\u00e9"),
                                                       (14, "caf\u00e9")]  # 0xE9 in cp1252, NFC, ftfy, UTF-8 + NFC
    assert [r["reason"] for r in records][:3] == ["bytes not valid UTF-8: decoded as cp1252", "normalized to NFC",
                                                  "mojibake repaired by ftfy: encode latin-1, decode utf-8"]
    assert records[3]["reason"].endswith("; normalized to NFC")  # two steps on one cell, joined by "; "
    assert set(result.changed.columns) == {"row", "column", "before", "after", "reason"}
    assert records[0]["before"] == b"caf\xe9" and {r["column"] for r in records} == {"t"}
    for form, text, expected in [("NFKC", "\ufb01", "fi"), ("NFD", "\u00e9", "e\u0301"), ("NFKD", "\u00b2", "2")]:
        assert clean.fix_unicode(pd.DataFrame({"t": [text]}), "t", form=form).frame["t"].tolist() == [expected]
    with pytest.raises(ValueError, match=r"^form must be a Unicode normal form \(NFC, NFKC, NFD, NFKD\), got 'nfc'$"):
        clean.fix_unicode(df, "t", form="nfc")


def test_normalize_whitespace_and_map_text_change_logs():
    ws = clean.normalize_whitespace(pd.DataFrame({"t": ["  a \t b\x00 ", "ok"]}), "t")
    assert ws.changed.to_dict("records") == [
        {"row": 0, "column": "t", "before": "  a \t b\x00 ", "after": "a b", "reason": "whitespace or control characters"}]
    upper = clean.map_text(pd.DataFrame({"t": ["ab", "c"]}), "t", functools.partial(str.upper))  # no __name__
    assert upper.note == "text function" and upper.changed["reason"].tolist() == ["text function"] * 2
    assert clean.map_text(pd.DataFrame({"t": ["ab"]}), "t", str.upper).note == "upper"


def test_bytes_that_even_cp1252_cannot_map_are_replaced():
    df = pd.DataFrame({"t": [b"\x81caf\xe9", "caf\u00e9".encode()]})  # 0x81 is unassigned in cp1252
    with pytest.warns(UserWarning, match="rows 0 were not valid UTF-8"):
        result = clean.fix_unicode(df, "t")
    assert result.frame["t"].tolist() == ["\ufffdcaf\u00e9", "caf\u00e9"]
    assert result.changed["reason"].tolist() == ["bytes not valid UTF-8: decoded as cp1252", "bytes decoded as UTF-8"]


def test_bad_frames_and_rules_messages_in_full():
    with pytest.raises(TypeError, match=r"^expected a pandas DataFrame, got list$"):
        clean.normalize_whitespace([1, 2], "a")
    with pytest.raises(ValueError, match=r"^empty frame: there is nothing to clean \(0 rows or 0 columns\)$"):
        clean.pipeline(pd.DataFrame(), [step(clean.normalize_whitespace, column="a")])
    with pytest.raises(ValueError, match=r"^the frame's index has repeated labels; call df\.reset_index\(drop=True\) "
                                         r"first so removed and changed rows can be named unambiguously$"):
        clean.normalize_whitespace(pd.DataFrame({"a": ["x", "y"]}, index=[0, 0]), "a")
    with pytest.raises(TypeError, match=r"^rule must be a function such as clean\.fill_missing, got 3$"):
        step(3)
    with pytest.raises(ValueError, match=r"^column 'b' has dtype bool, not numeric"):  # True/False are no measurements
        clean.iqr_outliers(pd.DataFrame({"b": [True, False, True, True]}), "b")


def test_step_names_callable_parameters_by_name():
    assert step(clean.map_text, column="t", fn=clean.mask_pii).__name__ == "map_text(t, mask_pii)"
    assert step(clean.fill_missing, column="age", strategy="constant", value=0).__name__ == \
        "fill_missing(age, constant, 0)"


def test_every_rule_result_has_the_change_columns_and_a_counting_note():
    result = clean.drop_duplicate_keys(pd.DataFrame({"id": [1, 1, 2, 1]}), "id")  # rows 1 and 3 repeat row 0
    assert result.note == "2 rows repeat a key in ['id']" and result.removed.index.tolist() == [1, 3]
    assert list(result.changed.columns) == ["row", "column", "before", "after", "reason"] and result.changed.empty


def test_pipeline_without_removals_or_with_changes_from_several_rules():
    df = pd.DataFrame({"t": [" a ", " b"], "u": ["x ", "y"]})
    result = clean.pipeline(df, [step(clean.normalize_whitespace, column="t"),
                                 step(clean.normalize_whitespace, column="u")])
    # nothing removed: an empty frame with the original columns plus the two the pipeline adds
    assert result.removed.empty and list(result.removed.columns) == ["t", "u", "removed_by", "reason"]
    assert result.removed["removed_by"].dtype == object and result.removed["reason"].dtype == object
    # three changed cells from two rules: one row each, numbered 0..2 (no label repeated across rules)
    assert result.changes.index.tolist() == [0, 1, 2]
    assert result.changes[["row", "column", "rule"]].values.tolist() == [
        [0, "t", "normalize_whitespace(t)"], [1, "t", "normalize_whitespace(t)"], [0, "u", "normalize_whitespace(u)"]]


def test_pipeline_that_removes_everything_warns_at_the_caller():
    def remove_all(df):  # a rule that keeps nothing and says nothing itself
        return clean.RuleResult(df.iloc[:0], df, pd.DataFrame())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clean.pipeline(pd.DataFrame({"id": [1]}), [remove_all])
    assert [str(w.message) for w in caught] == ["the pipeline removed all 1 rows; see result.removed"]
    assert at_caller(caught[0], __file__)  # stacklevel=2: this line, not the library's
