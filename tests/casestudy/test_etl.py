import numpy as np
import pandas as pd
import pytest

from cookbook import casestudy as cs

T0 = pd.Timestamp("2024-03-01", tz="UTC")


def events(rows):
    """(user, session, item, action, seconds after T0) rows as a cleaned event frame."""
    df = pd.DataFrame(rows, columns=["user_id", "session_id", "item_id", "action", "seconds"])
    df["timestamp"] = T0 + pd.to_timedelta(df.pop("seconds"), unit="s")
    return df


SMALL = events([
    (0, 10, 5, "view", 0), (0, 10, 5, "click", 3), (0, 10, 5, "purchase", 9), (0, 10, 7, "view", 20),
    (0, 11, 5, "click", 500), (1, 12, 7, "click", 30), (1, 12, 7, "click", 31), (1, 12, 2, "view", 40),
    (2, 13, 2, "view", 50),
])


def test_interaction_counts_by_hand():
    counts = cs.interaction_counts(SMALL)
    expected = pd.DataFrame({"user_id": [0, 1], "item_id": [5, 7], "click": [2, 2], "purchase": [1, 0],
                             "interactions": [3, 2]})
    pd.testing.assert_frame_equal(counts, expected)
    views = cs.interaction_counts(SMALL, actions=("view",))
    assert views[["user_id", "item_id", "view"]].values.tolist() == [[0, 5, 1], [0, 7, 1], [1, 2, 1], [2, 2, 1]]


def test_interaction_counts_match_a_plain_python_count(cleaned):
    counts = cs.interaction_counts(cleaned.frame)
    reference = {}
    for user, item, action in cleaned.frame[["user_id", "item_id", "action"]].itertuples(index=False):
        if action in cs.COUNTED:
            reference[(user, item)] = reference.get((user, item), 0) + 1
    assert dict(zip(zip(counts["user_id"], counts["item_id"], strict=True), counts["interactions"], strict=True)) == reference


def test_session_sequences_by_hand():
    # session 10: view 5, click 5 (one token), view 7; session 11 has one item; session 12: 7, 7, 2 -> 7, 2
    assert cs.session_sequences(SMALL) == [[5, 7], [7, 2]]
    assert cs.session_sequences(SMALL, min_length=1) == [[5, 7], [5], [7, 2], [2]]


def test_user_top_category_by_hand():
    counts = pd.DataFrame({"user_id": [0, 0, 0, 2], "item_id": [0, 1, 2, 1], "interactions": [1, 1, 1, 4]})
    category = np.array([0, 1, 1])
    # user 0: category 1 twice, category 0 once; user 1: no history; user 2: category 1
    assert cs.user_top_category(counts, category, 3).tolist() == [1, -1, 1]
    tie = pd.DataFrame({"user_id": [0, 0], "item_id": [1, 0], "interactions": [2, 2]})
    assert cs.user_top_category(tie, category, 1).tolist() == [0]  # a tie goes to the smaller category
    with pytest.raises(ValueError, match=r"user id 2 is outside \[0, 2\)"):
        cs.user_top_category(counts, category, 2)


def test_training_pairs_negatives_avoid_the_users_items():
    counts = pd.DataFrame({"user_id": [0, 0, 1], "item_id": [1, 3, 0]})
    pairs = cs.training_pairs(counts, 5, negatives=3, seed=0)
    assert len(pairs) == 3 + 9 and pairs["label"].sum() == 3
    positives = set(zip(counts["user_id"], counts["item_id"], strict=True))
    negatives = pairs[pairs["label"] == 0]
    assert not positives & set(zip(negatives["user_id"], negatives["item_id"], strict=True))
    assert negatives["user_id"].value_counts().to_dict() == {0: 6, 1: 3}
    pd.testing.assert_frame_equal(pairs, cs.training_pairs(counts, 5, negatives=3, seed=0))
    everything = pd.DataFrame({"user_id": [0, 0], "item_id": [0, 1]})  # nothing left to sample for user 0
    assert len(cs.training_pairs(everything, 2, negatives=2)) == 2


@pytest.mark.parametrize("call, match", [
    (lambda: cs.interaction_counts(SMALL, actions=("clicks",)), "actions must be a non-empty subset"),
    (lambda: cs.interaction_counts(SMALL.drop(columns="item_id")), r"no column\(s\) \['item_id'\]"),
    (lambda: cs.interaction_counts(SMALL.values), "expected a pandas DataFrame"),
    (lambda: cs.session_sequences(SMALL, min_length=0), "min_length must be a positive int"),
    (lambda: cs.training_pairs(SMALL, 10, negatives=-1), "negatives must be an int >= 0"),
])
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
