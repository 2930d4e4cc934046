"""The ETL of the case study in pandas: filter by action, group by user and item, count; sessions as item
sequences; training pairs with sampled negatives.

    counts = interaction_counts(past)                     # user_id, item_id, click, purchase, interactions
    sessions = session_sequences(past)                    # [[item, item, ...], ...] in time order
    pairs = training_pairs(counts, n_items, negatives=4)  # user_id, item_id, label

The same aggregation on PySpark is `cookbook.casestudy.spark.interaction_counts_spark`; both return the frame
`interaction_counts` documents, so the two can be compared row for row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cookbook.casestudy.logs import ACTIONS
from cookbook.checks import positive_int

__all__ = ["COUNTED", "interaction_counts", "session_sequences", "training_pairs", "user_top_category"]

COUNTED = ("click", "purchase")  # the actions that say "interested"; views are exposure, not interest


def _need(events: pd.DataFrame, columns) -> None:
    if not isinstance(events, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame of events, got {type(events).__name__}")
    missing = [c for c in columns if c not in events.columns]
    if missing:
        raise ValueError(f"the events have no column(s) {missing}; columns are {list(events.columns)}")


def _check_actions(actions) -> tuple[str, ...]:
    actions = tuple(actions)
    unknown = [a for a in actions if a not in ACTIONS]
    if not actions or unknown:
        raise ValueError(f"actions must be a non-empty subset of {ACTIONS}, got {actions!r}")
    return actions


def interaction_counts(events: pd.DataFrame, actions=COUNTED) -> pd.DataFrame:
    """Filter by action, group by (user, item), count each action: one row per pair with at least one of
    `actions`, columns user_id, item_id, one int64 count per action and `interactions` (their sum), sorted by
    user then item. Shown in notebooks/14 §2."""
    actions = _check_actions(actions)
    _need(events, ["user_id", "item_id", "action"])
    kept = events[events["action"].isin(actions)]
    table = (kept.groupby(["user_id", "item_id", "action"]).size().unstack("action", fill_value=0)
             .reindex(columns=list(actions), fill_value=0))
    table.columns.name = None
    table = table.reset_index().astype({"user_id": "int64", "item_id": "int64", **dict.fromkeys(actions, "int64")})
    table["interactions"] = table[list(actions)].sum(axis=1).astype("int64")
    return table.sort_values(["user_id", "item_id"], kind="stable").reset_index(drop=True)


def session_sequences(events: pd.DataFrame, actions=("view", "click"), min_length: int = 2) -> list[list[int]]:
    """Each session's items in time order (`actions` only; an item repeated back to back counted once, so a
    view followed by its click is one token), sessions shorter than `min_length` dropped: the "sentences" of
    the skip-gram item embeddings. Shown in notebooks/14 §3."""
    actions = _check_actions(actions)
    positive_int("min_length", min_length)
    _need(events, ["session_id", "item_id", "action", "timestamp"])
    kept = events[events["action"].isin(actions)].sort_values(["session_id", "timestamp"], kind="stable")
    session, item = kept["session_id"].to_numpy(), kept["item_id"].to_numpy()
    new = np.r_[True, (session[1:] != session[:-1]) | (item[1:] != item[:-1])]
    session, item = session[new], item[new]
    starts = np.flatnonzero(np.r_[True, session[1:] != session[:-1]])
    return [s.tolist() for s in np.split(item, starts[1:]) if len(s) >= min_length]


def user_top_category(counts: pd.DataFrame, category: np.ndarray, n_users: int) -> np.ndarray:
    """Each user's most-interacted category (ties: the smaller id), or -1 for a user without interactions.
    `category[item_id]` is an item's category. Shown in notebooks/14 §4."""
    _need(counts, ["user_id", "item_id", "interactions"])
    positive_int("n_users", n_users)
    category = np.asarray(category)
    by = counts.assign(category=category[counts["item_id"].to_numpy()])
    totals = by.groupby(["user_id", "category"])["interactions"].sum().reset_index()
    top = totals.sort_values(["user_id", "interactions", "category"], ascending=[True, False, True],
                             kind="stable").drop_duplicates("user_id")
    out = np.full(n_users, -1, dtype=np.int64)
    if len(top) and top["user_id"].max() >= n_users:
        raise ValueError(f"user id {top['user_id'].max()} is outside [0, {n_users})")
    out[top["user_id"].to_numpy()] = top["category"].to_numpy()
    return out


def training_pairs(counts: pd.DataFrame, n_items: int, *, negatives: int = 4, seed: int = 0) -> pd.DataFrame:
    """Implicit-feedback training pairs: every (user, item) of `counts` with label 1, and `negatives` items per
    positive drawn uniformly from the items that user never interacted with, label 0 (a collision is redrawn;
    a user who interacted with every item gets no negatives). Shuffled with `seed`. Shown in notebooks/14 §4."""
    _need(counts, ["user_id", "item_id"])
    positive_int("n_items", n_items)
    if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 0:
        raise ValueError(f"negatives must be an int >= 0, got {negatives!r}")
    rng = np.random.default_rng(seed)
    users, items = counts["user_id"].to_numpy(np.int64), counts["item_id"].to_numpy(np.int64)
    seen = np.unique(users * n_items + items)
    per_user = pd.Series(1, index=users).groupby(level=0).size()
    full = per_user.index[per_user.to_numpy() >= n_items]
    neg_users = np.repeat(users[~np.isin(users, full)], negatives)
    neg_items = rng.integers(n_items, size=len(neg_users))
    for _ in range(100):  # redraw collisions with the user's own items; the rest is vanishingly rare
        clash = np.isin(neg_users * n_items + neg_items, seen)
        if not clash.any():
            break
        neg_items[clash] = rng.integers(n_items, size=int(clash.sum()))
    else:
        keep = ~np.isin(neg_users * n_items + neg_items, seen)
        neg_users, neg_items = neg_users[keep], neg_items[keep]
    pairs = pd.DataFrame({"user_id": np.r_[users, neg_users], "item_id": np.r_[items, neg_items],
                          "label": np.r_[np.ones(len(users)), np.zeros(len(neg_users))].astype(np.float32)})
    return pairs.iloc[rng.permutation(len(pairs))].reset_index(drop=True)
