"""Trailing-window aggregates of the interactions: the feature views' columns, defined once.

A feature view row of entity ``e`` stamped ``feature_ts = T`` (a UTC midnight)
aggregates ``e``'s events in ``[T - TRAILING_DAYS days, T)``: nothing from ``T``
itself or later. The point-in-time join then gives an event at ``t`` the newest row
with ``feature_ts <= t``, so an event never sees itself, a later event, or even an
earlier event of its own day: the staleness of a daily feature job, which is what
production serves (a daily materialization, as in Feast).

Two ways to store the same view:

- ``daily_view``: one row per entity and midnight (the definition; what a daily
  feature job writes, and what the sample generator brings);
- ``view_changes``: the rows of ``daily_view`` where a value changes (each entity's
  first midnight, then the midnights after a day with events, when those events
  enter the window, and TRAILING_DAYS later, when they leave it). The as-of rule
  reads the same value at every moment from both, and this one grows with the
  events, not with entities x days: what ingest derives, from ``DailySums`` built
  batch by batch.

Sums are exact: counts and integer columns as integers, other columns in integer
thousandths (``SUM_SCALE``), so a sum is the same whatever the order or batching of
the events, and both stores give the same values bit for bit.

Who uses these definitions: ingest, to derive ``user_features`` / ``item_features``
from the interactions when the data brings no such tables; the sample generator,
which writes the daily tables a feature job would; the online service, which folds
the events since the snapshot into them (``recsys.core.online_features``).

Whole columns at once (``np.bincount``, cumulative sums, sorts), no per-row Python.
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


# Sums of non-integer columns (watch seconds) are kept in integer thousandths.
SUM_SCALE = 1000


def _summed(aggregate: Aggregate) -> str:
    """The daily sum an aggregate is made of: events (count, ctr's denominator) or a
    column's sum (ctr's numerator is the clicks)."""
    if aggregate.kind == "count":
        return "events"
    return aggregate.column if aggregate.kind == "sum" else CLICKED


def _sums_of(view: str) -> list[str]:
    return list(dict.fromkeys(["events", *(_summed(AGGREGATES[n]) for n in view_aggregates(view))]))


def _scaled(values: np.ndarray, integral: bool) -> np.ndarray:
    return values.astype(np.int64) if integral else np.round(values * SUM_SCALE).astype(np.int64)


def _finish(view: str, key: str, keys, feature_ts, totals: dict, integral: dict) -> pd.DataFrame:
    """A view's rows from the trailing totals (int64 arrays by ``_summed`` name)."""
    columns = {key: keys, FEATURE_TS: feature_ts}
    for name in view_aggregates(view):
        aggregate = AGGREGATES[name]
        if aggregate.kind == "count":
            columns[name] = totals["events"].astype(np.int64)
        elif aggregate.kind == "sum":
            total = totals[aggregate.column]
            columns[name] = (
                total.astype(np.int64)
                if integral[aggregate.column]
                else (total / SUM_SCALE).round(1)
            )
        else:
            clicks = totals[CLICKED].astype(np.float64)
            if not integral[CLICKED]:
                clicks = clicks / SUM_SCALE
            events = totals["events"].astype(np.float64)
            columns[name] = ((clicks + CTR_PRIOR_CLICKS) / (events + CTR_PRIOR_IMPRESSIONS)).round(
                5
            )
    return pd.DataFrame(columns)


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
    totals, integral = {}, {}
    ends = np.arange(snapshots) + TRAILING_DAYS
    for summed in _sums_of(view):
        if summed == "events":
            values, integral[summed] = np.ones(int(used.sum()), dtype=np.int64), True
        else:
            integral[summed] = pd.api.types.is_integer_dtype(events[summed])
            values = _scaled(events[summed].to_numpy()[used], integral[summed])
        # Integer values below 2**53 add up exactly in float64.
        daily = np.bincount(flat, weights=values, minlength=n * bins).astype(np.int64)
        cumulative = np.concatenate(
            [np.zeros((n, 1), dtype=np.int64), np.cumsum(daily.reshape(n, bins), axis=1)], axis=1
        )
        totals[summed] = (cumulative[:, ends] - cumulative[:, ends - TRAILING_DAYS]).ravel()
    return _finish(
        view,
        key,
        np.repeat(ids.to_numpy(), snapshots),
        np.tile(first_ts + np.arange(snapshots) * DAY, n),
        totals,
        integral,
    )


