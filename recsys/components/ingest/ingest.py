"""Ingest: check every raw row against the data contract, quarantine the rows
that break it, keep the time window and split train/eval by time."""

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.components.ingest.checks import (
    TableCheck,
    column_rules,
    reason_counts,
    reject_rate_error,
)
from recsys.components.ingest.config import IngestConfig
from recsys.core import contracts
from recsys.core.aggregates import TRAILING_DAYS, daily_view, view_aggregates
from recsys.core.contracts import (
    CREATED_TS,
    EVENT_ID,
    EVENT_TS,
    FEATURE_TS,
    IMPRESSIONS,
    ITEM_DURATION,
    ITEM_FEATURES,
    ITEM_ID,
    ITEMS,
    QUARANTINE,
    RAW_TABLES,
    SERVING_LOG,
    USER_FEATURES,
    USER_ID,
    USERS,
    WATCH_SECONDS,
)
from recsys.core.derived import DAY
from recsys.core.features import load_registry
from recsys.core.progress import log
from recsys.core.schemas import load_schema, required_columns
from recsys.core.tables import DataError, find_table, read_raw_file, write_dataset


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
        return (
            f"train [{fmt(self.start)}, {fmt(self.eval_start)}), "
            f"eval [{fmt(self.eval_start)}, {fmt(self.as_of)})"
        )


def resolve_window(as_of: str, lookback_days: int, eval_days: int, event_ts: pd.Series) -> Window:
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
            hint = (
                " KFP substitutes [[ScheduledTime...]] macros only in runs of a recurring "
                "run; give a date for a one-off run"
                if "[[" in as_of
                else ""
            )
            raise DataError(
                f"as_of={as_of!r} is not a date or timestamp ({error}).{hint}"
            ) from None
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
    ts = events[EVENT_TS]
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
    assert counts["train_events"] + counts["eval_events"] + counts[
        "impressions_before_window"
    ] + counts["impressions_at_or_after_as_of"] == len(events), "row accounting broken"
    if train.empty or evaluation.empty:
        lo, hi = (
            (pd.Timestamp(ts.min(), unit="s", tz="UTC"), pd.Timestamp(ts.max(), unit="s", tz="UTC"))
            if len(ts)
            else (None, None)
        )
        raise DataError(
            f"window {window.describe()} leaves {len(train)} train and {len(evaluation)} eval "
            f"events; the impressions span {lo} to {hi}. Choose as_of/lookback_days/eval_days "
            "inside the data."
        )
    return train.reset_index(drop=True), evaluation.reset_index(drop=True), counts


def check_table(
    data_root: str,
    name: str,
    schema_dir: str,
    encoding: str,
    now: int,
    users: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
) -> TableCheck:
    """Every row of raw table ``name`` checked against the contract."""
    check = TableCheck(
        name, [read_raw_file(path, encoding) for path in find_table(data_root, name)]
    )
    table = RAW_TABLES[name]
    rules = column_rules(load_schema(table.schema, schema_dir), table.environment)
    check.apply(rules, now)
    key = table.key
    if key:
        seen = check.values[key].where(pd.Series(check.accepted))
        check.reject(
            seen.notna() & seen.duplicated(keep="first"),
            "duplicate_key",
            key,
            f"{key} seen in an earlier row",
        )
    for reference, column, reason in (
        (users, USER_ID, "unknown_user_id"),
        (items, ITEM_ID, "unknown_item_id"),
    ):
        if reference is not None and column in check.values:
            check.reject(~check.values[column].isin(reference[column]).to_numpy(), reason, column)
    if name == IMPRESSIONS and items is not None and ITEM_DURATION in items:
        duration = check.values[ITEM_ID].map(items.set_index(ITEM_ID)[ITEM_DURATION])
        check.reject(
            (check.values[WATCH_SECONDS] > duration).to_numpy(),
            "watch_exceeds_duration",
            WATCH_SECONDS,
        )
    return check


