"""A synthetic video platform, seeded and deterministic, written as raw Parquet tables.

Users have latent tastes over a latent item space (items cluster by category and
creator), an existing "production" recommender exposes items by a mix of taste
and popularity, and clicks depend on taste, item quality and time of day. A model
that learns tastes therefore beats a popularity ranking, which is what the
pipeline's evaluation checks.

Besides the tables the pipeline trains on, it writes a serving log: the
features the online system fed the models for each impression, computed the
way serving computes them (its own lookup of the feature store). Switches
inject drift (the data changes from a chosen day on) and skew (serving
computes one feature differently from a chosen day on), so validation can be
shown to catch both.
"""

import numpy as np
import pandas as pd

from recsys.core.aggregates import daily_view
from recsys.core.contracts import (
    IMPRESSIONS,
    ITEM_FEATURES,
    PROPENSITY,
    RAW_TABLES,
    USER_FEATURES,
)
from recsys.core.derived import DAY, context_columns, item_age_days
from recsys.core.ground_truth import HOUR_WEIGHTS, World, click_logit, respond
from recsys.core.schemas import required_columns
from recsys.core.tables import write_raw_tables

CATEGORIES = [
    "news",
    "music",
    "gaming",
    "sports",
    "comedy",
    "education",
    "cooking",
    "travel",
    "tech",
    "beauty",
    "animals",
    "film",
]
COUNTRIES = ["US", "BR", "IN", "DE", "JP"]
DEVICES = ["android", "ios", "web"]
LATENT_DIM = 8

# What each injection does from its chosen day on.
DRIFTS = {
    "category": "the feed pushes the catalogue's smallest category: the category mix shifts",
    "numeric": "the feed favours long videos: duration_s of impressions shifts up",
    "volume": "traffic drops to 40%: fewer impressions per day",
}
SKEWS = {
    "device": "serving's user-agent parser reports iOS devices as 'android'",
    "watch_minutes": "serving logs user_watch_seconds_7d in minutes, not seconds",
}


def generate(
    out: str,
    users: int = 2000,
    items: int = 400,
    days: int = 14,
    seed: int = 7,
    start: str = "2026-01-05",
    impressions_per_user_day: float = 4.0,
    drift: str = "",
    drift_day: int = 0,
    skew: str = "",
    skew_day: int = 0,
) -> dict[str, int]:
    """Write users, items, impressions, daily feature snapshots and the serving log
    under ``out``.

    Returns the row count of each table written. The data window is
    ``[start, start + days)``; the last feature snapshot is stamped ``start + days``
    so that serving at that moment has fresh features. ``drift`` (one of DRIFTS)
    and ``skew`` (one of SKEWS) apply from day index ``drift_day`` / ``skew_day``
    (0 = ``start``) on.
    """
    if users < 2 or items < 2 or days < 2:
        raise ValueError("generate needs at least 2 users, 2 items and 2 days")
    for kind, value, known, day in (
        ("drift", drift, DRIFTS, drift_day),
        ("skew", skew, SKEWS, skew_day),
    ):
        if value and value not in known:
            raise ValueError(f"unknown {kind} {value!r}; choose one of {sorted(known)}")
        if value and not 0 <= day < days:
            raise ValueError(f"{kind}_day={day} is outside the {days} generated days")
    rng = np.random.default_rng(seed)
    start_ts = int(pd.Timestamp(start, tz="UTC").timestamp())

    category_vectors = rng.normal(size=(len(CATEGORIES), LATENT_DIM))
    items_frame, item_vectors, item_quality, item_popularity = _items(
        rng, items, start_ts, category_vectors
    )
    users_frame, user_vectors, user_activity = _users(rng, users, start_ts, category_vectors)

    world = World.of(
        users_frame["user_id"],
        user_vectors,
        user_activity,
        items_frame["item_id"],
        item_vectors,
        item_quality,
        item_popularity,
        items_frame["duration_s"],
    )
    impressions = _impressions(
        rng,
        world,
        user_activity,
        items_frame,
        days,
        start_ts,
        impressions_per_user_day,
        drift,
        drift_day,
    )
    impressions["user_id"] = users_frame["user_id"].to_numpy()[impressions.pop("user_index")]
    impressions["item_id"] = items_frame["item_id"].to_numpy()[impressions["item_index"]]

    user_snapshots = daily_view(
        impressions, USER_FEATURES, users_frame["user_id"], start_ts, days + 1
    )
    item_snapshots = daily_view(
        impressions, ITEM_FEATURES, items_frame["item_id"], start_ts, days + 1
    )
    serving_log = _serving_log(
        impressions,
        users_frame,
        items_frame,
        user_snapshots,
        item_snapshots,
        days,
        start_ts,
        skew,
        skew_day,
    )
    # Real feature jobs miss days; a few absent snapshots exercise the as-of fallback.
    user_features, item_features = (
        frame[rng.random(len(frame)) >= 0.03].reset_index(drop=True)
        for frame in (user_snapshots, item_snapshots)
    )
    impressions = impressions.drop(columns=["item_index"])

    tables = {
        "users": users_frame,
        "items": items_frame,
        "impressions": impressions[[*required_columns(RAW_TABLES[IMPRESSIONS].schema), PROPENSITY]],
        "user_features": user_features,
        "item_features": item_features,
        "serving_log": serving_log,
    }
    counts = write_raw_tables(tables, out)
    world.save(out)
    return counts


