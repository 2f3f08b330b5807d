"""Ingest: check every raw row against the data contract, quarantine the rows
that break it, keep the time window and split train/eval by time.

Every table streams through in batches (``batch_rows``) from its files
to partitioned outputs, with pyarrow's readers, not Beam: the checks are whole-column
work on each batch, and the one that needs every row of a key at once (a key seen
twice) spreads the rows over hash partitions on local disk first
(``recsys.core.spill``), where Beam's local runner would hold that shuffle in
memory. Memory follows the batch size; docs/design.md lists what stays whole.
"""

import functools
import math
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.components.ingest.checks import (
    QUARANTINE_SCHEMA,
    ColumnRule,
    TableCheck,
    column_rules,
    ragged_rows,
    reject_rate_error,
)
from recsys.components.ingest.config import IngestConfig
from recsys.core import contracts, storage
from recsys.core.aggregates import TRAILING_DAYS, DailySums, view_aggregates, view_changes
from recsys.core.contracts import (
    CLICKED,
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
from recsys.core.limits import BATCH_ROWS
from recsys.core.progress import log
from recsys.core.schemas import load_schema, required_columns
from recsys.core.spill import KeyPartitions
from recsys.core.tables import (
    DataError,
    DatasetWriter,
    RawFile,
    find_table,
    ids_as_text,
    iter_dataset,
    iter_raw_file,
    write_dataset,
)


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


def split_events(
    events: pd.DataFrame, window: Window, require_both: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Time-based split: eval = the last ``eval_days`` of the window, train = the rest.

    Rows outside the window are not errors; they are counted, never silently lost.
    ``require_both``: an empty train or eval split is an error (a batch of a larger
    table may have either empty).
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
    if require_both and (train.empty or evaluation.empty):
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


class Reference:
    """The accepted ids of the users or items table (and the items' durations): what
    the impressions and feature tables are checked against. Kept whole, like a
    vocabulary: about (id length + 60) bytes per id."""

    def __init__(self, key: str):
        self.key = key
        self._ids: list[pa.Array] = []
        self._durations: list[np.ndarray] = []

    def add(self, accepted: pd.DataFrame) -> None:
        self._ids.append(_text(accepted[self.key]))
        if ITEM_DURATION in accepted:
            self._durations.append(accepted[ITEM_DURATION].to_numpy(np.float64))

    @functools.cached_property
    def ids(self) -> pa.Array:
        return pa.concat_arrays(self._ids) if self._ids else pa.array([], pa.string())

    def knows(self, values: pd.Series) -> np.ndarray:
        return np.asarray(pc.is_in(_text(values), self.ids).fill_null(False))

    def duration(self, values: pd.Series) -> np.ndarray | None:
        """Each id's duration (NaN where unknown); None when the table has none."""
        if not self._durations:
            return None
        rows = pc.index_in(_text(values), value_set=self.ids)
        durations = np.concatenate(self._durations)
        found = np.asarray(rows.is_valid())
        out = np.full(len(values), np.nan)
        out[found] = durations[rows.drop_null().to_numpy()]
        return out


def _text(values: pd.Series) -> pa.Array:
    return pa.array(values.to_numpy(object), pa.string(), from_pandas=True)


def check_rows(
    check: TableCheck,
    rules: list[ColumnRule],
    now: int,
    key: str | None,
    references: dict[str, Reference],
) -> None:
    """Every rule on ``check``'s rows (all rows of their keys, when the table has a key):
    the schema's column rules, then duplicate keys (the first row seen keeps the key),
    ids unknown to ``references`` and watch time longer than the video."""
    check.apply(rules, now)
    if key:
        seen = check.values[key].where(pd.Series(check.accepted))
        check.reject(
            seen.notna() & seen.duplicated(keep="first"),
            "duplicate_key",
            key,
            f"{key} seen in an earlier row",
        )
    for name, column, reason in (
        (USERS, USER_ID, "unknown_user_id"),
        (ITEMS, ITEM_ID, "unknown_item_id"),
    ):
        if name in references and column in check.values:
            check.reject(~references[name].knows(check.values[column]), reason, column)
    if check.table == IMPRESSIONS and ITEMS in references:
        duration = references[ITEMS].duration(check.values[ITEM_ID])
        if duration is not None:
            too_long = check.values[WATCH_SECONDS].to_numpy() > duration
            check.reject(too_long, "watch_exceeds_duration", WATCH_SECONDS)


# Columns a spilled raw row carries besides its own: where it came from.
_FILE, _ROW, _UNDECODABLE = "__recsys_file", "__recsys_row", "__recsys_undecodable"


def checked_batches(
    data_root: str,
    name: str,
    schema_dir: str,
    config: IngestConfig,
    now: int,
    references: dict[str, Reference],
    quarantine: "Quarantine",
    batch_rows: int,
    keep=None,
):
    """Table ``name``'s accepted rows, typed, a batch at a time, as (rows, how many were
    accepted); ``keep(values)`` (the checked columns' typed values) selects the rows
    worth typing and returning, when the caller keeps only some. Every rejected row
    goes to ``quarantine`` with its reason. Rows are read in batches of
    ``batch_rows``; a table with a key is first spread over partitions by the
    key's hash (``KeyPartitions``, on local disk) so that each partition holds every
    row of its keys and about ``batch_rows`` rows: memory follows the batch size,
    not the table. Reading order decides which of two rows with one key is first."""
    table = RAW_TABLES[name]
    rules = column_rules(load_schema(table.schema, schema_dir), table.environment)
    files = find_table(data_root, name)
    # Ids are known in the tables the models learn from. The serving log is exempt:
    # serving meets users and items newer than the last table dump, and those
    # requests belong in its statistics.
    known = {} if name == SERVING_LOG else references

    def check(raws: list[RawFile]) -> tuple[pd.DataFrame, int]:
        checked = TableCheck(name, raws)
        check_rows(checked, rules, now, table.key, known)
        for note in checked.notes:
            quarantine.note(note)
        quarantine.add(checked)
        selected = None if keep is None else np.asarray(keep(checked.values), dtype=bool)
        return checked.typed(selected), int(checked.accepted.sum())

    if not table.key:
        for path in files:
            for raw in iter_raw_file(path, config.input_encoding, batch_rows):
                quarantine.add_ragged(name, raw)
                yield check([raw])
        return
    estimated = sum(_estimated_rows(path) for path in files)
    with KeyPartitions(math.ceil(estimated / batch_rows)) as partitions:
        for index, path in enumerate(files):
            for raw in iter_raw_file(path, config.input_encoding, batch_rows):
                quarantine.add_ragged(name, raw)
                if table.key not in raw.table.column_names:
                    yield check([raw])  # the missing column is reported by the rules
                    continue
                spilled = (
                    raw.table.append_column(_FILE, pa.array(np.full(raw.table.num_rows, index)))
                    .append_column(_ROW, pa.array(raw.rows))
                    .append_column(_UNDECODABLE, pa.array(raw.undecodable))
                )
                keys = ids_as_text(raw.table.column(table.key).to_pandas()).fillna("")
                partitions.add(spilled, pa.array(keys.to_numpy(object), pa.string()))
        for tables in partitions:
            # In file order, so the first row of a key is the first one read.
            parts = sorted(
                (pair for spilled in tables for pair in _by_file(spilled)), key=lambda p: p[0]
            )
            raws = [
                RawFile(
                    files[index],
                    part.drop([_FILE, _ROW, _UNDECODABLE]),
                    part.column(_UNDECODABLE).to_numpy(),
                    part.column(_ROW).to_numpy(),
                )
                for index, part in parts
            ]
            if raws:
                yield check(raws)


def _by_file(table: pa.Table):
    """(file index, rows of that file) of a spilled table, in file order."""
    files = table.column(_FILE).to_numpy()
    for index in np.unique(files):
        yield int(index), table.filter(pa.array(files == index))


def _estimated_rows(path: str) -> int:
    """Rows of a raw file: exact for Parquet (its footer), for CSV its size over a
    conservative 40 bytes per row."""
    if path.endswith(".parquet"):
        return storage.parquet_rows(path)
    return storage.size(path) // 40 * (4 if path.endswith(".gz") else 1)


class Quarantine:
    """Rejected rows with their reasons, written as they are found (a dataset), and
    counted per table, reason and column, with a few example rows of each."""

    def __init__(self, directory: str):
        self.directory = directory
        self.writer = DatasetWriter(directory, schema=QUARANTINE_SCHEMA)
        self.per_table: dict[str, int] = {}
        self.per_reason: dict[str, int] = {}
        self.reasons: dict[str, dict[tuple[str, str], int]] = {}  # table -> (reason, column)
        self.examples: dict[str, pd.DataFrame] = {}  # table -> two rows per (reason, column)
        self._notes: set[str] = set()

    def note(self, message: str) -> None:
        if message not in self._notes:
            self._notes.add(message)
            log("ingest", message)

    def add(self, check: TableCheck) -> None:
        self._write(check.table, check.quarantined())

    def add_ragged(self, table: str, raw: RawFile) -> None:
        if raw.ragged:
            self._write(table, ragged_rows(table, raw))

    def _write(self, table: str, rows: pd.DataFrame) -> None:
        if rows.empty:
            return
        self.writer.write(pa.Table.from_pandas(rows, QUARANTINE_SCHEMA, preserve_index=False))
        self.per_table[table] = self.per_table.get(table, 0) + len(rows)
        for reason, count in rows["reason"].value_counts().items():
            self.per_reason[reason] = self.per_reason.get(reason, 0) + int(count)
        mine = self.reasons.setdefault(table, {})
        for (reason, column), count in rows.groupby(["reason", "column"]).size().items():
            mine[reason, column] = mine.get((reason, column), 0) + int(count)
        kept = pd.concat([self.examples.get(table), rows.groupby(["reason", "column"]).head(2)])
        self.examples[table] = kept.groupby(["reason", "column"]).head(2)

    def close(self) -> int:
        return self.writer.close()


def ingest(
    data_root: str,
    outputs: dict[str, str],
    config: IngestConfig = IngestConfig(),
    schema_dir: str = "",
    now: int | None = None,
    batch_rows: int = BATCH_ROWS,
) -> dict:
    """Check every raw table, quarantine bad rows, apply the window, write each dataset.

    ``outputs`` maps the datasets of ``contracts.INGESTED`` and ``quarantine`` to
    directories. Returns row counts (read = accepted + quarantined, per table)
    and the resolved window. Raises DataError, after writing the quarantine,
    when a table's reject rate is above ``config.max_reject_rate``. Tables stream
    through in batches of ``batch_rows`` rows (``checked_batches``); what is
    held whole is the users' and items' ids (and durations) and, for a derived
    feature view, one row of sums per entity and day with events.
    """
    now = int(time.time()) if now is None else now
    load_registry(schema_dir)  # a registry that disagrees with the schemas stops the run here
    counts: dict[str, int] = {}
    # Tables the data does not bring and its schemas allow to derive (DERIVABLE).
    derived = [
        name for name in DERIVABLE if not _present(data_root, name) and derivable(name, schema_dir)
    ]
    quarantine = Quarantine(outputs[QUARANTINE])
    references: dict[str, Reference] = {}
    accepted: dict[str, int] = {}  # rows accepted per table
    window: Window | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="recsys-ingest-") as scratch:
            for name, table in RAW_TABLES.items():
                if name in derived or (table.optional and not _present(data_root, name)):
                    counts[f"{name}_read"] = 0
                    continue
                # The references as they stand (a table is not checked against itself).
                batches = checked_batches(
                    data_root,
                    name,
                    schema_dir,
                    config,
                    now,
                    dict(references),
                    quarantine,
                    batch_rows,
                    _kept_rows(name, window),
                )
                if name in (USERS, ITEMS):
                    references[name] = Reference(table.key)
                    with DatasetWriter(outputs[name]) as writer:
                        for rows, _ in batches:
                            references[name].add(rows)
                            writer.write(rows)
                    counts[name] = accepted[name] = writer.rows
                elif name == IMPRESSIONS:
                    accepted_dir = os.path.join(scratch, IMPRESSIONS)
                    latest = _accept_events(batches, accepted_dir, counts)
                    accepted[name] = counts[f"{IMPRESSIONS}_accepted"]
                    _finish_table(name, data_root, counts, accepted, quarantine, config, outputs)
                    window = resolve_window(
                        config.as_of, config.lookback_days, config.eval_days, latest
                    )
                    entity_ids = _split(
                        accepted_dir, window, outputs, batch_rows, counts, derived, schema_dir
                    )
                    continue
                else:  # a feature table known by as_of, or the serving log's span
                    accepted[name], counts[name] = _write_kept(batches, outputs[name])
                    if name in contracts.FEATURE_VIEWS:
                        counts[f"{name}_after_as_of"] = accepted[name] - counts[name]
                _finish_table(name, data_root, counts, accepted, quarantine, config, outputs)
            for name in (USERS, ITEMS):
                if name in derived:
                    counts[name] = _derive_entities(
                        name, entity_ids[name].sorted(), outputs, schema_dir
                    )
                    counts[f"{name}_derived"] = 1
            if SERVING_LOG not in counts:
                no_log = pd.DataFrame({EVENT_ID: np.array([], dtype=object)})
                write_dataset(no_log, outputs[SERVING_LOG])
                counts[SERVING_LOG] = 0
    finally:
        counts["quarantined"] = quarantine.close()
    counts.update({f"quarantined_{reason}": n for reason, n in quarantine.per_reason.items()})
    counts.update(
        as_of=window.as_of,
        window_start=window.start,
        eval_start=window.eval_start,
        span_start=window.span_start,
    )
    return counts


def _finish_table(name, data_root, counts, accepted, quarantine: Quarantine, config, outputs):
    """Row accounting and the reject-rate limit of a table just checked."""
    quarantined = quarantine.per_table.get(name, 0)
    read = accepted.get(name, 0) + quarantined
    counts[f"{name}_read"], counts[f"{name}_quarantined"] = read, quarantined
    if read == 0 and not RAW_TABLES[name].optional:
        raise DataError(
            f"table '{name}' has no rows: {find_table(data_root, name)} hold(s) a header "
            "at most. Export the data with its rows."
        )
    if quarantined > config.max_reject_rate * read:
        raise DataError(
            reject_rate_error(
                name,
                read,
                quarantined,
                quarantine.reasons.get(name, {}),
                quarantine.examples.get(name),
                config.max_reject_rate,
                outputs[QUARANTINE],
            )
        )


def _accept_events(batches, directory: str, counts: dict) -> pd.Series:
    """Accepted impressions to ``directory`` (local scratch); returns the newest
    event time (for the default as_of) as a one-value series, empty without rows."""
    latest = None
    with DatasetWriter(directory) as writer:
        for accepted, _ in batches:
            writer.write(accepted)
            if len(accepted):
                newest = int(accepted[EVENT_TS].max())
                latest = newest if latest is None else max(latest, newest)
    counts[f"{IMPRESSIONS}_accepted"] = writer.rows
    return pd.Series([] if latest is None else [latest], dtype=np.int64)


def _split(accepted_dir, window, outputs, batch_rows, counts, derived, schema_dir) -> dict:
    """The accepted impressions split by time into train and eval (``split_events``,
    batch by batch), the label checked for variation, and the derived feature views
    from the daily sums of the events before as_of. Returns the ids seen before
    as_of of each derived entity table (users, items)."""
    sums = {
        name: DailySums(name, phase=window.start % DAY)
        for name in derived
        if name in contracts.FEATURE_VIEWS
    }
    ids = {name: DistinctIds() for name in sums}
    entity_ids = {name: DistinctIds() for name in derived if name in (USERS, ITEMS)}
    totals = {
        "impressions_accepted": 0,
        "impressions_before_window": 0,
        "impressions_at_or_after_as_of": 0,
        "train_events": 0,
        "eval_events": 0,
    }
    labels = {"train": np.zeros(2, dtype=np.int64)}
    with (
        DatasetWriter(outputs[contracts.TRAIN_EVENTS]) as train_writer,
        DatasetWriter(outputs[contracts.EVAL_EVENTS]) as eval_writer,
    ):
        for batch in iter_dataset(accepted_dir, batch_rows):
            events = batch.to_pandas()
            train, evaluation, split = split_events(events, window, require_both=False)
            for name, value in split.items():
                totals[name] += value
            train_writer.write(train)
            eval_writer.write(evaluation)
            labels["train"] += np.bincount(
                train[CLICKED].to_numpy(np.int64).clip(0, 1), minlength=2
            )
            since = events[
                (events[EVENT_TS] >= window.start - TRAILING_DAYS * DAY)
                & (events[EVENT_TS] < window.as_of)
            ]
            for name, daily in sums.items():
                daily.add(since)
                ids[name].add(since[contracts.FEATURE_VIEWS[name]])
            past = events[events[EVENT_TS] < window.as_of]
            for name, seen in entity_ids.items():
                seen.add(past[RAW_TABLES[name].key])
    counts.update(totals)
    if totals["train_events"] == 0 or totals["eval_events"] == 0:
        raise DataError(
            f"window {window.describe()} leaves {totals['train_events']} train and "
            f"{totals['eval_events']} eval events. Choose as_of/lookback_days/eval_days "
            "inside the data (the impressions' time range is in the log above)."
        )
    _check_label_varies(labels["train"], window)
    for name, daily in sums.items():
        view = view_changes(daily, ids[name].sorted(), window.start, window.lookback_days + 1)
        columns = [f.name for f in load_schema(RAW_TABLES[name].schema, schema_dir).feature]
        table = pa.Table.from_pandas(view[[c for c in columns if c in view]], preserve_index=False)
        write_dataset(
            table.replace_schema_metadata({**table.schema.metadata, **contracts.CHANGE_ROWS}),
            outputs[name],
        )
        counts[name] = len(view)
        counts[f"{name}_after_as_of"] = 0
        counts[f"{name}_derived"] = 1
        log(
            "ingest",
            f"{name}: no table under the data root; derived from the interactions before "
            f"as_of ({DERIVABLE[name]}): {len(view)} rows where a value changes",
        )
    return entity_ids


class DistinctIds:
    """The distinct ids of a column seen batch by batch (kept as one sorted array)."""

    def __init__(self):
        self._parts: list[np.ndarray] = []
        self._size = 0

    def add(self, values) -> None:
        part = pd.unique(np.asarray(values, dtype=object))
        self._parts.append(part)
        self._size += len(part)
        if len(self._parts) > 8:
            self._parts = [self.sorted()]
            self._size = len(self._parts[0])

    def sorted(self) -> np.ndarray:
        if not self._parts:
            return np.array([], dtype=object)
        return np.sort(pd.unique(np.concatenate(self._parts)))


def _check_label_varies(train_labels: np.ndarray, window: Window) -> None:
    """A training window whose label never varies cannot teach engagement: block it."""
    negatives, positives = (int(n) for n in train_labels)
    if negatives and positives:
        return
    which = "engaged with (clicked = 1)" if positives else "not engaged with (clicked = 0)"
    raise DataError(
        f"every one of the {negatives + positives} training impressions ({window.describe()}) "
        f"was {which}: the label is constant, so no model can learn engagement from it. "
        "A log of engagements alone needs the impressions that were not engaged with "
        "(README, 'Bring your own data'); a log of impressions needs its clicks. Check "
        "the export's label column (recsys import --label), or move the window."
    )


def _kept_rows(name: str, window: "Window | None"):
    """Which accepted rows of table ``name`` ingest keeps (None: all): of a feature
    table, those known by as_of (later ones would leak the future); of the serving
    log, the run's span (its newest day). The rest is checked, counted and dropped."""
    if name in contracts.FEATURE_VIEWS:

        def known(values: pd.DataFrame) -> np.ndarray:
            keep = (values[FEATURE_TS] <= window.as_of).to_numpy()
            if CREATED_TS in values:
                keep &= (values[CREATED_TS] <= window.as_of).to_numpy()
            return keep

        return known
    if name == SERVING_LOG:
        return lambda values: (
            (values[EVENT_TS] >= window.span_start) & (values[EVENT_TS] < window.as_of)
        ).to_numpy()
    return None


def _write_kept(batches, directory: str) -> tuple[int, int]:
    """The kept rows of ``checked_batches`` written to ``directory``: (rows accepted,
    rows kept)."""
    accepted = 0
    with DatasetWriter(directory) as writer:
        for rows, count in batches:
            accepted += count
            writer.write(rows)
    return accepted, writer.rows


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


def _derive_entities(name: str, ids: np.ndarray, outputs: dict, schema_dir: str) -> int:
    """An entity table the data does not bring: the ids seen in the interactions
    before as_of, with the columns of its schema."""
    key = RAW_TABLES[name].key
    columns = [f.name for f in load_schema(RAW_TABLES[name].schema, schema_dir).feature]
    table = pd.DataFrame({key: ids.astype(str)})
    write_dataset(table[[c for c in columns if c in table]], outputs[name])
    log(
        "ingest",
        f"{name}: no table under the data root; derived from the interactions "
        f"before as_of ({DERIVABLE[name]}): {len(table)} rows",
    )
    return len(table)


def _present(data_root: str, name: str) -> bool:
    try:
        find_table(data_root, name)
    except DataError:
        return False
    return True