def ingest(
    data_root: str,
    outputs: dict[str, str],
    config: IngestConfig = IngestConfig(),
    schema_dir: str = "",
    now: int | None = None,
) -> dict:
    """Check every raw table, quarantine bad rows, apply the window, write each dataset.

    ``outputs`` maps the datasets of ``contracts.INGESTED`` and ``quarantine`` to
    directories. Returns row counts (read = accepted + quarantined, per table)
    and the resolved window. Raises DataError, after writing the quarantine,
    when a table's reject rate is above ``config.max_reject_rate``.
    """
    now = int(time.time()) if now is None else now
    load_registry(schema_dir)  # a registry that disagrees with the schemas stops the run here
    checks, accepted, counts, known = {}, {}, {}, {}
    # Tables the data does not bring and its schemas allow to derive (DERIVABLE).
    derived = [
        name for name in DERIVABLE if not _present(data_root, name) and derivable(name, schema_dir)
    ]
    for name, table in RAW_TABLES.items():
        if name in derived or (table.optional and not _present(data_root, name)):
            counts[f"{name}_read"] = 0
            continue
        # Ids must be known in the tables the models learn from. The serving log is
        # exempt: serving meets users and items newer than the last table dump, and
        # those requests belong in its statistics.
        checks[name] = check_table(
            data_root,
            name,
            schema_dir,
            config.input_encoding,
            now,
            **({} if name == SERVING_LOG else known),
        )
        for note in checks[name].notes:
            log("ingest", note)
        if not table.optional and checks[name].raw.empty:
            raise DataError(
                f"table '{name}' has no rows: {find_table(data_root, name)} hold(s) a header "
                "at most. Export the data with its rows."
            )
        accepted[name] = checks[name].typed()
        if name in (USERS, ITEMS):
            known[name] = accepted[name]

    quarantine = pd.concat([c.quarantined() for c in checks.values()], ignore_index=True)
    write_dataset(quarantine, outputs[QUARANTINE])
    for name, check in checks.items():
        counts[f"{name}_read"] = len(check.raw)
        counts[f"{name}_quarantined"] = int((~check.accepted).sum())
        assert len(accepted[name]) + counts[f"{name}_quarantined"] == len(check.raw), (
            f"row accounting broken for {name}"
        )
    counts["quarantined"] = len(quarantine)
    counts.update({f"quarantined_{reason}": n for reason, n in reason_counts(quarantine).items()})
    for name, check in checks.items():
        if counts[f"{name}_quarantined"] > config.max_reject_rate * len(check.raw):
            raise DataError(
                reject_rate_error(
                    name, len(check.raw), quarantine, config.max_reject_rate, outputs[QUARANTINE]
                )
            )

    events = accepted[IMPRESSIONS]
    window = resolve_window(config.as_of, config.lookback_days, config.eval_days, events[EVENT_TS])
    train, evaluation, split_counts = split_events(events, window)
    counts.update(split_counts)
    write_dataset(train, outputs[contracts.TRAIN_EVENTS])
    write_dataset(evaluation, outputs[contracts.EVAL_EVENTS])
    # Tables the data does not bring, from the interactions before as_of (DERIVABLE).
    past = events[events[EVENT_TS] < window.as_of]
    for name in derived:
        accepted[name] = derive_table(name, past, window, schema_dir)
        counts[f"{name}_derived"] = 1
        log(
            "ingest",
            f"{name}: no table under {data_root}; derived from the interactions before "
            f"as_of ({DERIVABLE[name]}): {len(accepted[name])} rows",
        )
    for name in (USERS, ITEMS):
        counts[name] = len(accepted[name])
        write_dataset(accepted[name], outputs[name])
    for name in contracts.FEATURE_VIEWS:
        table = accepted[name]
        # Only snapshots known by as_of can be used; later ones would leak the future.
        known = table[FEATURE_TS] <= window.as_of
        if CREATED_TS in table:
            known &= table[CREATED_TS] <= window.as_of
        counts[f"{name}_after_as_of"] = int((~known).sum())
        counts[name] = int(known.sum())
        write_dataset(table[known].reset_index(drop=True), outputs[name])
    serving = accepted.get(SERVING_LOG)
    if serving is not None:
        in_span = (
            (serving[EVENT_TS] >= window.span_start) & (serving[EVENT_TS] < window.as_of)
        ).to_numpy()
        serving = serving[in_span].reset_index(drop=True)
    else:
        serving = pd.DataFrame({EVENT_ID: np.array([], dtype=object)})
    counts[SERVING_LOG] = len(serving)
    write_dataset(serving, outputs[SERVING_LOG])
    counts.update(
        as_of=window.as_of,
        window_start=window.start,
        eval_start=window.eval_start,
        span_start=window.span_start,
    )
    return counts


# What ingest derives from the interactions when the data has no such table, and how.
DERIVABLE = {
    USERS: "one row per user id",
    ITEMS: "one row per item id",
    USER_FEATURES: f"trailing {TRAILING_DAYS}-day aggregates per user and day",
    ITEM_FEATURES: f"trailing {TRAILING_DAYS}-day aggregates per item and day",
}


def derivable_columns(name: str) -> set[str]:
    """The columns of table ``name`` that ``derive_table`` can compute."""
    if name in contracts.FEATURE_VIEWS:
        return {contracts.FEATURE_VIEWS[name], FEATURE_TS, *view_aggregates(name)}
    return {RAW_TABLES[name].key}


def derivable(name: str, schema_dir: str) -> bool:
    """Whether table ``name`` may be absent: its schema requires nothing that the
    interactions cannot give (an entity table without attributes, a feature view of
    ``AGGREGATES`` columns only)."""
    return set(required_columns(RAW_TABLES[name].schema, schema_dir)) <= derivable_columns(name)


def derive_table(name: str, events: pd.DataFrame, window: Window, schema_dir: str) -> pd.DataFrame:
    """Table ``name`` from ``events`` (accepted, before as_of): the ids seen, or the
    feature view's daily rows over the window (``recsys.core.aggregates``), with the
    columns of its schema."""
    if name in contracts.FEATURE_VIEWS:
        key = contracts.FEATURE_VIEWS[name]
        since = events[events[EVENT_TS] >= window.start - TRAILING_DAYS * DAY]
        ids = np.sort(since[key].unique())
        table = daily_view(since, name, ids, window.start, window.lookback_days + 1)
    else:
        key = RAW_TABLES[name].key
        table = pd.DataFrame({key: np.sort(events[key].unique())})
    columns = [f.name for f in load_schema(RAW_TABLES[name].schema, schema_dir).feature]
    return table[[column for column in columns if column in table]]


def _present(data_root: str, name: str) -> bool:
    try:
        find_table(data_root, name)
    except DataError:
        return False
    return True
