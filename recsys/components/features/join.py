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

import json
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
    ViewLookup,
)
from recsys.components.features.config import JoinConfig
from recsys.core import contracts, storage
from recsys.core.beam_io import ReadDataset, as_table, concat_tables, pipeline_options
from recsys.core.contracts import CLICKED, EVENT_TS, ITEM_ID, USER_ID
from recsys.core.derived import DAY, DERIVED, derive
from recsys.core.features import HISTORY_COLUMNS, FeatureRegistry, load_registry
from recsys.core.schemas import SCHEMA_DTYPES, is_list, load_schema
from recsys.core.tables import (
    DataError,
    dataset_pattern,
    read_dataset,
    read_dataset_table,
    write_dataset,
)

VIEW_OPTIONS = {"ttl_days", "created_before_event", "defaults", "join"}
JOIN_STRATEGIES = ("auto", "broadcast", "bucket")
# "auto" broadcasts a feature table up to this many rows (an index of ~50 bytes a
# row per worker), and buckets both sides by key above it.
BROADCAST_MAX_ROWS = 5_000_000
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


def dataset_rows(directory: str) -> int:
    """Rows of a Parquet dataset from its footers (no data read)."""
    return sum(storage.parquet_rows(path) for path in storage.glob(dataset_pattern(directory)))


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


def serving_snapshots(
    examples: Examples,
    user_features: pa.Table,
    item_features: pa.Table,
    engagements: pa.Table,
    as_of: int,
    views: dict[str, FeatureView],
    history: HistoryView,
) -> tuple[pa.Table, pa.Table]:
    """(user rows, item rows) with every user-side feature (history included) and
    item-side feature at ``as_of``: what serving looks up, by the same code as the
    training join. ``engagements`` are the clicked events (``_engagements``)."""
    registry = examples.registry

    def newest(entities: pd.DataFrame, view: FeatureView, features: pa.Table) -> pa.Table:
        probe = pa.table(
            {
                view.key: pa.array(entities[view.key].astype(str)),
                EVENT_TS: np.full(len(entities), as_of, dtype=np.int64),
            }
        )
        return ViewLookup(view, features).join(probe)

    user_rows = (
        HistoryLookup(history, engagements)
        .join(newest(examples.users, views["user_features"], user_features))
        .to_pandas()
    )
    item_rows = newest(examples.items, views["item_features"], item_features).to_pandas()
    at = lambda rows: np.full(len(rows), as_of, dtype=np.int64)  # noqa: E731
    user_rows, item_rows = examples.attach(user_rows), examples.attach(item_rows)
    return (
        examples.conform(user_rows, at(user_rows)).select(registry.side("user")),
        examples.conform(item_rows, at(item_rows)).select(registry.side("item")),
    )


def join_features(
    inputs: dict[str, str],
    as_of: int,
    schema_dir: str,
    outputs: dict[str, str],
    config: JoinConfig = JoinConfig(),
    beam_pipeline_args: str = "[]",
    eval_start: int | None = None,
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
        columns = storage.parquet_schema(storage.glob(dataset_pattern(inputs[name]))[0]).names
        if view.created_before_event and contracts.CREATED_TS not in columns:
            raise DataError(
                f"feature_views['{name}'] sets created_before_event, but the "
                f"{name} table has no created_ts column (found {columns}). Add "
                "when each row was written, or drop the option."
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
    # Engagements are a subset of the events: broadcast them when the events would be.
    broadcast_history = (
        sum(dataset_rows(inputs[events]) for events, _ in splits.values()) <= BROADCAST_MAX_ROWS
    )
    examples = Examples(
        registry, schema_dir, read_dataset(inputs["users"]), read_dataset(inputs["items"])
    )
    arrow_schema = examples_arrow_schema(schema_dir)

    with beam.Pipeline(options=pipeline_options(beam_pipeline_args)) as pipeline:
        features = {
            name: pipeline | f"Read[{name}]" >> ReadDataset(inputs[name], JOIN_BATCH_ROWS)
            for name in views
        }
        events = {
            split: pipeline | f"Read[{split}]" >> ReadDataset(inputs[dataset], JOIN_BATCH_ROWS)
            for split, (dataset, _) in splits.items()
        }
        engagements = (
            tuple(events.values())
            | "AllEvents" >> beam.Flatten()
            | "Engagements" >> beam.Map(_engagements, history).with_output_types(pa.Table)
        )
        for split, split_events in events.items():
            joined = split_events
            for name, view in views.items():
                joined = {
                    "events": joined,
                    "features": features[name],
                } | f"Join[{split}][{name}]" >> AsOfJoin(view, broadcast[name])
            joined = {
                "events": joined,
                "features": engagements,
            } | f"History[{split}]" >> HistoryJoin(history, broadcast_history)
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
        flags = read_dataset(
            outputs[dataset], columns=[view.missing_flag for view in views.values()]
        )
        counts[dataset] = len(flags)
        for view in views.values():
            counts[f"{split}_{view.missing_flag}"] = int(flags[view.missing_flag].sum())
    if counts[contracts.TRAIN_EXAMPLES] == 0:
        raise DataError("features: no training examples to analyze")
    # Only the columns a history needs, for the snapshot's history at as_of.
    history_columns = [history.key, EVENT_TS, history.item, history.value, CLICKED]
    engagements = concat_tables(
        [
            _engagements(read_dataset_table(inputs[dataset], history_columns), history)
            for dataset, _ in splits.values()
        ]
    )
    tables = {name: read_dataset_table(inputs[name]) for name in views}
    user_rows, item_rows = serving_snapshots(
        examples,
        tables["user_features"],
        tables["item_features"],
        engagements,
        as_of,
        views,
        history,
    )
    write_dataset(user_rows, outputs[contracts.USER_SNAPSHOT])
    write_dataset(item_rows, outputs[contracts.ITEM_SNAPSHOT])
    if contracts.EVAL_ITEM_SNAPSHOT in outputs:
        _, eval_item_rows = serving_snapshots(
            Examples(registry, schema_dir, examples.users.head(0), examples.items),
            tables["user_features"],
            tables["item_features"],
            engagements,
            eval_start,
            views,
            history,
        )
        write_dataset(eval_item_rows, outputs[contracts.EVAL_ITEM_SNAPSHOT])
    counts.update(
        snapshot_users=user_rows.num_rows,
        snapshot_items=item_rows.num_rows,
        **{contracts.SNAPSHOT_HISTORY_LENGTH: history.length},
        history_broadcast=int(broadcast_history),
        **{f"{name}_broadcast": int(broadcast[name]) for name in views},
    )
    return counts


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
