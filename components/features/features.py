"""Features: point-in-time joins into training examples, then tensorflow-transform.

Two steps with validation between them in the DAG: ``join_features`` builds the
examples (and the serving snapshots), validate checks them for schema, skew and
drift, and only then ``transform`` analyzes them.

The join is a Beam pipeline (``beam_asof``): each event gets, per feature view,
the newest row with ``feature_ts <= event_ts`` (Feast's rules: optional ttl,
ties to the latest ``created_ts``, optionally ``created_ts <= event_ts``), and
the user's engagement history strictly before the event. Nothing written after
an event reaches its example; every event yields exactly one example; events
without a feature row get the view's defaults and a ``*_missing`` flag. The
serving snapshots use the same lookup code in-process at ``as_of``.
"""

import functools
import glob
import json
import os

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tensorflow as tf
import tensorflow_data_validation as tfdv
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils
from tfx_bsl.coders import csv_decoder
from tfx_bsl.tfxio import tensor_adapter, tensor_representation_util

import schemas
from components.features import preprocessing
from components.features.beam_asof import (AsOfJoin, CheckRowCounts, FeatureView, HistoryJoin,
                                           HistoryLookup, HistoryView, ViewLookup)
from recsys.beam_io import (ReadDataset, as_table, concat_tables, from_list_batch,
                            pipeline_options, to_list_array)
from recsys.tables import (ITEM_FEATURE_COLUMNS, UNKNOWN, USER_FEATURE_COLUMNS, DataError,
                           dataset_pattern, read_dataset, read_dataset_table, write_dataset)

DAY = 86_400
EXAMPLES_SCHEMA_NAME = "examples"
# The feature views and their defaults; ``feature_views`` (JSON) overrides per view.
FEATURE_VIEWS = {
    "user_features": FeatureView("user_features", "user_id", tuple(USER_FEATURE_COLUMNS)),
    "item_features": FeatureView("item_features", "item_id", tuple(ITEM_FEATURE_COLUMNS)),
}
VIEW_OPTIONS = {"ttl_days", "created_before_event", "defaults", "join"}
JOIN_STRATEGIES = ("auto", "broadcast", "bucket")
# "auto" broadcasts a feature table up to this many rows (an index of ~50 bytes a
# row per worker), and buckets both sides by key above it.
BROADCAST_MAX_ROWS = 5_000_000
# Rows per Arrow batch read into the join: large, so each step works on whole columns.
JOIN_BATCH_ROWS = 200_000
STATIC_ATTRIBUTES = {"user_id": ["country", "device"],
                     "item_id": ["category", "creator_id", "duration_s", "upload_ts"]}


def parse_feature_views(config: str | dict = "{}") -> tuple[dict[str, FeatureView], dict]:
    """``({view name: FeatureView}, {view name: join strategy})`` from the JSON option
    ``{"user_features": {"ttl_days": 7, "created_before_event": true,
    "defaults": {"user_clicks_7d": 0}, "join": "auto"}}``; unknown names are errors."""
    options = json.loads(config) if isinstance(config, str) else dict(config)
    if not isinstance(options, dict):
        raise ValueError(f"feature_views must be a JSON object, got {config!r}")
    views, strategies = dict(FEATURE_VIEWS), {name: "auto" for name in FEATURE_VIEWS}
    for name, view_options in options.items():
        if name not in FEATURE_VIEWS:
            raise ValueError(f"feature_views: unknown view '{name}'; the views are "
                             f"{sorted(FEATURE_VIEWS)}")
        if not isinstance(view_options, dict):
            raise ValueError(f"feature_views['{name}'] must be an object of options "
                             f"{sorted(VIEW_OPTIONS)}, got {view_options!r}")
        unknown = set(view_options) - VIEW_OPTIONS
        if unknown:
            raise ValueError(f"feature_views['{name}']: unknown option(s) {sorted(unknown)}; "
                             f"allowed: {sorted(VIEW_OPTIONS)}")
        view = views[name]
        defaults = dict(view_options.get("defaults", {}))
        if set(defaults) - set(view.columns):
            raise ValueError(f"feature_views['{name}']: defaults for unknown column(s) "
                             f"{sorted(set(defaults) - set(view.columns))}; the view's "
                             f"columns are {list(view.columns)}")
        ttl_days = view_options.get("ttl_days")
        if ttl_days is not None and not ttl_days > 0:
            raise ValueError(f"feature_views['{name}']: ttl_days must be positive, "
                             f"got {ttl_days!r}")
        strategies[name] = view_options.get("join", "auto")
        if strategies[name] not in JOIN_STRATEGIES:
            raise ValueError(f"feature_views['{name}']: join must be one of "
                             f"{JOIN_STRATEGIES}, got {strategies[name]!r}")
        views[name] = FeatureView(
            name, view.key, view.columns,
            ttl_seconds=None if ttl_days is None else int(round(ttl_days * DAY)),
            created_before_event=bool(view_options.get("created_before_event", False)),
            defaults=defaults)
    return views, strategies


