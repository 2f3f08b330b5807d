"""Features, part 1: point-in-time joins of the events into training examples.

Each event gets, per feature view, the newest row with ``feature_ts <= event_ts``
(Feast's rules, ``beam_asof``: optional ttl, ties to the latest ``created_ts``,
optionally ``created_ts <= event_ts``), the user's engagement history strictly
before it, the static attributes of its user and item, and the derived features
(``recsys.core.derived``). Nothing written after an event reaches its example;
every event yields exactly one example; events without a feature row get the
registry's defaults and the view's ``*_missing`` flag. Which columns come from
where is the feature registry's ``source`` of each feature.

The serving snapshots (each user's and item's features at ``as_of``) come from the
same lookups in-process. Validate checks the examples before the transform
(``transform.py``) analyzes them.
"""

import functools
import json
import math
import os
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.components.features.beam_asof import (
    AsOfJoin,
    CheckRowCounts,
    FeatureView,
    HistoryJoin,
    HistoryLookup,
    HistoryView,
    SharedRows,
    ViewLookup,
)
from recsys.components.features.config import JoinConfig
from recsys.core import contracts, storage
from recsys.core.beam_io import (
    ReadDataset,
    ReadDatasets,
    as_table,
    concat_tables,
    on_direct_runner,
    pipeline_options,
)
from recsys.core.contracts import CLICKED, EVENT_TS, ITEM_ID, USER_ID
from recsys.core.derived import DAY, DERIVED, derive
from recsys.core.features import HISTORY_COLUMNS, FeatureRegistry, load_registry
from recsys.core.limits import BATCH_ROWS
from recsys.core.progress import log
from recsys.core.schemas import SCHEMA_DTYPES, is_list, load_schema
from recsys.core.spill import KeyPartitions, stable_buckets
from recsys.core.tables import (
    DataError,
    DatasetWriter,
    column_sums,
    dataset_pattern,
    dataset_rows,
    iter_dataset,
    read_dataset,
    read_dataset_table,
)

VIEW_OPTIONS = {"ttl_days", "created_before_event", "defaults", "join"}
JOIN_STRATEGIES = ("auto", "broadcast", "bucket")
# "auto" broadcasts a feature table up to this many rows (an index of ~50 bytes a
# row per worker), and buckets both sides by key above it.
BROADCAST_MAX_ROWS = 5_000_000
# The engagement history is broadcast up to this many engagements: 5 narrow columns,
# about 38 bytes a row in Arrow (5.9 million at x100: 225 MB; docs/benchmarks.md).
# Above it, events and engagements meet in hash buckets by user, which the
# DirectRunner holds in memory whole (x100 bucketed: 13.8 GiB); a distributed runner
# holds each worker's buckets.
HISTORY_BROADCAST_MAX_ROWS = 20_000_000
# Rows per Arrow batch read into the join: large, so each step works on whole columns.
JOIN_BATCH_ROWS = 200_000
# The users and items tables, by the key the join attaches them on.
ENTITY_TABLES = {"users": USER_ID, "items": ITEM_ID}


def feature_views(registry: FeatureRegistry) -> dict[str, FeatureView]:
    """The feature views with the registry's columns and defaults."""
    return {
        view: FeatureView(
            view,
            key,
            tuple(f.name for f in registry.select(source=view)),
            defaults={f.name: f.default for f in registry.select(source=view)},
        )
        for view, key in contracts.FEATURE_VIEWS.items()
    }


