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

import contextlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.core import storage
from recsys.core.aggregates import daily_view
from recsys.core.contracts import (
    IMPRESSIONS,
    ITEM_FEATURES,
    PROPENSITY,
    RAW_TABLES,
    USER_FEATURES,
)
from recsys.core.derived import DAY, context_columns, item_age_days
from recsys.core.ground_truth import HOUR_WEIGHTS, World, click_logit, respond, user_blocks
from recsys.core.schemas import required_columns
from recsys.core.tables import raw_table, write_raw_tables

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
    # Numeric columns only (user and item rows, not ids): tens of bytes per impression.
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
    user_ids = pa.array(users_frame["user_id"], pa.string())
    item_ids = pa.array(items_frame["item_id"], pa.string())

    def with_ids(snapshots: pd.DataFrame, key: str, ids: pa.Array) -> pd.DataFrame:
        snapshots[key] = ids.take(pa.array(snapshots[key].to_numpy())).to_numpy(False)
        return snapshots

    by_rows = impressions.rename(columns={"user_index": "user_id", "item_index": "item_id"})
    user_snapshots = with_ids(
        daily_view(by_rows, USER_FEATURES, np.arange(users), start_ts, days + 1),
        "user_id",
        user_ids,
    )
    item_snapshots = with_ids(
        daily_view(by_rows, ITEM_FEATURES, np.arange(items), start_ts, days + 1),
        "item_id",
        item_ids,
    )
    del by_rows
    serving_log_rows = _write_serving_log(
        impressions,
        users_frame,
        items_frame,
        user_snapshots,
        item_snapshots,
        days,
        start_ts,
        skew,
        skew_day,
        storage.join(out, "serving_log.parquet"),
    )
    # Real feature jobs miss days; a few absent snapshots exercise the as-of fallback.
    user_features, item_features = (
        frame[rng.random(len(frame)) >= 0.03].reset_index(drop=True)
        for frame in (user_snapshots, item_snapshots)
    )
    columns = [*required_columns(RAW_TABLES[IMPRESSIONS].schema), PROPENSITY]
    impressions_table = pa.table(
        {
            "event_id": event_ids(len(impressions)),
            **{
                name: impressions[name].to_numpy()
                for name in columns
                if name not in ("event_id", "user_id", "item_id")
            },
            "user_id": user_ids.take(pa.array(impressions["user_index"].to_numpy())),
            "item_id": item_ids.take(pa.array(impressions["item_index"].to_numpy())),
        }
    ).select(columns)
    del impressions

    tables = {
        "users": users_frame,
        "items": items_frame,
        "impressions": impressions_table,
        "user_features": user_features,
        "item_features": item_features,
    }
    counts = write_raw_tables(tables, out)
    counts["serving_log"] = serving_log_rows
    world.save(out)
    return counts


