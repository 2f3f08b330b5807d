"""The Beam as-of join equals the in-memory one, on DirectRunner in memory and
in multi-processing mode."""

import glob

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.features.beam_asof import AsOfJoin, FeatureView, bucket_ids
from components.features.features import point_in_time_join
from recsys.beam_io import ReadDataset, pipeline_options
from recsys.tables import USER_FEATURE_COLUMNS, read_dataset

VIEW = FeatureView("user_features", "user_id", tuple(USER_FEATURE_COLUMNS))


def _to_table(batch):
    return pa.Table.from_batches([batch])


def beam_join(events_dir, features_dir, out, args):
    with beam.Pipeline(options=pipeline_options(args)) as pipeline:
        sides = {"events": pipeline | "ReadEvents" >> ReadDataset(events_dir, batch_size=500),
                 "features": pipeline | "ReadFeatures" >> ReadDataset(features_dir,
                                                                        batch_size=700)}
        _ = (sides | AsOfJoin(VIEW, num_buckets=8, event_splits=3)
             | beam.Map(_to_table)
             | beam.io.WriteToParquetBatched(out + "/part", schema=_output_schema(events_dir),
                                             file_name_suffix=".parquet"))
    return pd.concat([pq.read_table(f).to_pandas() for f in glob.glob(out + "/*.parquet")])


def _output_schema(events_dir):
    events = pq.read_schema(glob.glob(events_dir + "/*.parquet")[0])
    fields = list(events) + [pa.field(c, pa.float32()) for c in VIEW.columns]
    return pa.schema(fields + [pa.field(VIEW.missing_flag, pa.int64())])


@pytest.mark.parametrize("args", [
    "[]", '["--direct_num_workers=2", "--direct_running_mode=multi_processing"]'])
def test_beam_join_equals_in_memory_join(stages, tmp_path, args):
    paths = stages["paths"]
    events = read_dataset(paths["train_events"])
    expected = point_in_time_join(events, read_dataset(paths["user_features"]), "user_id",
                                  USER_FEATURE_COLUMNS, VIEW.missing_flag)
    got = beam_join(paths["train_events"], paths["user_features"], str(tmp_path), args)
    assert len(got) == len(events) and got["event_id"].is_unique  # never drop, never duplicate
    got = got.set_index("event_id").loc[expected["event_id"]].reset_index()
    pd.testing.assert_frame_equal(got[expected.columns], expected, check_dtype=False)


def test_buckets_are_stable_and_spread():
    keys = np.array([f"u{i:06d}" for i in range(10_000)], dtype=object)
    first, again = bucket_ids(keys, 64), bucket_ids(keys.copy(), 64)
    np.testing.assert_array_equal(first, again)
    counts = np.bincount(first, minlength=64)
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()