def parse_feature_views(
    config: str | dict, registry: FeatureRegistry
) -> tuple[dict[str, FeatureView], dict]:
    """``({view name: FeatureView}, {view name: join strategy})`` from the JSON option
    ``{"user_features": {"ttl_days": 7, "created_before_event": true,
    "defaults": {"user_clicks_7d": 0}, "join": "auto"}}``; unknown names are errors."""
    options = json.loads(config) if isinstance(config, str) else dict(config)
    if not isinstance(options, dict):
        raise ValueError(f"feature_views must be a JSON object, got {config!r}")
    views = feature_views(registry)
    strategies = {name: "auto" for name in views}
    for name, view_options in options.items():
        if name not in views:
            raise ValueError(f"feature_views: unknown view '{name}'; the views are {sorted(views)}")
        if not isinstance(view_options, dict):
            raise ValueError(
                f"feature_views['{name}'] must be an object of options "
                f"{sorted(VIEW_OPTIONS)}, got {view_options!r}"
            )
        unknown = set(view_options) - VIEW_OPTIONS
        if unknown:
            raise ValueError(
                f"feature_views['{name}']: unknown option(s) {sorted(unknown)}; "
                f"allowed: {sorted(VIEW_OPTIONS)}"
            )
        view = views[name]
        defaults = dict(view_options.get("defaults", {}))
        if set(defaults) - set(view.columns):
            raise ValueError(
                f"feature_views['{name}']: defaults for unknown column(s) "
                f"{sorted(set(defaults) - set(view.columns))}; the view's "
                f"columns are {list(view.columns)}"
            )
        ttl_days = view_options.get("ttl_days")
        if ttl_days is not None and not ttl_days > 0:
            raise ValueError(
                f"feature_views['{name}']: ttl_days must be positive, got {ttl_days!r}"
            )
        strategies[name] = view_options.get("join", "auto")
        if strategies[name] not in JOIN_STRATEGIES:
            raise ValueError(
                f"feature_views['{name}']: join must be one of "
                f"{JOIN_STRATEGIES}, got {strategies[name]!r}"
            )
        views[name] = FeatureView(
            name,
            view.key,
            view.columns,
            ttl_seconds=None if ttl_days is None else int(round(ttl_days * DAY)),
            created_before_event=bool(view_options.get("created_before_event", False)),
            defaults={**view.defaults, **defaults},
        )
    return views, strategies


def attributes(registry: FeatureRegistry, table: str) -> list[str]:
    """The columns attached from the users or items table: the registry's features of
    that source, and what the derived features need from it (the upload time)."""
    needed = [
        column
        for name in registry.features
        if registry[name].source == "derived"
        for column in DERIVED[name][0].get(table, ())
    ]
    return [f.name for f in registry.select(source=table)] + list(dict.fromkeys(needed))


@dataclass
class Examples:
    """How a joined table becomes examples: the static attributes, the derived
    features, and the columns and types of the examples schema."""

    registry: FeatureRegistry
    schema_dir: str
    users: pd.DataFrame
    items: pd.DataFrame

    def finish(self, joined: pa.Table) -> pa.Table:
        """Joined events plus static attributes and derived features: the examples,
        typed and ordered as the examples schema declares them."""
        examples = self.attach(joined.to_pandas())
        return self.conform(examples, examples[EVENT_TS].to_numpy())

    def attach(self, frame: pd.DataFrame) -> pd.DataFrame:
        for table, key in ENTITY_TABLES.items():
            if key in frame.columns:
                frame = _attach_static(
                    frame,
                    getattr(self, table),
                    key,
                    attributes(self.registry, table),
                    self.registry,
                )
        return frame

    def conform(self, frame: pd.DataFrame, at: np.ndarray) -> pa.Table:
        """``frame`` with the derived features at ``at`` that its columns allow, then
        cast to the examples schema (only the schema's columns, in its order)."""
        for feature in self.registry.select(source="derived"):
            inputs = [c for table in DERIVED[feature.name][0].values() for c in table]
            if all(column in frame.columns for column in inputs):
                frame[feature.name] = derive(
                    feature.name, {c: frame[c].to_numpy() for c in inputs}, at
                )
        return conform_to_schema(frame, self.schema_dir)


def _attach_static(
    frame: pd.DataFrame,
    table: pd.DataFrame,
    key: str,
    columns: list[str],
    registry: FeatureRegistry,
) -> pd.DataFrame:
    """Static attributes of each row's entity (the tables are de-duplicated by ingest);
    an entity missing from the table gets the registry's defaults."""
    joined = frame.merge(table[[key, *columns]], on=key, how="left", validate="many_to_one")
    for column in columns:
        joined[column] = joined[column].fillna(registry.default(column))
    return joined