class DailySums:
    """Per entity and UTC day, the sums a view's aggregates are made of, added up
    batch by batch (``add``); exact, so batching never changes a value. Holds one row
    per entity and day with events."""

    def __init__(self, view: str, phase: int = 0):
        """``phase``: the days' start within a UTC day (the first snapshot's time of
        day), so days line up with the view's midnights."""
        self.view, self.key, self.phase = view, VIEW_KEYS[view], phase
        self.sums = _sums_of(view)
        self.integral: dict[str, bool] = {"events": True}
        self._parts: list[pd.DataFrame] = []
        self._rows = 0

    def add(self, events: pd.DataFrame) -> None:
        """Count ``events`` (the view's key, event_ts, clicked, watch_seconds)."""
        if events.empty:
            return
        frame = pd.DataFrame(
            {
                self.key: events[self.key].to_numpy(),
                "day": (events[EVENT_TS].to_numpy(np.int64) - self.phase) // DAY,
                "events": np.ones(len(events), dtype=np.int64),
            }
        )
        for summed in self.sums[1:]:
            integral = pd.api.types.is_integer_dtype(events[summed])
            self.integral[summed] = self.integral.get(summed, integral) and integral
            frame[summed] = _scaled(events[summed].to_numpy(), integral)
        part = frame.groupby([self.key, "day"], sort=False).sum().reset_index()
        self._parts.append(part)
        self._rows += len(part)
        if self._rows > 4 * max(len(p) for p in self._parts):  # keep the parts few
            self._parts = [self.table()]
            self._rows = len(self._parts[0])

    def table(self) -> pd.DataFrame:
        """(key, day, sums...), one row per entity and day, sorted."""
        columns = [self.key, "day", *self.sums]
        if not self._parts:
            return pd.DataFrame({name: [] for name in columns})
        merged = pd.concat(self._parts, ignore_index=True)
        merged = merged.groupby([self.key, "day"], sort=True).sum().reset_index()
        return merged[columns]


def view_changes(daily: DailySums, ids, first_ts: int, snapshots: int) -> pd.DataFrame:
    """The rows of ``daily_view`` (same ids, midnights and values) where a value
    changes: each id's first midnight, and the midnights when a day with events
    enters the trailing window (the next midnight) or leaves it (TRAILING_DAYS after
    that), within the ``snapshots`` midnights from ``first_ts`` on. At most
    ``len(ids)`` + 2 rows per entity-day with events."""
    view, key = daily.view, daily.key
    sums = daily.table()
    ids = pd.Index(np.asarray(ids))
    code = ids.get_indexer(sums[key].to_numpy())
    if (code < 0).any():
        raise ValueError(
            f"view_changes: sums of {key}s not in ids, e.g. {sums[key][code < 0].iloc[0]}"
        )
    # Snapshot s (0-based) at first_ts + s days sums days [first_day + s - 7, first_day + s).
    if first_ts % DAY != daily.phase % DAY:
        raise ValueError("view_changes: the sums' days do not start at first_ts's time of day")
    first_day = (first_ts - daily.phase) // DAY
    day = sums["day"].to_numpy(np.int64) - first_day  # relative: snapshot s holds days [s-7, s)
    change = np.concatenate([np.zeros(len(ids), np.int64), day + 1, day + 1 + TRAILING_DAYS])
    owner = np.concatenate([np.arange(len(ids)), code, code])
    inside = (change >= 0) & (change < snapshots)
    points = np.unique(owner[inside] * (snapshots + 1) + change[inside])  # sorted by (id, s)
    point_id, point_s = points // (snapshots + 1), points % (snapshots + 1)
    # Totals over days [s - 7, s) of each id: cumulative sums over its sorted days.
    order = np.lexsort((day, code))
    sorted_key = code[order] * (2**40) + (day[order] + 2**39)
    # Position of the first of each point's id's days >= s, for s = the point's
    # midnight (days < s) and TRAILING_DAYS before it.
    upto_now = np.searchsorted(sorted_key, point_id * (2**40) + (point_s + 2**39))
    upto_then = np.searchsorted(sorted_key, point_id * (2**40) + (point_s - TRAILING_DAYS + 2**39))
    totals = {}
    for summed in daily.sums:
        cumulative = np.concatenate([[0], np.cumsum(sums[summed].to_numpy(np.int64)[order])])
        totals[summed] = cumulative[upto_now] - cumulative[upto_then]
    return _finish(
        view,
        key,
        ids.to_numpy()[point_id],
        first_ts + point_s * DAY,
        totals,
        {name: daily.integral.get(name, True) for name in daily.sums},
    )
