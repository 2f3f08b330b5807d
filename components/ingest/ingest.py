"""Ingest: read the raw tables, keep the time window, split train/eval by time."""

from dataclasses import dataclass

import pandas as pd

from recsys.tables import DataError, read_raw_table, write_dataset

DAY = 86_400


@dataclass(frozen=True)
class Window:
    as_of: int  # Unix seconds; events must be strictly before it
    lookback_days: int
    eval_days: int

    @property
    def start(self) -> int:
        return self.as_of - self.lookback_days * DAY

    @property
    def eval_start(self) -> int:
        return self.as_of - self.eval_days * DAY

    def describe(self) -> str:
        fmt = lambda ts: pd.Timestamp(ts, unit="s", tz="UTC").isoformat()  # noqa: E731
        return (f"train [{fmt(self.start)}, {fmt(self.eval_start)}), "
                f"eval [{fmt(self.eval_start)}, {fmt(self.as_of)})")


def resolve_window(as_of: str, lookback_days: int, eval_days: int,
                   event_ts: pd.Series) -> Window:
    """``as_of`` as given, or, when empty, the midnight (UTC) after the newest event."""
    if lookback_days <= 0 or eval_days <= 0 or eval_days >= lookback_days:
        raise DataError(
            f"need 0 < eval_days < lookback_days, got eval_days={eval_days}, "
            f"lookback_days={lookback_days}"
        )
    if as_of:
        try:
            stamp = pd.Timestamp(as_of)
        except ValueError as error:
            raise DataError(f"as_of={as_of!r} is not a date or timestamp ({error})") from None
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        as_of_ts = int(stamp.timestamp())
    else:
        if event_ts.empty:
            raise DataError("impressions table is empty, so as_of cannot be derived from it")
        as_of_ts = (int(event_ts.max()) // DAY + 1) * DAY
    return Window(as_of_ts, lookback_days, eval_days)


def split_events(events: pd.DataFrame, window: Window) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Time-based split: eval = the last ``eval_days`` of the window, train = the rest.

    Rows outside the window are not errors; they are counted, never silently lost.
    """
    ts = events["event_ts"]
    before = ts < window.start
    after = ts >= window.as_of
    in_window = ~(before | after)
    is_eval = in_window & (ts >= window.eval_start)
    train, evaluation = events[in_window & ~is_eval], events[is_eval]
    counts = {
        "impressions_read": len(events),
        "impressions_before_window": int(before.sum()),
        "impressions_at_or_after_as_of": int(after.sum()),
        "train_events": len(train),
        "eval_events": len(evaluation),
    }
    assert counts["train_events"] + counts["eval_events"] + counts["impressions_before_window"] \
        + counts["impressions_at_or_after_as_of"] == len(events), "row accounting broken"
    if train.empty or evaluation.empty:
        lo, hi = (pd.Timestamp(ts.min(), unit="s", tz="UTC"), pd.Timestamp(ts.max(), unit="s", tz="UTC")) \
            if len(ts) else (None, None)
        raise DataError(
            f"window {window.describe()} leaves {len(train)} train and {len(evaluation)} eval "
            f"events; the impressions span {lo} to {hi}. Choose as_of/lookback_days/eval_days "
            "inside the data."
        )
    return train.reset_index(drop=True), evaluation.reset_index(drop=True), counts


def ingest(data_root: str, as_of: str, lookback_days: int, eval_days: int,
           outputs: dict[str, str]) -> dict:
    """Read every raw table, apply the window and write each output dataset.

    ``outputs`` maps ``train_events``, ``eval_events``, ``users``, ``items``,
    ``user_features`` and ``item_features`` to directories. Returns row counts
    and the resolved window.
    """
    events = read_raw_table(data_root, "impressions")
    window = resolve_window(as_of, lookback_days, eval_days, events["event_ts"])
    train, evaluation, counts = split_events(events, window)
    write_dataset(train, outputs["train_events"])
    write_dataset(evaluation, outputs["eval_events"])
    for name in ("users", "items"):
        table = read_raw_table(data_root, name)
        counts[name] = len(table)
        write_dataset(table, outputs[name])
    for name in ("user_features", "item_features"):
        table = read_raw_table(data_root, name)
        # Only snapshots known by as_of can be used; later ones would leak the future.
        known = table["feature_ts"] <= window.as_of
        counts[f"{name}_read"] = len(table)
        counts[f"{name}_after_as_of"] = int((~known).sum())
        counts[name] = int(known.sum())
        write_dataset(table[known].reset_index(drop=True), outputs[name])
    counts.update(as_of=window.as_of, window_start=window.start, eval_start=window.eval_start)
    return counts