def examples_arrow_schema(schema_dir: str = "") -> pa.Schema:
    """The Parquet schema of the examples: flat columns, lists for variable-length ones."""
    to_arrow = {"string": pa.string(), "int64": pa.int64(), "float32": pa.float32()}
    fields = []
    for feature in load_schema(contracts.EXAMPLES_SCHEMA, schema_dir).feature:
        arrow_type = to_arrow[SCHEMA_DTYPES[feature.type]]
        fields.append(
            pa.field(feature.name, pa.list_(arrow_type) if is_list(feature) else arrow_type)
        )
    return pa.schema(fields)


def conform_to_schema(frame: pd.DataFrame, schema_dir: str = "") -> pa.Table:
    """The columns of the examples schema present in ``frame``, in its order and types."""
    schema = examples_arrow_schema(schema_dir)
    present = [name for name in schema.names if name in frame.columns]
    out = frame[present].copy()
    for name in present:
        kind = schema.field(name).type
        if pa.types.is_list(kind):
            continue  # lists stay lists
        if pa.types.is_floating(kind):
            out[name] = out[name].astype(np.float32)
        elif pa.types.is_integer(kind):
            out[name] = out[name].astype(np.int64)
        else:
            out[name] = out[name].astype(str)
    return pa.Table.from_pandas(
        out, schema=pa.schema([schema.field(n) for n in present]), preserve_index=False
    )


@dataclass(frozen=True)
class Watched:
    """What the user snapshot's watched items hold (JoinConfig's watched_*)."""

    horizon_seconds: int
    max_items: int
    from_impressions: bool

    @classmethod
    def of(cls, config: JoinConfig) -> "Watched":
        return cls(
            config.watched_horizon_days * DAY,
            config.watched_max_items,
            config.watched_from == "impressions",
        )


def watched_items(
    rows: pa.Table | None, keys: np.ndarray, at: int, watched: Watched
) -> pa.ListArray:
    """Per key of ``keys`` (in order): the distinct items of its ``rows`` (key, event_ts,
    item) in [at - horizon, at), newest first, at most ``max_items``."""
    frame = pd.DataFrame({USER_ID: [], ITEM_ID: [], EVENT_TS: []})
    if rows is not None and rows.num_rows:
        ts = rows.column(EVENT_TS).to_numpy()
        inside = pa.array((ts < at) & (ts >= at - watched.horizon_seconds))
        frame = rows.filter(inside).select([USER_ID, ITEM_ID, EVENT_TS]).to_pandas()
    # Newest first; each item once, at its newest engagement.
    frame = frame.iloc[::-1].sort_values(EVENT_TS, ascending=False, kind="stable")
    frame = frame.drop_duplicates([USER_ID, ITEM_ID])
    frame = frame[frame.groupby(USER_ID, sort=False).cumcount().to_numpy() < watched.max_items]
    position = pd.Index(keys).get_indexer(frame[USER_ID])
    order = np.argsort(position, kind="stable")  # by key, newest first within each
    lengths = np.bincount(position[position >= 0], minlength=len(keys))
    items = pa.array(
        frame[ITEM_ID].to_numpy(dtype=object)[order][position[order] >= 0], pa.string()
    )
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, items)


