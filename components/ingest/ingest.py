"""Ingest: check every raw row against the data contract, quarantine the rows
that break it, keep the time window and split train/eval by time."""

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

import schemas
from components.ingest.contract import (TableCheck, column_rules, read_raw_file, reason_counts,
                                        reject_rate_error)
from recsys.tables import DataError, find_table, write_dataset

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

    @property
    def span_start(self) -> int:
        """The run's span is its newest day: the data a daily run adds."""
        return self.as_of - DAY

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
            hint = (" KFP substitutes [[ScheduledTime...]] macros only in runs of a recurring "
                    "run; give a date for a one-off run" if "[[" in as_of else "")
            raise DataError(f"as_of={as_of!r} is not a date or timestamp ({error}).{hint}") \
                from None
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
        "impressions_accepted": len(events),
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


# Which curated schema describes each raw table's columns (and in which environment).
SCHEMA_OF_TABLE = {
    "users": ("users", None),
    "items": ("items", None),
    "impressions": ("impressions", None),
    "user_features": ("user_features", None),
    "item_features": ("item_features", None),
    "serving_log": ("examples", "SERVING"),
}
# Tables whose rows must have a unique key; later duplicates are quarantined.
UNIQUE_KEYS = {"users": "user_id", "items": "item_id", "impressions": "event_id",
               "serving_log": "event_id"}
OPTIONAL_TABLES = {"serving_log"}


def check_table(data_root: str, name: str, schema_dir: str, encoding: str, now: int,
                users: pd.DataFrame | None = None,
                items: pd.DataFrame | None = None) -> TableCheck:
    """Every row of raw table ``name`` checked against the contract."""
    check = TableCheck(name, [read_raw_file(path, encoding) for path in find_table(data_root, name)])
    schema_name, environment = SCHEMA_OF_TABLE[name]
    rules = column_rules(schemas.load_schema(schema_name, schema_dir), environment)
    check.apply(rules, now)
    key = UNIQUE_KEYS.get(name)
    if key:
        seen = check.values[key].where(pd.Series(check.accepted))
        check.reject(seen.notna() & seen.duplicated(keep="first"), "duplicate_key", key,
                     f"{key} seen in an earlier row")
    for reference, column, reason in ((users, "user_id", "unknown_user_id"),
                                      (items, "item_id", "unknown_item_id")):
        if reference is not None and column in check.values:
            check.reject(~check.values[column].isin(reference[column]).to_numpy(), reason, column)
    if name == "impressions":
        duration = check.values["item_id"].map(items.set_index("item_id")["duration_s"])
        check.reject((check.values["watch_seconds"] > duration).to_numpy(),
                     "watch_exceeds_duration", "watch_seconds")
    return check


def ingest(data_root: str, as_of: str, lookback_days: int, eval_days: int,
           outputs: dict[str, str], schema_dir: str = "", max_reject_rate: float = 0.01,
           input_encoding: str = "utf-8", now: int | None = None) -> dict:
    """Check every raw table, quarantine bad rows, apply the window, write each dataset.

    ``outputs`` maps ``train_events``, ``eval_events``, ``users``, ``items``,
    ``user_features``, ``item_features``, ``serving_log`` and ``quarantine`` to
    directories. Returns row counts (read = accepted + quarantined, per table)
    and the resolved window. Raises DataError, after writing the quarantine,
    when a table's reject rate is above ``max_reject_rate``.
    """
    now = int(time.time()) if now is None else now
    checks, accepted, counts, known = {}, {}, {}, {}
    for name in ("users", "items", "impressions", "user_features", "item_features",
                 "serving_log"):
        if name in OPTIONAL_TABLES and not _present(data_root, name):
            counts[f"{name}_read"] = 0
            continue
        # Ids must be known in the tables the models learn from. The serving log is
        # exempt: serving meets users and items newer than the last table dump, and
        # those requests belong in its statistics.
        checks[name] = check_table(data_root, name, schema_dir, input_encoding, now,
                                   **({} if name == "serving_log" else known))
        accepted[name] = checks[name].typed()
        if name == "items":
            known = {"users": accepted["users"], "items": accepted["items"]}

    quarantine = pd.concat([c.quarantined() for c in checks.values()], ignore_index=True)
    write_dataset(quarantine, outputs["quarantine"])
    for name, check in checks.items():
        counts[f"{name}_read"] = len(check.raw)
        counts[f"{name}_quarantined"] = int((~check.accepted).sum())
        assert len(accepted[name]) + counts[f"{name}_quarantined"] == len(check.raw), \
            f"row accounting broken for {name}"
    counts["quarantined"] = len(quarantine)
    counts.update({f"quarantined_{reason}": n for reason, n in reason_counts(quarantine).items()})
    for name, check in checks.items():
        if counts[f"{name}_quarantined"] > max_reject_rate * len(check.raw):
            raise DataError(reject_rate_error(name, len(check.raw), quarantine, max_reject_rate,
                                              outputs["quarantine"]))

    events = accepted["impressions"]
    window = resolve_window(as_of, lookback_days, eval_days, events["event_ts"])
    train, evaluation, split_counts = split_events(events, window)
    counts.update(split_counts)
    write_dataset(train, outputs["train_events"])
    write_dataset(evaluation, outputs["eval_events"])
    for name in ("users", "items"):
        counts[name] = len(accepted[name])
        write_dataset(accepted[name], outputs[name])
    for name in ("user_features", "item_features"):
        table = accepted[name]
        # Only snapshots known by as_of can be used; later ones would leak the future.
        known = table["feature_ts"] <= window.as_of
        if "created_ts" in table:
            known &= table["created_ts"] <= window.as_of
        counts[f"{name}_after_as_of"] = int((~known).sum())
        counts[name] = int(known.sum())
        write_dataset(table[known].reset_index(drop=True), outputs[name])
    serving = accepted.get("serving_log")
    if serving is not None:
        in_span = ((serving["event_ts"] >= window.span_start)
                   & (serving["event_ts"] < window.as_of)).to_numpy()
        serving = serving[in_span].reset_index(drop=True)
    else:
        serving = pd.DataFrame({"event_id": np.array([], dtype=object)})
    counts["serving_log"] = len(serving)
    write_dataset(serving, outputs["serving_log"])
    counts.update(as_of=window.as_of, window_start=window.start, eval_start=window.eval_start,
                  span_start=window.span_start)
    return counts


def _present(data_root: str, name: str) -> bool:
    try:
        find_table(data_root, name)
    except DataError:
        return False
    return True
