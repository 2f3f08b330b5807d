"""Features: point-in-time joins into training examples, then tensorflow-transform.

Two steps with validation between them in the DAG: ``join_features`` builds the
examples (and the serving snapshots), validate checks them for schema, skew and
drift, and only then ``transform`` analyzes them.

The join gives each event the newest user and item feature rows whose
``feature_ts <= event_ts``: nothing written after the event can leak into
training. Every event yields exactly one example; events without a feature row
get zeros and a ``*_features_missing`` flag.
"""

import os

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import tensorflow_data_validation as tfdv
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils
from tfx_bsl.coders import csv_decoder
from tfx_bsl.tfxio import tensor_adapter, tensor_representation_util

import schemas
from components.features import preprocessing
from components.features.asof import NO_MATCH, asof_indices
from recsys.beam_io import ReadDataset, from_list_batch, pipeline_options, to_list_array
from recsys.tables import (ITEM_FEATURE_COLUMNS, UNKNOWN, USER_FEATURE_COLUMNS, DataError,
                           read_dataset, write_dataset)

DAY = 86_400
EXAMPLES_SCHEMA_NAME = "examples"


def point_in_time_join(events: pd.DataFrame, features: pd.DataFrame, key: str,
                       value_columns: list[str], missing_flag: str) -> pd.DataFrame:
    """Attach to each event the newest feature row with the same key and
    ``feature_ts <= event_ts`` (``asof.asof_indices``; among rows with equal
    ``feature_ts`` the last one given wins). Keeps the events' order and count."""
    chosen = asof_indices(events[key].to_numpy(), events["event_ts"].to_numpy(),
                          features[key].to_numpy(), features["feature_ts"].to_numpy())
    found = chosen != NO_MATCH
    joined = events.reset_index(drop=True)
    joined["feature_ts"] = np.where(found, features["feature_ts"].to_numpy()[chosen], np.nan)
    for column in value_columns:
        values = features[column].to_numpy(dtype=np.float64)[chosen]
        joined[column] = np.where(found, values, 0.0).astype(np.float32)
    check_point_in_time(events, joined, key)
    joined[missing_flag] = (~found).astype(np.int64)
    return joined.drop(columns="feature_ts")


def check_point_in_time(events: pd.DataFrame, joined: pd.DataFrame, key: str) -> None:
    """Guards: one row per event, and no feature row from after its event."""
    if len(joined) != len(events):
        raise AssertionError(f"point-in-time join on {key}: {len(events)} events in, "
                             f"{len(joined)} rows out")
    leaked = joined["feature_ts"].notna() & (joined["feature_ts"] > joined["event_ts"])
    if leaked.any():
        example = joined.loc[leaked, ["event_id", key, "event_ts", "feature_ts"]].head(1)
        raise AssertionError(f"point-in-time join on {key} used future features:\n{example}")


def build_examples(events: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame,
                   user_features: pd.DataFrame, item_features: pd.DataFrame,
                   schema_path: str | None = None) -> pd.DataFrame:
    """Events joined with static attributes and as-of features: the TFT input."""
    examples = point_in_time_join(events, user_features, "user_id", USER_FEATURE_COLUMNS,
                                  "user_features_missing")
    examples = point_in_time_join(examples, item_features, "item_id", ITEM_FEATURE_COLUMNS,
                                  "item_features_missing")
    examples = _attach_static(examples, users.drop_duplicates("user_id", keep="last"), "user_id",
                              ["country", "device"])
    examples = _attach_static(examples, items.drop_duplicates("item_id", keep="last"), "item_id",
                              ["category", "creator_id", "duration_s", "upload_ts"])
    examples["item_age_days"] = ((examples["event_ts"] - examples["upload_ts"]) / DAY).clip(lower=0)
    timestamps = pd.to_datetime(examples["event_ts"], unit="s", utc=True)
    examples["hour_of_day"] = timestamps.dt.hour.astype(np.int64)
    examples["day_of_week"] = timestamps.dt.dayofweek.astype(np.int64)
    return conform_to_schema(examples.drop(columns="upload_ts"), schema_path)


def _attach_static(frame: pd.DataFrame, table: pd.DataFrame, key: str,
                   columns: list[str]) -> pd.DataFrame:
    joined = frame.merge(table[[key, *columns]], on=key, how="left", validate="many_to_one")
    for column in columns:
        if joined[column].dtype == object:
            joined[column] = joined[column].fillna(UNKNOWN)
        else:
            joined[column] = joined[column].fillna(0)
    return joined