def write_snapshot(
    examples: Examples,
    side: str,
    at: int,
    view: FeatureView,
    feature_rows: str,
    output: str,
    batch_rows: int,
    history: HistoryView | None = None,
    event_datasets: tuple[str, ...] = (),
    watched: Watched | None = None,
) -> int:
    """Every user's (``side`` "user") or item's ("item") features at ``at``, with the
    history for users: what serving looks up, by the same code as the training join
    (``ViewLookup``, ``HistoryLookup``); with ``watched``, also each user's watched
    items (``contracts.WATCHED_ITEMS``). The entities, their view's rows and their
    engagements are spread over hash partitions of their key (``KeyPartitions``) of
    about ``batch_rows`` rows each, and each partition is looked up and written on
    its own: memory follows the batch size. Returns the rows written."""
    registry = examples.registry
    entities = examples.users if side == "user" else examples.items
    sizes = [dataset_rows(feature_rows), len(entities)]
    sizes += [dataset_rows(directory) for directory in event_datasets]
    parts = max(1, math.ceil(max(sizes) / batch_rows))
    columns = registry.side(side)
    schema = snapshot_schema(examples.schema_dir, columns)
    if watched is not None:
        schema = schema.append(pa.field(contracts.WATCHED_ITEMS, pa.list_(pa.string())))
    with (
        KeyPartitions(parts) as features,
        KeyPartitions(parts) as engagements,
        KeyPartitions(parts) as impressions,
        DatasetWriter(output, schema=schema) as writer,
    ):
        for batch in iter_dataset(feature_rows, batch_rows):
            features.add(pa.Table.from_batches([batch]), batch.column(view.key))
        for directory in event_datasets:
            for batch in iter_dataset(directory, batch_rows, _history_columns(history)):
                clicked = _engagements(batch, history)
                engagements.add(clicked, clicked.column(history.key))
                if watched is not None and watched.from_impressions:
                    seen = as_table(batch).select([USER_ID, EVENT_TS, ITEM_ID])
                    impressions.add(seen, seen.column(USER_ID))
        keys = entities[view.key].astype(str).to_numpy(dtype=object)
        bucket = stable_buckets(pa.array(keys, pa.string()), parts) if parts > 1 else None
        # Without impressions partitions iterate as empty lists: one per partition.
        pairs = zip(features, engagements, impressions, strict=True)
        for part, (feature_tables, engagement_tables, impression_tables) in enumerate(pairs):
            mine = entities if bucket is None else entities[bucket == part]
            if mine.empty:
                continue
            probe = pa.table(
                {
                    view.key: pa.array(mine[view.key].astype(str).to_numpy(object), pa.string()),
                    EVENT_TS: np.full(len(mine), at, dtype=np.int64),
                }
            )
            rows = ViewLookup(view, concat_tables(feature_tables) if feature_tables else None)
            joined = rows.join(probe)
            if history is not None:
                history_rows = concat_tables(engagement_tables) if engagement_tables else None
                joined = HistoryLookup(history, history_rows).join(joined)
            frame = examples.attach(joined.to_pandas())
            at_column = np.full(len(frame), at, dtype=np.int64)
            table = examples.conform(frame, at_column).select(columns)
            if watched is not None:
                consumed = impression_tables if watched.from_impressions else engagement_tables
                consumed = concat_tables(consumed) if consumed else None
                keys_here = mine[view.key].astype(str).to_numpy(dtype=object)
                table = table.append_column(
                    contracts.WATCHED_ITEMS, watched_items(consumed, keys_here, at, watched)
                )
            writer.write(table)
    return writer.rows


def snapshot_schema(schema_dir: str, columns: list[str]) -> pa.Schema:
    schema = examples_arrow_schema(schema_dir)
    return pa.schema([schema.field(name) for name in columns])


def _history_columns(history: HistoryView) -> list[str]:
    """The event columns a history is made of (and the label that picks them)."""
    return [history.key, EVENT_TS, history.item, history.value, CLICKED]


def engagement_rows(directories) -> int:
    """Clicked events in the event datasets, reading the label column a batch at a time."""
    return sum(
        int(pc.sum(batch.column(CLICKED)).as_py() or 0)
        for directory in directories
        for batch in iter_dataset(directory, 1_000_000, [CLICKED])
    )


