"""Realistic e-commerce interaction logs, and their cleaning with the cookbook's table rules.

    logs = interaction_logs(n_users=600, n_items=200, days=28, seed=0)
    cleaned = clean_logs(logs.raw, n_items=200)      # a `cookbook.data.clean.PipelineResult`
    past, future = split_window(cleaned.frame, logs.cutoff)

What makes the logs realistic is what makes real ones hard: item popularity follows a power law (a few items get
most views), users browse in sessions that mostly stay in one of their favourite categories, clicks depend on a
hidden user-item affinity (something a recommender can learn), consumable items are bought again days later,
and the raw table carries the usual dirt: bot users firing events every fraction of a second, events logged
twice, and malformed rows (unparseable timestamps, missing users, unknown actions, item ids out of range).
The last `future_days` days are the held-out future window every model is evaluated on.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from cookbook.checks import positive_int
from cookbook.data import clean

__all__ = ["ACTIONS", "KEYS", "InteractionLogs", "clean_logs", "drop_bots", "interaction_logs", "split_window",
           "valid_events"]

ACTIONS = ("view", "click", "purchase")
KEYS = ["user_id", "session_id", "item_id", "action", "timestamp"]  # the raw columns; a repeated row is a double fire
START = pd.Timestamp("2024-03-01", tz="UTC")


@dataclasses.dataclass(frozen=True)
class InteractionLogs:
    """What `interaction_logs` generated: the raw table, the item catalogue and the ground truth of the dirt.

    `cutoff` starts the future window; `bots` are the bot users' ids; `duplicates` and `malformed` count the
    injected rows (`malformed_kinds` by kind), so a test can check that cleaning removes exactly them."""

    raw: pd.DataFrame
    items: pd.DataFrame  # item_id, category, popularity (sampling weight), consumable
    cutoff: pd.Timestamp
    bots: tuple[int, ...]
    duplicates: int
    malformed: int
    malformed_kinds: dict[str, int]
    n_users: int  # real users have ids 0 .. n_users - 1; bots come after them


def _check_share(name: str, value: float) -> float:
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
    return value


def interaction_logs(n_users: int, n_items: int, days: int, seed: int = 0, *, categories: int = 10,
                     future_days: int | None = None, sessions_per_day: float = 0.15, bot_share: float = 0.01,
                     bot_events: int = 300, duplicate_share: float = 0.02,
                     malformed_share: float = 0.01) -> InteractionLogs:
    """Seeded raw logs of views, clicks and purchases (columns `KEYS`, timestamps as text) over `days` days.

    Users have two favourite categories and a log-normal activity (`sessions_per_day` on average); each session
    views 1 + Geometric(0.25) items of one category (a favourite 85% of the time), drawn by a Zipf(1.1)
    popularity within it; a view becomes a click with probability sigmoid(quality + user·item affinity - 1.5), a
    click a purchase with probability 0.15; 60% of the purchases of a consumable item (a fifth of them) are
    repeated 5-15 days later. Then the dirt: `bot_share` x n_users bots with ~`bot_events` events 0.4 s apart,
    `duplicate_share` of the rows logged twice, `malformed_share` corrupted (bad timestamp, missing user,
    unknown action or item id out of range). One in ten timestamps is written with a +02:00 offset.
    `future_days` (default: a quarter of `days`) is the evaluation window at the end. Shown in notebooks/14 §1.
    """
    for name, value in (("n_users", n_users), ("n_items", n_items), ("days", days), ("categories", categories),
                        ("bot_events", bot_events)):
        positive_int(name, value)
    future_days = max(1, days // 4) if future_days is None else future_days
    if not isinstance(future_days, int) or not 0 < future_days < days:
        raise ValueError(f"future_days must be an int in [1, days - 1] = [1, {days - 1}], got {future_days!r}")
    if categories > n_items:
        raise ValueError(f"categories ({categories}) cannot exceed n_items ({n_items}): every category needs an item")
    for name, value in (("bot_share", bot_share), ("duplicate_share", duplicate_share),
                        ("malformed_share", malformed_share)):
        _check_share(name, value)
    if not sessions_per_day > 0:
        raise ValueError(f"sessions_per_day must be positive, got {sessions_per_day!r}")
    rng = np.random.default_rng(seed)

    # the catalogue: every category gets at least one item; Zipf popularity by a random rank
    category = np.concatenate([np.arange(categories), rng.integers(categories, size=n_items - categories)])
    rng.shuffle(category)
    popularity = (1.0 + rng.permutation(n_items)) ** -1.1
    quality = rng.normal(0, 0.5, n_items)
    consumable = rng.random(n_items) < 0.2
    item_factors = rng.normal(0, 0.6, (n_items, 8))
    user_factors = rng.normal(0, 0.6, (n_users, 8))
    favourites = np.stack([rng.integers(categories, size=n_users), rng.integers(categories, size=n_users)], 1)

    # sessions: how many per user, when, which category, how long
    activity = rng.lognormal(np.log(sessions_per_day) - 0.245, 0.7, n_users)  # mean sessions_per_day
    per_user = rng.poisson(activity * days)
    s_user = np.repeat(np.arange(n_users), per_user)
    n_sessions = len(s_user)
    s_start = rng.uniform(0, days * 86400.0, n_sessions)
    s_cat = np.where(rng.random(n_sessions) < 0.85, favourites[s_user, rng.integers(2, size=n_sessions)],
                     rng.integers(categories, size=n_sessions))
    s_len = np.minimum(rng.geometric(0.25, n_sessions), 20)

    # views: items of the session's category, by popularity; seconds between views ~ 1 + Exp(45)
    v_session = np.repeat(np.arange(n_sessions), s_len)
    v_item = np.empty(len(v_session), dtype=np.int64)
    v_cat = s_cat[v_session]
    for c in range(categories):
        at = np.flatnonzero(v_cat == c)
        members = np.flatnonzero(category == c)
        v_item[at] = rng.choice(members, size=len(at), p=popularity[members] / popularity[members].sum())
    gaps = 1 + rng.exponential(45.0, len(v_session))
    first = np.r_[0, np.cumsum(s_len)[:-1]]
    offsets = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first] - gaps[first], s_len)  # restart each session
    v_time = s_start[v_session] + offsets
    v_user = s_user[v_session]

    # clicks follow views 2-20 s later; purchases follow clicks 10-120 s later
    affinity = np.einsum("nd,nd->n", user_factors[v_user], item_factors[v_item])
    clicked = rng.random(len(v_item)) < 1 / (1 + np.exp(-(quality[v_item] + affinity - 1.5)))
    c_time = v_time[clicked] + rng.uniform(2, 20, clicked.sum())
    bought = rng.random(clicked.sum()) < 0.15
    p_time = c_time[bought] + rng.uniform(10, 120, bought.sum())
    p_user, p_item, p_session = v_user[clicked][bought], v_item[clicked][bought], v_session[clicked][bought]
    # repeat purchases of consumables, 5-15 days later, in a new session (inside the logged period only)
    again = consumable[p_item] & (rng.random(len(p_item)) < 0.6)
    r_time = p_time[again] + rng.uniform(5, 15, again.sum()) * 86400
    inside = r_time < days * 86400.0
    r_user, r_item, r_time = p_user[again][inside], p_item[again][inside], r_time[inside]
    r_session = n_sessions + np.arange(len(r_user))

    n_bots = round(bot_share * n_users)
    bots = tuple(range(n_users, n_users + n_bots))
    b_count = rng.integers(bot_events // 2, bot_events * 3 // 2 + 1, size=n_bots)
    b_user = np.repeat(np.array(bots, dtype=np.int64), b_count)
    b_session = n_sessions + len(r_user) + np.repeat(np.arange(n_bots), b_count)
    b_start = np.repeat(rng.uniform(0, days * 86400.0 - 3600, n_bots), b_count)
    b_time = b_start + np.concatenate([np.cumsum(rng.exponential(0.4, k)) for k in b_count]) if n_bots else b_start
    b_item = rng.integers(n_items, size=len(b_user))
    b_action = np.where(rng.random(len(b_user)) < 0.5, "view", "click")

    frame = pd.DataFrame({
        "user_id": np.concatenate([v_user, v_user[clicked], p_user, r_user, b_user]),
        "session_id": np.concatenate([v_session, v_session[clicked], p_session, r_session, b_session]),
        "item_id": np.concatenate([v_item, v_item[clicked], p_item, r_item, b_item]),
        "action": np.concatenate([np.full(len(v_item), "view"), np.full(clicked.sum(), "click"),
                                  np.full(len(p_item) + len(r_item), "purchase"), b_action]).astype(object),
        "seconds": np.concatenate([v_time, c_time, p_time, r_time, b_time]),
    }).sort_values("seconds", kind="stable").reset_index(drop=True)
    when = START + pd.to_timedelta(frame.pop("seconds"), unit="s")
    when = when.dt.floor("ms")  # loggers write milliseconds
    local = rng.random(len(frame)) < 0.1
    text = when.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3]
    frame["timestamp"] = np.where(local, (when + pd.Timedelta(hours=2)).dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3]
                                  + "+02:00", text + "Z")
    frame = frame.astype({"user_id": "Int64", "session_id": "Int64", "item_id": "Int64", "action": object,
                          "timestamp": object})

    # malformed rows, one corrupted field each
    n_bad = round(malformed_share * len(frame))
    bad_rows = rng.choice(len(frame), size=n_bad, replace=False)
    kinds = np.array(["timestamp", "user_id", "action", "item_id"])[rng.integers(4, size=n_bad)]
    for kind in ("timestamp", "user_id", "action", "item_id"):
        rows = bad_rows[kinds == kind]
        if kind == "timestamp":
            frame.loc[rows, "timestamp"] = rng.choice(["not a time", "2024-13-45T99:00:00Z", "", "NULL"], len(rows))
        elif kind == "user_id":
            frame.loc[rows, "user_id"] = pd.NA
        elif kind == "action":
            frame.loc[rows, "action"] = rng.choice(["clck", "VIEW", "add_to_wishlist"], len(rows))
        else:
            frame.loc[rows, "item_id"] = rng.choice([-1, n_items, n_items + 7], len(rows))

    # double-fired events: exact copies of good rows, logged right after the original
    good = np.setdiff1d(np.arange(len(frame)), bad_rows)
    n_dup = round(duplicate_share * len(frame))
    dup_rows = np.sort(rng.choice(good, size=n_dup, replace=False))
    order = np.argsort(np.concatenate([np.arange(len(frame)), dup_rows]), kind="stable")
    raw = pd.concat([frame, frame.iloc[dup_rows]]).iloc[order].reset_index(drop=True)

    items = pd.DataFrame({"item_id": np.arange(n_items), "category": category, "popularity": popularity,
                          "consumable": consumable})
    cutoff = START + pd.Timedelta(days=days - future_days)
    return InteractionLogs(raw, items, cutoff, bots, n_dup, n_bad,
                           {k: int((kinds == k).sum()) for k in ("timestamp", "user_id", "action", "item_id")},
                           n_users)


# ----------------------------------------------------------------------------------- cleaning rules
def _kept(df: pd.DataFrame, keep: np.ndarray, note: str, reasons: pd.Series) -> clean.RuleResult:
    """A `clean.RuleResult` that only removes rows (no cell changes), with one reason per removed row."""
    no_changes = pd.DataFrame(columns=["row", "column", "before", "after", "reason"])
    return clean.RuleResult(df[keep], df[~keep], no_changes, note, reasons[~keep])


def valid_events(df: pd.DataFrame, n_items: int, actions=ACTIONS) -> clean.RuleResult:
    """Remove rows with a missing user, session or item, an action not in `actions`, or an item id outside
    [0, n_items) (a `clean` rule for `clean.pipeline`). Shown in notebooks/14 §1."""
    positive_int("n_items", n_items)
    for column in ("user_id", "session_id", "item_id", "action"):
        if column not in df.columns:
            raise ValueError(f"no column {column!r}; columns are {list(df.columns)}")
    why = pd.Series("", index=df.index, dtype=object)
    item = pd.to_numeric(df["item_id"], errors="coerce")
    why[~item.between(0, n_items - 1).fillna(False).astype(bool)] = f"item id outside [0, {n_items})"
    why[~df["action"].isin(actions)] = f"action not one of {', '.join(actions)}"
    why[df["user_id"].isna() | df["session_id"].isna()] = "missing user or session"
    keep = (why == "").to_numpy()
    return _kept(df, keep, f"{int((~keep).sum())} malformed rows", why)


def drop_bots(df: pd.DataFrame, min_median_gap_s: float = 2.0, min_events: int = 20,
              column: str = "timestamp") -> clean.RuleResult:
    """Remove every event of users whose median gap between consecutive events is below `min_median_gap_s`
    seconds, among users with at least `min_events` events: no person clicks twice a second for minutes
    (`column` holds parsed timestamps: run `clean.to_utc` first). Shown in notebooks/14 §1."""
    if column not in df.columns or not pd.api.types.is_datetime64_any_dtype(df[column]):
        raise ValueError(f"drop_bots needs a parsed datetime column {column!r} (clean.to_utc makes one); "
                         f"columns are {list(df.columns)}")
    if not min_median_gap_s > 0:
        raise ValueError(f"min_median_gap_s must be positive, got {min_median_gap_s!r}")
    positive_int("min_events", min_events)
    ordered = df.sort_values([column], kind="stable")
    gaps = ordered.groupby("user_id")[column].diff().dt.total_seconds()
    stats = gaps.groupby(ordered["user_id"]).agg(["median", "size"])
    bots = stats.index[(stats["median"] < min_median_gap_s) & (stats["size"] >= min_events)]
    is_bot = df["user_id"].isin(bots).to_numpy()
    why = pd.Series(f"bot: median gap between events < {min_median_gap_s} s", index=df.index, dtype=object)
    return _kept(df, ~is_bot, f"{len(bots)} bot users, {int(is_bot.sum())} events", why)


def clean_logs(raw: pd.DataFrame, n_items: int, *, min_median_gap_s: float = 2.0) -> clean.PipelineResult:
    """The cleaning pipeline of the case study, with `cookbook.data.clean`: timestamps to UTC (unparseable
    ones removed), malformed rows, exact duplicates (double-fired events), bots. `result.summary` says what
    each rule removed and `result.removed` keeps every removed row with its reason. Shown in notebooks/14 §1."""
    rules = [clean.step(clean.to_utc, column="timestamp"), clean.step(valid_events, n_items=n_items),
             clean.step(clean.drop_duplicate_keys, keys=KEYS),
             clean.step(drop_bots, min_median_gap_s=min_median_gap_s)]
    with warnings.catch_warnings():
        # to_utc warns with every bad row; the summary and `removed` (with reasons) report the same rows
        warnings.filterwarnings("ignore", message="column 'timestamp' has")
        result = clean.pipeline(raw, rules)
    frame = result.frame.astype({"user_id": "int64", "session_id": "int64", "item_id": "int64"})
    return dataclasses.replace(result, frame=frame.reset_index(drop=True))


def split_window(events: pd.DataFrame, cutoff: pd.Timestamp, column: str = "timestamp"):
    """(past, future): events before `cutoff` (training) and from it on (the held-out future window).
    Shown in notebooks/14 §1."""
    if column not in events.columns or not pd.api.types.is_datetime64_any_dtype(events[column]):
        raise ValueError(f"split_window needs a parsed datetime column {column!r}; columns are {list(events.columns)}")
    future = (events[column] >= cutoff).to_numpy()
    if future.all() or not future.any():
        raise ValueError(f"cutoff {cutoff} leaves one side empty (events run from {events[column].min()} to "
                         f"{events[column].max()})")
    return events[~future].reset_index(drop=True), events[future].reset_index(drop=True)
