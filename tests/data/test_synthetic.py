"""Synthetic messy table and planted near-duplicates: deterministic, every defect known, scorable."""

import warnings

import numpy as np
import pandas as pd
import pytest

from cookbook.data import clean, dedup, synthetic
from cookbook.data.clean import step

RULES = [step(clean.drop_duplicate_keys, keys=["id"]), step(clean.to_utc, column="signup"),
         step(clean.zscore_outliers, column="income"), step(clean.iqr_outliers, column="age"),
         step(clean.fill_missing, column="age", strategy="median"),
         step(clean.fill_missing, column="city", strategy="mode"),
         step(clean.fix_unicode, column="comment"), step(clean.normalize_whitespace, column="comment")]


def test_messy_table_is_deterministic_and_counts_every_defect():
    dirty, truth = synthetic.messy_table(300, seed=4)
    again, _ = synthetic.messy_table(300, seed=4)
    pd.testing.assert_frame_equal(dirty, again)
    assert not dirty.equals(synthetic.messy_table(300, seed=5)[0])
    assert len(dirty) == 306 and len(truth.clean) == 300  # 2% duplicate rows appended
    assert truth.counts().tolist() == [6] * len(synthetic.DEFECTS)
    cell = truth.defects.dropna(subset=["column"])
    assert not cell.duplicated(["row"]).any()  # one defect per row: each is scored on its own
    assert dirty["id"].duplicated().sum() == 6


def test_injected_defects_are_real():
    dirty, truth = synthetic.messy_table(200, seed=0)
    d = truth.defects
    missing = d[d.defect == "missing value"]
    assert all(pd.isna(dirty.at[r, c]) for r, c in zip(missing.row, missing.column, strict=True))
    stamps = d[d.defect == "timezone/format"].row
    for r in stamps:  # another spelling of the same instant: an offset, or a naive UTC wall clock
        value = pd.Timestamp(dirty.at[r, "signup"])
        value = value.tz_localize("UTC") if value.tzinfo is None else value
        assert value == truth.clean.at[r, "signup"] and not dirty.at[r, "signup"].endswith("Z")
    encoded = d[d.defect == "encoding"].row
    assert all(dirty.at[r, "comment"] != truth.clean.at[r, "comment"] for r in encoded)


def test_score_of_the_reference_pipeline():
    dirty, truth = synthetic.messy_table(1000, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = clean.pipeline(dirty, RULES)
    scores = synthetic.score(result, truth)
    assert scores["injected"].tolist() == [20] * 7
    assert (scores["precision"] == 1.0).all() and (scores["recall"] == 1.0).all()
    cells = scores.dropna(subset=["repaired"])
    assert cells.index.tolist() == ["missing value", "timezone/format", "encoding", "whitespace/control"]
    assert (cells["repaired"] == 1.0).all()


def test_score_sees_a_weak_pipeline():
    dirty, truth = synthetic.messy_table(500, seed=1)
    result = clean.pipeline(dirty, [step(clean.zscore_outliers, column="income", threshold=50.0)])
    scores = synthetic.score(result, truth)
    assert scores.loc["outlier", "recall"] == 0 and np.isnan(scores.loc["outlier", "precision"])
    assert scores.loc["encoding", "recall"] == 0


def test_messy_table_bad_arguments():
    with pytest.raises(ValueError, match="at least 50"):
        synthetic.messy_table(10)
    with pytest.raises(ValueError, match="rate"):
        synthetic.messy_table(100, rate=0.5)


def test_near_duplicates_report_exact_jaccard():
    docs, pairs = synthetic.near_duplicates(30, seed=2, length=50, max_edits=10)
    assert len(docs) == 90 and len(pairs) == 30
    for i, j, edits, jac in pairs.itertuples(index=False):
        a, b = dedup.shingles(docs[i]), dedup.shingles(docs[j])
        assert jac == pytest.approx(len(a & b) / len(a | b))
        assert (jac == 1.0) == (edits == 0)
    assert synthetic.near_duplicates(30, seed=2, length=50, max_edits=10)[0] == docs
    with pytest.raises(ValueError):
        synthetic.near_duplicates(0)