def join_features(
    inputs: dict[str, str],
    as_of: int,
    schema_dir: str,
    outputs: dict[str, str],
    config: JoinConfig = JoinConfig(),
    beam_pipeline_args: str = "[]",
    eval_start: int | None = None,
    batch_rows: int = BATCH_ROWS,
) -> dict:
    """Point-in-time joins into train/eval examples (one Beam pipeline), and the
    serving snapshots at ``as_of``. ``inputs``/``outputs`` map dataset names
    (``contracts``) to directories.

    With ``eval_start`` and an ``eval_item_snapshot`` output, also the item rows as
    of the start of the eval split: what the funnel evaluation ranks eval users'
    candidates with (the ``as_of`` snapshot holds the eval window's statistics)."""
    if contracts.EVAL_ITEM_SNAPSHOT in outputs and eval_start is None:
        raise ValueError("join_features: an eval_item_snapshot output needs eval_start")
    registry = load_registry(schema_dir)
    views, strategies = parse_feature_views(config.feature_views, registry)
    history = HistoryView(length=_checked_history_length(config.history_length, schema_dir))
    for name, view in views.items():
        schema = storage.parquet_schema(storage.glob(dataset_pattern(inputs[name]))[0])
        if view.created_before_event and contracts.CREATED_TS not in schema.names:
            raise DataError(
                f"feature_views['{name}'] sets created_before_event, but the "
                f"{name} table has no created_ts column (found {schema.names}). Add "
                "when each row was written, or drop the option."
            )
        derived = (schema.metadata or {}).items() >= contracts.CHANGE_ROWS.items()
        if view.ttl_seconds is not None and derived:
            raise DataError(
                f"feature_views['{name}'] sets ttl_days, but the data brings no {name} "
                "table: ingest derived it from the interactions and keeps the rows where "
                "a value changes, each current until the next, so a ttl would expire "
                "values that are still right. Drop ttl_days for this view (it is for "
                "feature tables you bring)."
            )
    broadcast = {
        name: strategies[name] == "broadcast"
        or (strategies[name] == "auto" and dataset_rows(inputs[name]) <= BROADCAST_MAX_ROWS)
        for name in views
    }
    splits = {
        "train": (contracts.TRAIN_EVENTS, contracts.TRAIN_EXAMPLES),
        "eval": (contracts.EVAL_EVENTS, contracts.EVAL_EXAMPLES),
    }
    # The history's right side is the clicked events: broadcast when they are few enough.
    engagements_count = engagement_rows(inputs[events] for events, _ in splits.values())
    broadcast_history = engagements_count <= HISTORY_BROADCAST_MAX_ROWS
    bucketed = [name for name in views if not broadcast[name]]
    bucketed += [] if broadcast_history else [f"the history ({engagements_count:,} engagements)"]
    if bucketed and on_direct_runner(beam_pipeline_args):
        log(
            "features/join",
            f"joining {', '.join(bucketed)} in hash buckets (above the broadcast limits: "
            f"{BROADCAST_MAX_ROWS:,} feature rows, {HISTORY_BROADCAST_MAX_ROWS:,} "
            "engagements). Beam's DirectRunner holds those buckets, every event of the "
            "window, in this one process: for windows this large, pass a distributed "
            "runner in beam_pipeline_args (README, 'Dataflow').",
        )
    examples = Examples(
        registry, schema_dir, read_dataset(inputs["users"]), read_dataset(inputs["items"])
    )
    arrow_schema = examples_arrow_schema(schema_dir)

    with beam.Pipeline(options=pipeline_options(beam_pipeline_args)) as pipeline:
        # Broadcast: each worker reads a view's rows itself, once, for both splits.
        # Bucketed: the view is read into the pipeline and shuffled with the events.
        shared_views = {
            name: SharedRows(functools.partial(read_rows, inputs[name]))
            for name in views
            if broadcast[name]
        }
        bucketed_views = {
            name: pipeline | f"Read[{name}]" >> ReadDataset(inputs[name], JOIN_BATCH_ROWS)
            for name in views
            if not broadcast[name]
        }
        events = {
            split: pipeline | f"Read[{split}]" >> ReadDataset(inputs[dataset], JOIN_BATCH_ROWS)
            for split, (dataset, _) in splits.items()
        }
        # The engagements, the same two ways; bucketed, they are read apart from the
        # events (their columns only): from the events' own read, the DirectRunner
        # would hold every event until the buckets are full.
        event_directories = [inputs[dataset] for dataset, _ in splits.values()]
        shared_engagements = (
            SharedRows(functools.partial(read_engagements, event_directories, history))
            if broadcast_history
            else None
        )
        bucketed_engagements = (
            {}
            if broadcast_history
            else {
                "features": pipeline
                | "ReadEngagements"
                >> ReadDatasets(
                    {split: inputs[dataset] for split, (dataset, _) in splits.items()},
                    JOIN_BATCH_ROWS,
                    _history_columns(history),
                )
                | "Engagements"
                >> beam.Map(lambda named: _engagements(named[1], history)).with_output_types(
                    pa.Table
                )
            }
        )
        for split, split_events in events.items():
            joined = split_events
            for name, view in views.items():
                rows = {"features": bucketed_views[name]} if name in bucketed_views else {}
                joined = {"events": joined, **rows} | f"Join[{split}][{name}]" >> AsOfJoin(
                    view, shared_rows=shared_views.get(name)
                )
            joined = {"events": joined, **bucketed_engagements} | f"History[{split}]" >> (
                HistoryJoin(history, shared_rows=shared_engagements)
            )
            finished = joined | f"Finish[{split}]" >> beam.Map(examples.finish).with_output_types(
                pa.Table
            )
            _ = {
                "input": split_events,
                "output": finished,
            } | f"CheckCounts[{split}]" >> CheckRowCounts(f"features/join ({split})")
            _ = finished | f"Write[{split}]" >> beam.io.WriteToParquetBatched(
                os.path.join(outputs[splits[split][1]], "part"),
                schema=arrow_schema,
                file_name_suffix=".parquet",
            )

    counts = {}
    for split, (_, dataset) in splits.items():
        counts[dataset] = dataset_rows(outputs[dataset])
        flags = column_sums(outputs[dataset], [view.missing_flag for view in views.values()])
        for view in views.values():
            counts[f"{split}_{view.missing_flag}"] = int(flags[view.missing_flag])
    if counts[contracts.TRAIN_EXAMPLES] == 0:
        raise DataError("features: no training examples to analyze")
    event_datasets = tuple(inputs[events] for events, _ in splits.values())
    counts["snapshot_users"] = write_snapshot(
        examples,
        "user",
        as_of,
        views["user_features"],
        inputs["user_features"],
        outputs[contracts.USER_SNAPSHOT],
        batch_rows,
        history,
        event_datasets,
        Watched.of(config),
    )
    counts["snapshot_items"] = write_snapshot(
        examples,
        "item",
        as_of,
        views["item_features"],
        inputs["item_features"],
        outputs[contracts.ITEM_SNAPSHOT],
        batch_rows,
    )
    if contracts.EVAL_ITEM_SNAPSHOT in outputs:
        write_snapshot(
            examples,
            "item",
            eval_start,
            views["item_features"],
            inputs["item_features"],
            outputs[contracts.EVAL_ITEM_SNAPSHOT],
            batch_rows,
        )
    counts.update(
        **{contracts.SNAPSHOT_HISTORY_LENGTH: history.length},
        # Numbers: KFP metrics hold nothing else (push writes them to snapshot.json).
        **{
            contracts.SNAPSHOT_WATCHED_MAX: config.watched_max_items,
            "watched_from_impressions": int(config.watched_from == "impressions"),
        },
        history_broadcast=int(broadcast_history),
        **{f"{name}_broadcast": int(broadcast[name]) for name in views},
    )
    return counts


