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

from recsys.core import storage
from recsys.core.tables import dataset_pattern


def pipeline_options(beam_pipeline_args: str | list[str]) -> PipelineOptions:
    """Beam options from a JSON list (how KFP passes them) or a list of flags.

    Nothing is added or removed: ``--runner=DataflowRunner`` and friends pass
    straight through; with no ``--runner`` Beam uses the DirectRunner.
    """
    args = (
        json.loads(beam_pipeline_args)
        if isinstance(beam_pipeline_args, str)
        else list(beam_pipeline_args)
    )
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError(
            f"beam_pipeline_args must be a JSON list of strings, got {beam_pipeline_args!r}"
        )
    return PipelineOptions(args)


def on_direct_runner(beam_pipeline_args: str | list[str]) -> bool:
    """Whether these options run on Beam's DirectRunner (no ``--runner``, or it named),
    which keeps every shuffle of the pipeline in this process's memory."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = pipeline_options(beam_pipeline_args).view_as(StandardOptions).runner
    return runner is None or runner.removesuffix("Runner") in ("Direct", "SwitchingDirect")


def to_list_array(column: pa.Array) -> pa.Array:
    """A flat column as a list column: one value per row, null rows become null lists.
    List columns (variable-length features) are already in that form."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return column
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    offsets = np.concatenate([[0], np.cumsum(valid)]).astype(np.int32)
    return pa.ListArray.from_arrays(
        pa.array(offsets), column.filter(pa.array(valid)), mask=pa.array(~valid)
    )


def to_list_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([to_list_array(c) for c in batch.columns], batch.schema.names)


def from_list_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Flatten single-valued list columns (TFT's output) back to plain columns; the
    columns ``schema`` declares as lists stay lists."""
    columns = []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        is_list = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
        if is_list and not pa.types.is_list(schema.field(name).type):
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
        return (
            pipeline
            | "ReadParquet" >> beam.io.ReadFromParquetBatched(dataset_pattern(self._directory))
            | "ToBatches"
            >> beam.FlatMap(
                lambda table, n: table.to_batches(n), self._batch_size
            ).with_output_types(pa.RecordBatch)
        )


class ReadDatasets(beam.PTransform):
    """Several dataset directories as one PCollection of ``(name, RecordBatch)``, read
    in batches of ``batch_size`` rows (``columns`` only, if given).

    Each Parquet row group of each dataset is one unit: the units are created, spread
    over the workers (a reshuffle of their names only) and read where they land. One
    read for every dataset, with no Flatten: Beam's DirectRunner materializes a
    Flatten's inputs in memory before the step after it, which held every table of a
    run at once (validate, issue 27); here reading and what consumes it stay fused, a
    row group at a time."""

    def __init__(
        self, directories: dict[str, str], batch_size: int, columns: list[str] | None = None
    ):
        super().__init__()
        self._directories, self._batch_size, self._columns = directories, batch_size, columns

    def expand(self, pipeline):
        units = []
        for name, directory in self._directories.items():
            for path in storage.glob(dataset_pattern(directory)):
                with storage.parquet_file(path) as parquet:
                    groups = parquet.metadata.num_row_groups
                units += [(name, path, group) for group in range(max(groups, 1))]
        return (
            pipeline
            | "Units" >> beam.Create(units)
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.FlatMap(_read_unit, self._batch_size, self._columns)
        )


def _read_unit(unit: tuple[str, str, int], batch_size: int, columns: list[str] | None):
    name, path, group = unit
    with storage.parquet_file(path) as parquet:
        if group >= parquet.metadata.num_row_groups:
            return  # a file without rows
        table = parquet.read_row_group(group, columns=columns)
    for batch in table.to_batches(batch_size):
        yield name, batch


def as_table(part: pa.Table | pa.RecordBatch) -> pa.Table:
    return pa.Table.from_batches([part]) if isinstance(part, pa.RecordBatch) else part


def concat_tables(parts) -> pa.Table | None:
    """Tables or record batches as one single-chunk table; None when there are no rows."""
    tables = [as_table(part) for part in parts if part.num_rows]
    return pa.concat_tables(tables).combine_chunks() if tables else None


class ArrowCoder(beam.coders.Coder):
    """Arrow tables and record batches in the Arrow IPC stream format.

    Without it Beam pickles them, and pickling a sliced batch (every batch of a
    Parquet read is a slice of its row group) copies the whole parent buffers:
    about 8x the bytes here. IPC writes only the slice.
    """

    def encode(self, value) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.schema) as writer:
            writer.write(value)
        return (b"T" if isinstance(value, pa.Table) else b"B") + sink.getvalue().to_pybytes()

    def decode(self, encoded: bytes):
        table = pa.ipc.open_stream(memoryview(encoded)[1:]).read_all()
        if encoded[:1] == b"T":
            return table
        batches = table.combine_chunks().to_batches()
        return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)

    def is_deterministic(self) -> bool:
        return True

    def estimate_size(self, value) -> int:
        return value.nbytes  # Beam's default encodes the value just to measure it

    def to_type_hint(self):
        return pa.Table


beam.coders.registry.register_coder(pa.Table, ArrowCoder)
beam.coders.registry.register_coder(pa.RecordBatch, ArrowCoder)
