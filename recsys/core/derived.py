"""Features computed from other values rather than looked up, written once.

The features stage calls these for every training example (at the event's time)
and for the serving snapshots (at ``as_of``); the online funnel calls
``context_columns`` for every request. Training and serving therefore cannot
compute them differently. Plain numpy over whole columns.
"""

import numpy as np

DAY = 86_400
HOUR = 3_600
# 1970-01-01, day 0 of Unix time, was a Thursday; Monday is 0 (as pandas counts).
_EPOCH_WEEKDAY = 3


def context_columns(event_ts) -> dict[str, np.ndarray]:
    """The request context of each timestamp (Unix seconds, UTC): hour of day (0-23)
    and day of week (Monday 0)."""
    seconds = np.asarray(event_ts, dtype=np.int64)
    return {
        "hour_of_day": (seconds // HOUR) % 24,
        "day_of_week": (seconds // DAY + _EPOCH_WEEKDAY) % 7,
    }


def item_age_days(at_ts, upload_ts) -> np.ndarray:
    """Days since the item was uploaded, at ``at_ts``; never negative."""
    age = (np.asarray(at_ts, dtype=np.float64) - np.asarray(upload_ts, dtype=np.float64)) / DAY
    return np.maximum(age, 0.0)


# The derived features, by name: the columns each needs besides the event time
# (table -> columns) and how it is computed from them at time ``at``.
DERIVED = {
    "hour_of_day": ({}, lambda columns, at: context_columns(at)["hour_of_day"]),
    "day_of_week": ({}, lambda columns, at: context_columns(at)["day_of_week"]),
    "item_age_days": (
        {"items": ("upload_ts",)},
        lambda columns, at: item_age_days(at, columns["upload_ts"]),
    ),
}


def derive(name: str, columns, at) -> np.ndarray:
    """Derived feature ``name`` of rows with input ``columns`` (column -> array), at
    times ``at`` (one per row, or one for all)."""
    _, compute = DERIVED[name]
    return compute(columns, np.asarray(at, dtype=np.int64))
