"""Trailing-window aggregates of the interactions: the feature views' columns, defined once.

A feature view row of entity ``e`` stamped ``feature_ts = T`` (a UTC midnight)
aggregates ``e``'s events in ``[T - TRAILING_DAYS days, T)``: nothing from ``T``
itself or later. The point-in-time join then gives an event at ``t`` the newest row
with ``feature_ts <= t``, so an event never sees itself, a later event, or even an
earlier event of its own day: the staleness of a daily feature job, which is what
production serves (a daily materialization, as in Feast).

Who uses these definitions: ingest, to derive ``user_features`` / ``item_features``
from the interactions when the data brings no such tables; the sample generator and
the importers, which write the same tables for data that has them; the serving
snapshot, which is the view's row at ``as_of`` (the join's own lookup). The columns a
view may be derived with are the keys of ``AGGREGATES``.

Whole columns at once (``np.bincount`` and cumulative sums over an ids x days
matrix), no per-row Python.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.core.contracts import (
    CLICKED,
    EVENT_TS,
    FEATURE_TS,
    ITEM_FEATURES,
    ITEM_ID,
    USER_FEATURES,
    USER_ID,
    WATCH_SECONDS,
)
from recsys.core.derived import DAY

TRAILING_DAYS = 7
# Smoothing of the click-through rate towards a 10% prior, so an item with a few
# impressions gets neither 0/0 nor 1/1: (clicks + 2) / (impressions + 20).
CTR_PRIOR_CLICKS, CTR_PRIOR_IMPRESSIONS = 2.0, 20.0


@dataclass(frozen=True)
class Aggregate:
    view: str  # the feature view holding it: user_features or item_features
    kind: str  # count (events), sum (of ``column``) or ctr (smoothed clicks / events)
    column: str | None = None


AGGREGATES = {
    "user_impressions_7d": Aggregate(USER_FEATURES, "count"),
    "user_clicks_7d": Aggregate(USER_FEATURES, "sum", CLICKED),
    "user_watch_seconds_7d": Aggregate(USER_FEATURES, "sum", WATCH_SECONDS),
    "item_impressions_7d": Aggregate(ITEM_FEATURES, "count"),
    "item_clicks_7d": Aggregate(ITEM_FEATURES, "sum", CLICKED),
    "item_ctr_7d": Aggregate(ITEM_FEATURES, "ctr"),
}
VIEW_KEYS = {USER_FEATURES: USER_ID, ITEM_FEATURES: ITEM_ID}


def view_aggregates(view: str) -> list[str]:
    """The columns of ``view`` that can be derived from the interactions."""
    return [name for name, aggregate in AGGREGATES.items() if aggregate.view == view]


def daily_view(events: pd.DataFrame, view: str, ids, first_ts: int, snapshots: int) -> pd.DataFrame:
    """Feature view ``view`` (user_features / item_features) of ``events`` (event_ts,
    the view's key, clicked, watch_seconds): one row per id in ``ids`` and day,
    ``snapshots`` midnights from ``first_ts`` on, each aggregating the previous
    TRAILING_DAYS days. Events outside those days are ignored; an event whose id is
    not in ``ids`` is an error (a caller bug, not a data problem)."""
    key = VIEW_KEYS[view]
    ids = pd.Index(np.asarray(ids))
    n = len(ids)
    # Day bins from TRAILING_DAYS before the first snapshot; snapshot d sums bins [d, d + 7).
    origin = first_ts - TRAILING_DAYS * DAY
    bins = TRAILING_DAYS + snapshots - 1
    day = (events[EVENT_TS].to_numpy(np.int64) - origin) // DAY
    used = (day >= 0) & (day < bins)
    index = ids.get_indexer(events[key].to_numpy()[used])
    if (index < 0).any():
        raise ValueError(
            f"daily_view: events of {key}s not in ids, e.g. {events[key][used][index < 0].iloc[0]}"
        )
    flat = index * bins + day[used]

    def trailing(weights):
        daily = np.bincount(flat, weights=weights, minlength=n * bins).reshape(n, bins)
        cumulative = np.concatenate([np.zeros((n, 1)), np.cumsum(daily, axis=1)], axis=1)
        ends = np.arange(snapshots) + TRAILING_DAYS
        return cumulative[:, ends] - cumulative[:, ends - TRAILING_DAYS]

    counts = trailing(None)
    columns = {
        key: np.repeat(ids.to_numpy(), snapshots),
        FEATURE_TS: np.tile(first_ts + np.arange(snapshots) * DAY, n),
    }
    for name in view_aggregates(view):
        aggregate = AGGREGATES[name]
        if aggregate.kind == "count":
            columns[name] = counts.ravel().astype(np.int64)
        elif aggregate.kind == "sum":
            values = trailing(events[aggregate.column].to_numpy(np.float64)[used])
            integral = pd.api.types.is_integer_dtype(events[aggregate.column])
            columns[name] = values.ravel().astype(np.int64) if integral else values.ravel().round(1)
        else:
            clicks = trailing(events[CLICKED].to_numpy(np.float64)[used])
            columns[name] = (
                ((clicks + CTR_PRIOR_CLICKS) / (counts + CTR_PRIOR_IMPRESSIONS)).ravel().round(5)
            )
    return pd.DataFrame(columns)