def dataset_rows(directory: str) -> int:
    """Rows of a Parquet dataset from its footers (no data read)."""
    return sum(pq.ParquetFile(path).metadata.num_rows
               for path in glob.glob(dataset_pattern(directory)))


def finish_examples(joined: pa.Table, users: pd.DataFrame, items: pd.DataFrame,
                    schema_path: str) -> pa.Table:
    """Joined events plus static attributes and context: the examples, typed and
    ordered as the examples schema declares them."""
    examples = joined.to_pandas()
    for key, table in (("user_id", users), ("item_id", items)):
        examples = _attach_static(examples, table, key, STATIC_ATTRIBUTES[key])
    examples["item_age_days"] = ((examples["event_ts"] - examples["upload_ts"]) / DAY).clip(lower=0)
    timestamps = pd.to_datetime(examples["event_ts"], unit="s", utc=True)
    examples["hour_of_day"] = timestamps.dt.hour.astype(np.int64)
    examples["day_of_week"] = timestamps.dt.dayofweek.astype(np.int64)
    return pa.Table.from_pandas(conform_to_schema(examples, schema_path),
                                schema=examples_arrow_schema(schema_path), preserve_index=False)


def _attach_static(frame: pd.DataFrame, table: pd.DataFrame, key: str,
                   columns: list[str]) -> pd.DataFrame:
    """Static attributes of each row's entity (the tables are de-duplicated by ingest)."""
    joined = frame.merge(table[[key, *columns]], on=key, how="left", validate="many_to_one")
    for column in columns:
        if joined[column].dtype == object:
            joined[column] = joined[column].fillna(UNKNOWN)
        else:
            joined[column] = joined[column].fillna(0)
    return joined


@functools.lru_cache(maxsize=8)  # the join calls it per batch; parsing pbtxt is slow
def examples_feature_spec(schema_path: str) -> dict:
    return schema_utils.schema_as_feature_spec(tfdv.load_schema_text(schema_path)).feature_spec


def conform_to_schema(frame: pd.DataFrame, schema_path: str | None = None) -> pd.DataFrame:
    """Columns and dtypes exactly as the examples schema declares them."""
    spec = examples_feature_spec(schema_path or schemas.schema_path(EXAMPLES_SCHEMA_NAME))
    present = [name for name in spec if name in frame.columns]
    out = frame[present].copy()
    for name in present:
        dtype = spec[name].dtype
        if isinstance(spec[name], tf.io.VarLenFeature):
            continue  # lists stay lists
        if dtype.is_floating:
            out[name] = out[name].astype(np.float32)
        elif dtype.is_integer:
            out[name] = out[name].astype(np.int64)
        else:
            out[name] = out[name].astype(str)
    return out