def read_rows(directory: str) -> pa.Table | None:
    """A dataset as one single-chunk table (None without rows): a broadcast view."""
    return concat_tables([read_dataset_table(directory)])


def read_engagements(directories: list[str], view: HistoryView) -> pa.Table | None:
    """The clicked events of the event datasets (the history's columns), as one table."""
    return concat_tables(
        _engagements(batch, view)
        for directory in directories
        for batch in iter_dataset(directory, JOIN_BATCH_ROWS, _history_columns(view))
    )


def _engagements(batch, view: HistoryView) -> pa.Table:
    """The clicked events of a batch: the rows engagement histories are made of."""
    table = as_table(batch)
    clicked = table.filter(pc.equal(table.column(CLICKED), 1))
    return clicked.select([view.key, EVENT_TS, view.item, view.value])


def _checked_history_length(length: int, schema_dir: str) -> int:
    items = next(
        f
        for f in load_schema(contracts.EXAMPLES_SCHEMA, schema_dir).feature
        if f.name == HISTORY_COLUMNS[0]
    )
    limit = items.value_count.max
    if not 1 <= length <= limit:
        raise ValueError(
            f"history_length must be between 1 and {limit} (the largest "
            f"value_count of {items.name} in the examples schema), got {length}"
        )
    return int(length)
