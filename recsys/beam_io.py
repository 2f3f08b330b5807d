"""Beam plumbing shared by the Beam stages: pipeline options and Arrow batches.

TFDV and TFT consume Arrow record batches whose columns are list arrays (the
TFXIO convention); our datasets are flat Parquet columns, so the wrap is done
here, per batch and vectorised.
"""

import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions

from recsys.tables import dataset_pattern


def pipeline_options(beam_pipeline_args: str | list[str]) -> PipelineOptions:
    """Beam options from a JSON list (how KFP passes them) or a list of flags.

    Nothing is added or removed: ``--runner=DataflowRunner`` and friends pass
    straight through; with no ``--runner`` Beam uses the DirectRunner.
    """
    args = json.loads(beam_pipeline_args) if isinstance(beam_pipeline_args, str) \
        else list(beam_pipeline_args)
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError(f"beam_pipeline_args must be a JSON list of strings, got {beam_pipeline_args!r}")
    return PipelineOptions(args)


def to_list_array(column: pa.Array) -> pa.Array:
    """A flat column as a list column: one value per row, null rows become null lists.
    List columns (variable-length features) are already in that form."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return column
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    offsets = np.concatenate([[0], np.cumsum(valid)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), column.filter(pa.array(valid)),
                                    mask=pa.array(~valid))


def to_list_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([to_list_array(c) for c in batch.columns], batch.schema.names)


def from_list_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Flatten single-valued list columns (TFT's output) back to plain columns."""
    columns = []
    for column in batch.columns:
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            column = column.flatten()
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, batch.schema.names)


class ReadDataset(beam.PTransform):
    """A dataset directory as a PCollection of flat Arrow record batches."""

    def __init__(self, directory: str, batch_size: int = 4096):
        super().__init__()
        self._directory = directory
        self._batch_size = batch_size

    def expand(self, pipeline):
        return (pipeline
                | "ReadParquet" >> beam.io.ReadFromParquetBatched(dataset_pattern(self._directory))
                | "ToBatches" >> beam.FlatMap(lambda table, n: table.to_batches(n), self._batch_size))
