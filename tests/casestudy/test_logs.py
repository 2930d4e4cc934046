import numpy as np
import pandas as pd
import pytest

from cookbook import casestudy as cs


def test_logs_are_seeded_and_have_the_raw_columns(logs):
    again = cs.interaction_logs(200, 60, 14, seed=3, categories=6, future_days=4, sessions_per_day=0.3,
                                bot_share=0.02, bot_events=100)
    pd.testing.assert_frame_equal(logs.raw, again.raw)
    assert list(logs.raw.columns) == cs.KEYS
    other = cs.interaction_logs(200, 60, 14, seed=4, categories=6, future_days=4, sessions_per_day=0.3)
    assert not logs.raw.head(50).equals(other.raw.head(50))


def test_cleaning_removes_exactly_the_injected_dirt(logs, cleaned):
    summary = cleaned.summary.set_index(cleaned.summary["rule"].str.split("(").str[0])
    removed = summary["rows removed"]
    assert removed["to_utc"] == logs.malformed_kinds["timestamp"]
    assert removed["valid_events"] == logs.malformed - logs.malformed_kinds["timestamp"]
    assert removed["drop_duplicate_keys"] == logs.duplicates
    bot_rows = int(logs.raw["user_id"].isin(logs.bots).sum())
    by_bots = cleaned.removed["removed_by"].str.startswith("drop_bots")
    assert set(cleaned.removed.loc[by_bots, "user_id"]) == set(logs.bots)
    # malformed or duplicated bot events went with the earlier rules
    assert removed["drop_bots"] == bot_rows - int(cleaned.removed.loc[~by_bots, "user_id"].isin(logs.bots).sum())
    frame = cleaned.frame
    assert len(frame) + len(cleaned.removed) == len(logs.raw)
    assert not frame["user_id"].isin(logs.bots).any() and set(logs.bots) <= set(cleaned.removed["user_id"].dropna())
    assert not frame.duplicated().any() and frame["action"].isin(cs.ACTIONS).all()
    assert frame["item_id"].between(0, 59).all() and str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"


def test_offset_timestamps_become_the_same_utc_instant():
    raw = pd.DataFrame({"user_id": pd.array([1, 1], dtype="Int64"), "session_id": pd.array([5, 5], dtype="Int64"),
                        "item_id": pd.array([2, 2], dtype="Int64"), "action": ["view", "view"],
                        "timestamp": ["2024-03-01T12:00:00.000Z", "2024-03-01T14:00:00.000+02:00"]})
    result = cs.clean_logs(raw, 10)
    # one instant written two ways is one event logged twice: the duplicates rule catches it after to_utc
    assert len(result.frame) == 1
    assert result.frame["timestamp"].iloc[0] == pd.Timestamp("2024-03-01T12:00:00Z")


def test_popularity_is_a_power_law_and_users_repeat_purchases(logs, cleaned):
    views = cleaned.frame[cleaned.frame["action"] == "view"]["item_id"].value_counts()
    top_share = views.iloc[: len(views) // 10].sum() / views.sum()
    assert top_share > 0.3  # the top 10% of items take far more than 10% of the views
    purchases = cleaned.frame[cleaned.frame["action"] == "purchase"]
    repeated = (purchases.groupby(["user_id", "item_id"]).size() > 1).rename("repeated").reset_index()
    rate = repeated.merge(logs.items, on="item_id").groupby("consumable")["repeated"].mean()
    assert rate[True] > 3 * rate[False]  # consumables are bought again, other items rarely


def test_future_window_split(logs, cleaned):
    past, future = cs.split_window(cleaned.frame, logs.cutoff)
    assert len(past) + len(future) == len(cleaned.frame)
    assert past["timestamp"].max() < logs.cutoff <= future["timestamp"].min()
    assert logs.cutoff == pd.Timestamp("2024-03-11", tz="UTC")  # 14 days, the last 4 held out
    with pytest.raises(ValueError, match="leaves one side empty"):
        cs.split_window(cleaned.frame, pd.Timestamp("2030-01-01", tz="UTC"))
    with pytest.raises(ValueError, match="parsed datetime column 'timestamp'"):
        cs.split_window(logs.raw, logs.cutoff)


def test_valid_events_names_each_reason():
    df = pd.DataFrame({"user_id": pd.array([1, pd.NA, 2, 3], dtype="Int64"), "session_id": [1, 1, 2, 3],
                       "item_id": [0, 1, 10, 2], "action": ["view", "view", "click", "clck"]})
    result = cs.valid_events(df, n_items=10)
    assert result.frame.index.tolist() == [0]
    assert result.reasons.tolist() == ["missing user or session", "item id outside [0, 10)",
                                       "action not one of view, click, purchase"]
    with pytest.raises(ValueError, match="no column 'action'"):
        cs.valid_events(df.drop(columns="action"), 10)


def test_drop_bots_by_median_gap():
    t = pd.Timestamp("2024-03-01", tz="UTC")
    human = [t + pd.Timedelta(seconds=30 * i) for i in range(25)]
    bot = [t + pd.Timedelta(seconds=0.5 * i) for i in range(25)]
    few = [t + pd.Timedelta(seconds=0.1 * i) for i in range(5)]  # fast but too few events to judge
    df = pd.DataFrame({"user_id": [1] * 25 + [2] * 25 + [3] * 5, "timestamp": human + bot + few})
    result = cs.drop_bots(df)
    assert set(result.frame["user_id"]) == {1, 3} and set(result.removed["user_id"]) == {2}
    with pytest.raises(ValueError, match="parsed datetime column"):
        cs.drop_bots(df.assign(timestamp=df["timestamp"].astype(str)))
    with pytest.raises(ValueError, match="min_median_gap_s must be positive"):
        cs.drop_bots(df, min_median_gap_s=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_users=0), "n_users must be a positive int"),
    (dict(future_days=14), r"future_days must be an int in \[1, days - 1\]"),
    (dict(categories=100), "categories .100. cannot exceed n_items"),
    (dict(bot_share=1.5), r"bot_share must be a fraction in \[0, 1\)"),
    (dict(sessions_per_day=0), "sessions_per_day must be positive"),
])
def test_bad_generator_arguments(kwargs, match):
    args = dict(n_users=10, n_items=20, days=14, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        cs.interaction_logs(**args)


def test_clean_dirt_free_logs_removes_nothing():
    logs = cs.interaction_logs(30, 20, 7, seed=1, categories=3, bot_share=0, duplicate_share=0, malformed_share=0)
    result = cs.clean_logs(logs.raw, 20)
    assert len(result.frame) == len(logs.raw) and logs.bots == () and logs.duplicates == logs.malformed == 0
    assert np.array_equal(result.frame["item_id"].to_numpy(), logs.raw["item_id"].to_numpy(np.int64))