def examples_arrow_schema(schema_path: str) -> pa.Schema:
    """The Parquet schema of the examples: flat columns, lists for variable-length ones."""
    to_arrow = {tf.float32: pa.float32(), tf.int64: pa.int64(), tf.string: pa.string()}
    fields = []
    for name, spec in examples_feature_spec(schema_path).items():
        arrow_type = to_arrow[spec.dtype]
        if isinstance(spec, tf.io.VarLenFeature):
            arrow_type = pa.list_(arrow_type)
        fields.append(pa.field(name, arrow_type))
    return pa.schema(fields)


def serving_snapshots(users: pd.DataFrame, items: pd.DataFrame, user_features: pa.Table,
                      item_features: pa.Table, engagements: pa.Table, as_of: int,
                      schema_path: str, views: dict[str, FeatureView] = FEATURE_VIEWS,
                      history: HistoryView = HistoryView()):
    """(user rows, item rows) with every raw user feature (history included) and
    item feature at ``as_of``: what serving looks up, by the same code as the
    training join. ``engagements`` are the clicked events (``_engagements``)."""
    def newest(entities: pd.DataFrame, view: FeatureView, features: pa.Table) -> pa.Table:
        probe = pa.table({view.key: pa.array(entities[view.key].astype(str)),
                          "event_ts": np.full(len(entities), as_of, dtype=np.int64)})
        return ViewLookup(view, features).join(probe)

    user_rows = HistoryLookup(history, engagements).join(
        newest(users, views["user_features"], user_features)).to_pandas()
    user_rows = _attach_static(user_rows, users, "user_id", STATIC_ATTRIBUTES["user_id"])
    item_rows = _attach_static(newest(items, views["item_features"], item_features).to_pandas(),
                               items, "item_id", STATIC_ATTRIBUTES["item_id"])
    item_rows["item_age_days"] = ((as_of - item_rows["upload_ts"]) / DAY).clip(lower=0)
    return (conform_to_schema(user_rows, schema_path)[preprocessing.QUERY_FEATURES],
            conform_to_schema(item_rows, schema_path)[preprocessing.CANDIDATE_FEATURES
                                                      + preprocessing.ITEM_STATISTICS])


def _tfxio_config(schema_path: str):
    schema = tfdv.load_schema_text(schema_path)
    columns = list(examples_feature_spec(schema_path))
    arrow_schema = csv_decoder.GetArrowSchema(columns, schema)
    representations = tensor_representation_util.InferTensorRepresentationsFromSchema(schema)
    return arrow_schema, tensor_adapter.TensorAdapterConfig(arrow_schema, representations)


def _to_tfxio_batch(batch: pa.RecordBatch, arrow_schema: pa.Schema) -> pa.RecordBatch:
    columns = [to_list_array(batch.column(field.name)).cast(field.type) for field in arrow_schema]
    return pa.RecordBatch.from_arrays(columns, schema=arrow_schema)


def _transformed_arrow_schema(transform_graph_dir: str) -> pa.Schema:
    """Flat columns, and lists for the variable-length outputs (id sequences)."""
    spec = tft.TFTransformOutput(transform_graph_dir).transformed_feature_spec()
    to_arrow = {"int64": pa.int64(), "float32": pa.float32(), "string": pa.binary()}
    return pa.schema([
        (name, pa.list_(to_arrow[feature.dtype.name])
         if isinstance(feature, tf.io.VarLenFeature) else to_arrow[feature.dtype.name])
        for name, feature in sorted(spec.items())])