def _items(rng, n, start_ts, category_vectors):
    n_creators = max(2, n // 6)
    creator_category = rng.integers(0, len(CATEGORIES), n_creators)
    creator = rng.integers(0, n_creators, n)
    category = creator_category[creator]  # creators specialise in one category
    creator_style = rng.normal(scale=0.5, size=(n_creators, LATENT_DIM))
    vectors = (
        category_vectors[category]
        + creator_style[creator]
        + rng.normal(scale=0.4, size=(n, LATENT_DIM))
    )
    frame = pd.DataFrame(
        {
            "item_id": [f"v{i:06d}" for i in range(n)],
            "category": np.array(CATEGORIES)[category],
            "creator_id": [f"c{c:05d}" for c in creator],
            "duration_s": np.clip(rng.lognormal(np.log(240), 0.6, n), 15, 3600).round(1),
            "upload_ts": start_ts - rng.integers(DAY, 120 * DAY, n),
        }
    )
    quality = rng.normal(0.0, 0.5, n)
    popularity = rng.lognormal(0.0, 0.7, n)
    return frame, vectors, quality, popularity


def _users(rng, n, start_ts, category_vectors):
    # Sparse Dirichlet mixtures: most users care about one to three categories.
    taste = rng.dirichlet(np.full(len(CATEGORIES), 0.25), size=n)
    vectors = taste @ category_vectors * 2.0 + rng.normal(scale=0.3, size=(n, LATENT_DIM))
    activity = rng.lognormal(0.0, 0.6, n)
    frame = pd.DataFrame(
        {
            "user_id": [f"u{i:06d}" for i in range(n)],
            "country": rng.choice(COUNTRIES, n, p=[0.35, 0.2, 0.25, 0.1, 0.1]),
            "device": rng.choice(DEVICES, n, p=[0.5, 0.3, 0.2]),
            "signup_ts": start_ts - rng.integers(DAY, 720 * DAY, n),
        }
    )
    return frame, vectors, activity / activity.mean()


def _impressions(
    rng,
    world,
    activity,
    items_frame,
    days,
    start_ts,
    per_user_day,
    drift,
    drift_day,
):
    affinity, quality = world.affinity_matrix(), world.quality
    n_users, n_items = affinity.shape
    rate = np.full(days, per_user_day)
    if drift == "volume":
        rate[drift_day:] *= 0.4
    counts = rng.poisson(activity[:, None] * rate[None, :], size=(n_users, days))
    per_user = counts.sum(axis=1)
    day = (
        np.concatenate([np.repeat(np.arange(days), c) for c in counts])
        if per_user.sum()
        else np.array([], dtype=np.int64)
    )
    # The incumbent recommender shows a taste/popularity mix, so exposure itself is
    # biased; each impression is one draw from its softmax over the catalog.
    drift_logits = 0.0
    if drift == "category":
        category = items_frame["category"]
        pushed = category.value_counts().index[-1]
        drift_logits = 2.5 * (category.to_numpy() == pushed)[None, :]
    elif drift == "numeric":
        drift_logits = 2.0 * np.log(items_frame["duration_s"].to_numpy() / 240.0)[None, :]
    user_index = np.repeat(np.arange(n_users), per_user)
    uniform = rng.random(len(user_index))
    item_index = np.empty(len(user_index), dtype=np.int64)
    propensity = np.empty(len(user_index))
    offsets = np.concatenate([[0], np.cumsum(per_user)])
    drifted = day >= drift_day if drift in ("category", "numeric") else np.zeros(len(day), bool)
    passes = [(0.0, ~drifted)] + ([(drift_logits, drifted)] if drifted.any() else [])
    for extra_logits, rows in passes:
        probabilities = world.logging_probabilities(extra_logits)
        # One vectorised draw per user (not per row): inverse-CDF sampling on each user's row.
        cdf = np.cumsum(probabilities, axis=1)
        for u in range(n_users):  # per user, vectorised within the user
            lo, hi = offsets[u], offsets[u + 1]
            mine = lo + np.flatnonzero(rows[lo:hi])
            item_index[mine] = np.minimum(np.searchsorted(cdf[u], uniform[mine]), n_items - 1)
            propensity[mine] = probabilities[u, item_index[mine]]
    hour = rng.choice(24, len(user_index), p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    event_ts = start_ts + day * DAY + hour * 3600 + rng.integers(0, 3600, len(user_index))

    logit = click_logit(affinity[user_index, item_index], quality[item_index], hour)
    clicked, watch_seconds = respond(rng, logit, world.duration_s[item_index])

    order = np.argsort(event_ts, kind="stable")
    frame = pd.DataFrame(
        {
            "event_ts": event_ts[order],
            "user_index": user_index[order],
            "item_index": item_index[order],
            "clicked": clicked[order],
            "watch_seconds": watch_seconds[order],
            PROPENSITY: propensity[order],
        }
    )
    frame.insert(0, "event_id", [f"e{i:09d}" for i in range(len(frame))])
    return frame


def _serving_history(impressions: pd.DataFrame) -> pd.DataFrame:
    """Each impression's engagement history as serving had it: the user's clicks
    strictly before it (the same lookup the training join uses)."""
    import pyarrow as pa

    from recsys.components.features.beam_asof import HistoryView, join_history

    view = HistoryView()
    clicked = impressions[impressions["clicked"] == 1]
    engagements = pa.table(
        {
            view.key: clicked["user_id"].astype(str).to_numpy(),
            "event_ts": clicked["event_ts"].to_numpy(np.int64),
            view.item: clicked["item_id"].astype(str).to_numpy(),
            view.value: clicked["watch_seconds"].to_numpy(float),
        }
    )
    events = pa.table(
        {
            view.key: impressions["user_id"].astype(str).to_numpy(),
            "event_ts": impressions["event_ts"].to_numpy(np.int64),
        }
    )
    history = join_history(events, engagements, view).to_pandas()
    return history[[view.items_column, view.count_column, view.mean_column]].set_axis(
        impressions.index
    )


def _serving_log(
    impressions, users, items, user_snapshots, item_snapshots, days, start_ts, skew, skew_day
):
    """Per impression, the features serving used: each entity's snapshot of that day
    from serving's own feature cache (which, unlike the offline table, misses none)."""
    day = (impressions["event_ts"].to_numpy() - start_ts) // DAY
    user_index = pd.Index(users["user_id"]).get_indexer(impressions["user_id"])
    item_index = impressions["item_index"].to_numpy()
    user_row = user_snapshots.iloc[user_index * (days + 1) + day].reset_index(drop=True)
    item_row = item_snapshots.iloc[item_index * (days + 1) + day].reset_index(drop=True)
    context = context_columns(impressions["event_ts"].to_numpy())
    log = pd.DataFrame(
        {
            "event_id": impressions["event_id"],
            "event_ts": impressions["event_ts"],
            "user_id": impressions["user_id"],
            "country": users["country"].to_numpy()[user_index],
            "device": users["device"].to_numpy()[user_index],
            "user_impressions_7d": user_row["user_impressions_7d"].astype(float),
            "user_clicks_7d": user_row["user_clicks_7d"].astype(float),
            "user_watch_seconds_7d": user_row["user_watch_seconds_7d"].astype(float),
            "user_features_missing": 0,
            "item_id": impressions["item_id"],
            "category": items["category"].to_numpy()[item_index],
            "creator_id": items["creator_id"].to_numpy()[item_index],
            "duration_s": items["duration_s"].to_numpy()[item_index],
            "item_age_days": item_age_days(
                impressions["event_ts"].to_numpy(), items["upload_ts"].to_numpy()[item_index]
            ),
            "item_impressions_7d": item_row["item_impressions_7d"].astype(float),
            "item_clicks_7d": item_row["item_clicks_7d"].astype(float),
            "item_ctr_7d": item_row["item_ctr_7d"],
            "item_features_missing": 0,
            "hour_of_day": context["hour_of_day"],
            "day_of_week": context["day_of_week"],
        }
    )
    log = pd.concat([log, _serving_history(impressions)], axis=1)
    skewed = day >= skew_day
    if skew == "device":
        log.loc[skewed & (log["device"] == "ios").to_numpy(), "device"] = "android"
    elif skew == "watch_minutes":
        log.loc[skewed, "user_watch_seconds_7d"] = (
            log.loc[skewed, "user_watch_seconds_7d"] / 60.0
        ).round(2)
    return log