def event_ids(n: int, first: int = 0) -> pa.Array:
    """ "e000000000", "e000000001", ... from ``first`` on: built in Arrow, not as
    Python strings."""
    numbers = pa.array(np.arange(first, first + n, dtype=np.int64)).cast(pa.string())
    digits = pc.utf8_lpad(numbers, 9, "0")
    return pc.binary_join_element_wise("e", digits, "")


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
    n_users, n_items = len(world.user_vectors), len(world.item_vectors)
    rate = np.full(days, per_user_day)
    if drift == "volume":
        rate[drift_day:] *= 0.4
    counts = rng.poisson(activity[:, None] * rate[None, :], size=(n_users, days))
    per_user = counts.sum(axis=1)
    day = (
        np.repeat(np.tile(np.arange(days), n_users), counts.ravel())
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
    affinity = np.empty(len(user_index))  # of each impression's user and item
    offsets = np.concatenate([[0], np.cumsum(per_user)])
    drifted = day >= drift_day if drift in ("category", "numeric") else np.zeros(len(day), bool)
    passes = [(0.0, ~drifted)] + ([(drift_logits, drifted)] if drifted.any() else [])
    # Users x items matrices a block of users at a time (ground_truth.user_blocks).
    for block in user_blocks(n_users, n_items):
        block_affinity = world.affinity_matrix(block)
        for extra_logits, rows in passes:
            probabilities = world.logging_probabilities(extra_logits, block_affinity)
            # One vectorised draw per user (not per row): inverse-CDF sampling on each
            # user's row.
            cdf = np.cumsum(probabilities, axis=1)
            for u in range(block.start, block.stop):  # per user, vectorised within the user
                lo, hi = offsets[u], offsets[u + 1]
                mine = lo + np.flatnonzero(rows[lo:hi])
                row = u - block.start
                item_index[mine] = np.minimum(np.searchsorted(cdf[row], uniform[mine]), n_items - 1)
                propensity[mine] = probabilities[row, item_index[mine]]
        rows = slice(offsets[block.start], offsets[block.stop])
        affinity[rows] = block_affinity[user_index[rows] - block.start, item_index[rows]]
    hour = rng.choice(24, len(user_index), p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    event_ts = start_ts + day * DAY + hour * 3600 + rng.integers(0, 3600, len(user_index))

    logit = click_logit(affinity, world.quality[item_index], hour)
    clicked, watch_seconds = respond(rng, logit, world.duration_s[item_index])

    order = np.argsort(event_ts, kind="stable")
    return pd.DataFrame(
        {
            "event_ts": event_ts[order],
            "user_index": user_index[order],
            "item_index": item_index[order],
            "clicked": clicked[order],
            "watch_seconds": watch_seconds[order],
            PROPENSITY: propensity[order],
        }
    )


# Impressions per chunk of the serving log: it is built and written chunk by chunk.
SERVING_LOG_CHUNK_ROWS = 1_000_000


def _serving_history(chunk: pd.DataFrame, engagements: pa.Table) -> pd.DataFrame:
    """Each impression's engagement history as serving had it: the user's clicks
    strictly before it (the same lookup the training join uses), by user row."""
    from recsys.components.features.beam_asof import HistoryView, join_history

    view = HistoryView(key="user_index")
    events = pa.table(
        {
            view.key: chunk["user_index"].to_numpy(),
            "event_ts": chunk["event_ts"].to_numpy(np.int64),
        }
    )
    history = join_history(events, engagements, view)
    return pd.DataFrame(
        {
            view.items_column: history.column(view.items_column).to_pandas().to_numpy(),
            view.count_column: history.column(view.count_column).to_numpy(),
            view.mean_column: history.column(view.mean_column).to_numpy(),
        },
        index=chunk.index,
    )


def _write_serving_log(
    impressions,
    users,
    items,
    user_snapshots,
    item_snapshots,
    days,
    start_ts,
    skew,
    skew_day,
    path,
) -> int:
    """Per impression, the features serving used: each entity's snapshot of that day
    from serving's own feature cache (which, unlike the offline table, misses none).
    Written to ``path`` a chunk of impressions at a time; returns the rows written."""
    clicked = impressions[impressions["clicked"] == 1]
    engagements = pa.table(
        {
            "user_index": clicked["user_index"].to_numpy(),
            "event_ts": clicked["event_ts"].to_numpy(np.int64),
            "item_id": pa.array(items["item_id"], pa.string()).take(
                pa.array(clicked["item_index"].to_numpy())
            ),
            "watch_seconds": clicked["watch_seconds"].to_numpy(float),
        }
    )
    writer, schema = None, None
    with contextlib.ExitStack() as stack:
        for first in range(0, max(len(impressions), 1), SERVING_LOG_CHUNK_ROWS):
            chunk = impressions.iloc[first : first + SERVING_LOG_CHUNK_ROWS]
            log = _serving_log_rows(
                chunk, first, users, items, user_snapshots, item_snapshots, days, start_ts
            )
            log = pd.concat([log, _serving_history(chunk, engagements)], axis=1)
            _skewed(log, (chunk["event_ts"].to_numpy() - start_ts) // DAY >= skew_day, skew)
            table = raw_table(log.reset_index(drop=True))
            if writer is None:
                schema = table.schema
                writer = stack.enter_context(storage.parquet_writer(path, schema))
            writer.write_table(table.cast(schema))
    return len(impressions)


def _serving_log_rows(chunk, first, users, items, user_snapshots, item_snapshots, days, start_ts):
    day = (chunk["event_ts"].to_numpy() - start_ts) // DAY
    user_index = chunk["user_index"].to_numpy()
    item_index = chunk["item_index"].to_numpy()
    user_row = user_snapshots.iloc[user_index * (days + 1) + day].reset_index(drop=True)
    item_row = item_snapshots.iloc[item_index * (days + 1) + day].reset_index(drop=True)
    context = context_columns(chunk["event_ts"].to_numpy())
    return pd.DataFrame(
        {
            "event_id": event_ids(len(chunk), first).to_numpy(False),
            "event_ts": chunk["event_ts"].to_numpy(),
            "user_id": users["user_id"].to_numpy()[user_index],
            "country": users["country"].to_numpy()[user_index],
            "device": users["device"].to_numpy()[user_index],
            "user_impressions_7d": user_row["user_impressions_7d"].astype(float).to_numpy(),
            "user_clicks_7d": user_row["user_clicks_7d"].astype(float).to_numpy(),
            "user_watch_seconds_7d": user_row["user_watch_seconds_7d"].astype(float).to_numpy(),
            "user_features_missing": 0,
            "item_id": items["item_id"].to_numpy()[item_index],
            "category": items["category"].to_numpy()[item_index],
            "creator_id": items["creator_id"].to_numpy()[item_index],
            "duration_s": items["duration_s"].to_numpy()[item_index],
            "item_age_days": item_age_days(
                chunk["event_ts"].to_numpy(), items["upload_ts"].to_numpy()[item_index]
            ),
            "item_impressions_7d": item_row["item_impressions_7d"].astype(float).to_numpy(),
            "item_clicks_7d": item_row["item_clicks_7d"].astype(float).to_numpy(),
            "item_ctr_7d": item_row["item_ctr_7d"].to_numpy(),
            "item_features_missing": 0,
            "hour_of_day": context["hour_of_day"],
            "day_of_week": context["day_of_week"],
        },
        index=chunk.index,
    )


def _skewed(log: pd.DataFrame, skewed: np.ndarray, skew: str) -> None:
    """Serving's bug of ``skew``, on the rows from the skew's day on (in place)."""
    if skew == "device":
        log.loc[skewed & (log["device"] == "ios").to_numpy(), "device"] = "android"
    elif skew == "watch_minutes":
        log.loc[skewed, "user_watch_seconds_7d"] = (
            log.loc[skewed, "user_watch_seconds_7d"] / 60.0
        ).round(2)