def transform(train_dir: str, eval_dir: str, schema_path: str, transform_graph_dir: str,
              transformed_dirs: dict[str, str], temp_dir: str, beam_pipeline_args: str = "[]"):
    """Analyze on train only; apply the graph to train and eval; write Parquet."""
    arrow_schema, adapter_config = _tfxio_config(schema_path)
    options = pipeline_options(beam_pipeline_args)
    with beam.Pipeline(options=options) as pipeline, tft_beam.Context(temp_dir=temp_dir):
        train = (pipeline | "ReadTrain" >> ReadDataset(train_dir)
                 | "TrainToTFXIO" >> beam.Map(_to_tfxio_batch, arrow_schema))
        transform_fn = (train, adapter_config) | tft_beam.AnalyzeDataset(
            preprocessing.preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(transform_graph_dir)
    # With TFXIO input TFT does not record the raw schema; exporters need it to
    # build the raw-feature serving signatures (TFX's Transform does the same).
    metadata_io.write_metadata(
        dataset_metadata.DatasetMetadata(tfdv.load_schema_text(schema_path)),
        os.path.join(transform_graph_dir, tft.TFTransformOutput.RAW_METADATA_DIR))

    output_schema = _transformed_arrow_schema(transform_graph_dir)
    splits = {"train": train_dir, "eval": eval_dir}
    with beam.Pipeline(options=options) as pipeline, tft_beam.Context(temp_dir=temp_dir):
        transform_fn = pipeline | tft_beam.ReadTransformFn(transform_graph_dir)
        for split, directory in splits.items():
            raw = (pipeline | f"Read[{split}]" >> ReadDataset(directory)
                   | f"ToTFXIO[{split}]" >> beam.Map(_to_tfxio_batch, arrow_schema))
            transformed, _ = (((raw, adapter_config), transform_fn)
                              | f"Transform[{split}]" >> tft_beam.TransformDataset(
                                  output_record_batches=True))
            os.makedirs(transformed_dirs[split], exist_ok=True)
            _ = (transformed
                 | f"Flatten[{split}]" >> beam.Map(
                     lambda pair, schema: pa.Table.from_batches([from_list_batch(pair[0], schema)])
                     .select(schema.names).cast(schema), output_schema).with_output_types(pa.Table)
                 | f"Write[{split}]" >> beam.io.WriteToParquetBatched(
                     os.path.join(transformed_dirs[split], "part"), schema=output_schema,
                     file_name_suffix=".parquet"))


def join_features(inputs: dict[str, str], as_of: int, schema_dir: str,
                  outputs: dict[str, str], feature_views: str = "{}", history_length: int = 10,
                  beam_pipeline_args: str = "[]", eval_start: int | None = None) -> dict:
    """Point-in-time joins into train/eval examples (one Beam pipeline), and the
    serving snapshots at ``as_of``. ``inputs``/``outputs`` map names to dataset
    directories; ``feature_views`` is the JSON of ``parse_feature_views``.

    With ``eval_start`` and an ``eval_item_snapshot`` output, also the item rows as
    of the start of the eval split: what the funnel evaluation ranks eval users'
    candidates with (the ``as_of`` snapshot holds the eval window's statistics)."""
    if "eval_item_snapshot" in outputs and eval_start is None:
        raise ValueError("join_features: an eval_item_snapshot output needs eval_start")
    schema_path = schemas.schema_path(EXAMPLES_SCHEMA_NAME, schema_dir)
    views, strategies = parse_feature_views(feature_views)
    history = HistoryView(length=_checked_history_length(history_length, schema_path))
    for name, view in views.items():
        columns = pq.read_schema(glob.glob(dataset_pattern(inputs[name]))[0]).names
        if view.created_before_event and "created_ts" not in columns:
            raise DataError(f"feature_views['{name}'] sets created_before_event, but the "
                            f"{name} table has no created_ts column (found {columns}). Add "
                            "when each row was written, or drop the option.")
    broadcast = {name: strategies[name] == "broadcast" or (
        strategies[name] == "auto" and dataset_rows(inputs[name]) <= BROADCAST_MAX_ROWS)
        for name in views}
    # Engagements are a subset of the events: broadcast them when the events would be.
    broadcast_history = sum(dataset_rows(inputs[f"{split}_events"])
                            for split in ("train", "eval")) <= BROADCAST_MAX_ROWS
    users, items = read_dataset(inputs["users"]), read_dataset(inputs["items"])
    arrow_schema = examples_arrow_schema(schema_path)

    with beam.Pipeline(options=pipeline_options(beam_pipeline_args)) as pipeline:
        features = {name: pipeline | f"Read[{name}]" >> ReadDataset(inputs[name], JOIN_BATCH_ROWS)
                    for name in views}
        events = {split: pipeline | f"Read[{split}]" >> ReadDataset(inputs[f"{split}_events"],
                                                                   JOIN_BATCH_ROWS)
                  for split in ("train", "eval")}
        engagements = (tuple(events.values()) | "AllEvents" >> beam.Flatten()
                       | "Engagements" >> beam.Map(_engagements, history).with_output_types(pa.Table))
        for split, split_events in events.items():
            joined = split_events
            for name, view in views.items():
                joined = ({"events": joined, "features": features[name]}
                          | f"Join[{split}][{name}]" >> AsOfJoin(view, broadcast[name]))
            joined = ({"events": joined, "features": engagements}
                      | f"History[{split}]" >> HistoryJoin(history, broadcast_history))
            examples = joined | f"Finish[{split}]" >> beam.Map(
                finish_examples, users, items, schema_path).with_output_types(pa.Table)
            _ = ({"input": split_events, "output": examples}
                 | f"CheckCounts[{split}]" >> CheckRowCounts(f"features/join ({split})"))
            _ = examples | f"Write[{split}]" >> beam.io.WriteToParquetBatched(
                os.path.join(outputs[f"{split}_examples"], "part"), schema=arrow_schema,
                file_name_suffix=".parquet")

    counts = {}
    for split in ("train", "eval"):
        flags = read_dataset(outputs[f"{split}_examples"],
                             columns=[view.missing_flag for view in views.values()])
        counts[f"{split}_examples"] = len(flags)
        for view in views.values():
            counts[f"{split}_{view.missing_flag}"] = int(flags[view.missing_flag].sum())
    if counts["train_examples"] == 0:
        raise DataError("features: no training examples to analyze")
    # Only the columns a history needs, for the snapshot's history at as_of.
    history_columns = [history.key, "event_ts", history.item, history.value, preprocessing.LABEL]
    engagements = concat_tables([
        _engagements(read_dataset_table(inputs[f"{split}_events"], history_columns), history)
        for split in ("train", "eval")])
    user_rows, item_rows = serving_snapshots(
        users, items, pq.read_table(inputs["user_features"]),
        pq.read_table(inputs["item_features"]), engagements, as_of, schema_path, views, history)
    write_dataset(user_rows, outputs["user_snapshot"])
    write_dataset(item_rows, outputs["item_snapshot"])
    if "eval_item_snapshot" in outputs:
        _, eval_item_rows = serving_snapshots(
            users.head(0), items, pq.read_table(inputs["user_features"]),
            pq.read_table(inputs["item_features"]), engagements, eval_start, schema_path, views,
            history)
        write_dataset(eval_item_rows, outputs["eval_item_snapshot"])
    counts.update(snapshot_users=len(user_rows), snapshot_items=len(item_rows),
                  history_length=history.length,
                  history_broadcast=int(broadcast_history),
                  **{f"{name}_broadcast": int(broadcast[name]) for name in views})
    return counts


def _engagements(batch, view: HistoryView) -> pa.Table:
    """The clicked events of a batch: the rows engagement histories are made of."""
    table = as_table(batch)
    clicked = table.filter(pc.equal(table.column(preprocessing.LABEL), 1))
    return clicked.select([view.key, "event_ts", view.item, view.value])


def _checked_history_length(length: int, schema_path: str) -> int:
    schema = tfdv.load_schema_text(schema_path)
    items = tfdv.get_feature(schema, HistoryView().items_column)
    limit = items.value_count.max
    if not 1 <= length <= limit:
        raise ValueError(f"history_length must be between 1 and {limit} (the largest "
                         f"value_count of {items.name} in {schema_path}), got {length}")
    return int(length)