def examples_feature_spec(schema_path: str) -> dict:
    return schema_utils.schema_as_feature_spec(tfdv.load_schema_text(schema_path)).feature_spec


def conform_to_schema(frame: pd.DataFrame, schema_path: str | None = None) -> pd.DataFrame:
    """Columns and dtypes exactly as the examples schema declares them."""
    spec = examples_feature_spec(schema_path or schemas.schema_path(EXAMPLES_SCHEMA_NAME))
    present = [name for name in spec if name in frame.columns]
    out = frame[present].copy()
    for name in present:
        dtype = spec[name].dtype
        if dtype.is_floating:
            out[name] = out[name].astype(np.float32)
        elif dtype.is_integer:
            out[name] = out[name].astype(np.int64)
        else:
            out[name] = out[name].astype(str)
    return out


def latest_snapshot(entities: pd.DataFrame, features: pd.DataFrame, key: str,
                    value_columns: list[str], missing_flag: str, as_of: int) -> pd.DataFrame:
    """Each entity's newest features known at ``as_of``: what serving looks up."""
    probe = pd.DataFrame({key: entities[key].drop_duplicates().to_numpy()})
    probe["event_ts"] = np.int64(as_of)
    probe["event_id"] = probe[key]
    snapshot = point_in_time_join(probe, features, key, value_columns, missing_flag)
    return snapshot.drop(columns=["event_ts", "event_id"])


def serving_snapshots(users, items, user_features, item_features, as_of: int,
                      schema_path: str | None = None):
    """(user rows, item rows) with every raw query / candidate feature at ``as_of``."""
    user_rows = latest_snapshot(users, user_features, "user_id", USER_FEATURE_COLUMNS,
                                "user_features_missing", as_of)
    user_rows = _attach_static(user_rows, users.drop_duplicates("user_id", keep="last"),
                               "user_id", ["country", "device"])
    item_rows = latest_snapshot(items, item_features, "item_id", ITEM_FEATURE_COLUMNS,
                                "item_features_missing", as_of)
    item_rows = _attach_static(item_rows, items.drop_duplicates("item_id", keep="last"), "item_id",
                               ["category", "creator_id", "duration_s", "upload_ts"])
    item_rows["item_age_days"] = ((as_of - item_rows["upload_ts"]) / DAY).clip(lower=0)
    return (conform_to_schema(user_rows, schema_path)[preprocessing.QUERY_FEATURES],
            conform_to_schema(item_rows, schema_path)[preprocessing.CANDIDATE_FEATURES])


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
    spec = tft.TFTransformOutput(transform_graph_dir).transformed_feature_spec()
    to_arrow = {"int64": pa.int64(), "float32": pa.float32(), "string": pa.binary()}
    return pa.schema([(name, to_arrow[feature.dtype.name]) for name, feature in sorted(spec.items())])


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
                     lambda pair, schema: pa.Table.from_batches([from_list_batch(pair[0])])
                     .select(schema.names).cast(schema), output_schema)
                 | f"Write[{split}]" >> beam.io.WriteToParquetBatched(
                     os.path.join(transformed_dirs[split], "part"), schema=output_schema,
                     file_name_suffix=".parquet"))


def join_features(inputs: dict[str, str], as_of: int, schema_dir: str,
                  outputs: dict[str, str]) -> dict:
    """Point-in-time joins into train/eval examples, and the serving snapshots at
    ``as_of``. ``inputs``/``outputs`` map names to dataset directories."""
    schema_path = schemas.schema_path(EXAMPLES_SCHEMA_NAME, schema_dir)
    tables = {name: read_dataset(path) for name, path in inputs.items()}
    counts = {}
    for split in ("train", "eval"):
        examples = build_examples(tables[f"{split}_events"], tables["users"], tables["items"],
                                  tables["user_features"], tables["item_features"], schema_path)
        write_dataset(examples, outputs[f"{split}_examples"])
        counts[f"{split}_examples"] = len(examples)
        counts[f"{split}_user_features_missing"] = int(examples["user_features_missing"].sum())
        counts[f"{split}_item_features_missing"] = int(examples["item_features_missing"].sum())
    if counts["train_examples"] == 0:
        raise DataError("features: no training examples to analyze")
    user_rows, item_rows = serving_snapshots(tables["users"], tables["items"],
                                             tables["user_features"], tables["item_features"],
                                             as_of, schema_path)
    write_dataset(user_rows, outputs["user_snapshot"])
    write_dataset(item_rows, outputs["item_snapshot"])
    counts.update(snapshot_users=len(user_rows), snapshot_items=len(item_rows))
    return counts
