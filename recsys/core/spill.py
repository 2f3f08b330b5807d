"""Rows partitioned by a stable hash of a key, spilled to local disk: how one task
finds what needs every row of a key at once (a key seen twice) while it holds one
partition, not the table.

``KeyPartitions(n)`` takes Arrow tables with their keys, appends each row to the
Arrow IPC file of its partition (one writer per partition and schema, so files of
different column types can share a partition), and then yields the partitions one
at a time. With one partition nothing touches the disk. Written by hand because
neither pyarrow 10's dataset writer (no append of batches to open partitions
across calls) nor Beam's DirectRunner (a shuffle held in memory) bounds memory
here; the files live in a temporary directory that ``close`` removes.
"""

import tempfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.core import storage


def stable_buckets(keys, buckets: int) -> np.ndarray:
    """Each key's bucket in ``[0, buckets)``: the same in every process and run
    (pandas' fixed-key SipHash of the key's text, not Python's salted ``hash``),
    hashing each distinct key once."""
    array = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    array = array if isinstance(array, pa.Array) else pa.array(np.asarray(array))
    encoded = pc.dictionary_encode(array)
    hashed = pd.util.hash_array(encoded.dictionary.to_numpy(zero_copy_only=False))
    indices = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False)
    return (hashed % np.uint64(buckets)).astype(np.int64)[indices]


class KeyPartitions:
    """``add`` rows with their keys, then iterate: one list of tables per partition
    (the rows of every key whose hash falls there, in the order they were added)."""

    def __init__(self, partitions: int):
        self.partitions = max(1, int(partitions))
        self._directory = tempfile.mkdtemp(prefix="recsys-spill-") if self.partitions > 1 else ""
        self._in_memory: list[pa.Table] = []
        self._writers: dict[tuple[int, str], tuple] = {}
        self._files: dict[int, list[str]] = {p: [] for p in range(self.partitions)}

    def add(self, table: pa.Table, keys) -> None:
        if table.num_rows == 0:
            return
        if self.partitions == 1:
            self._in_memory.append(table)
            return
        bucket = stable_buckets(keys, self.partitions)
        order = np.argsort(bucket, kind="stable")
        bounds = np.flatnonzero(np.diff(bucket[order])) + 1
        for rows in np.split(order, bounds):
            self._writer(int(bucket[rows[0]]), table.schema).write_table(table.take(pa.array(rows)))

    def _writer(self, partition: int, schema: pa.Schema):
        schema = schema.remove_metadata()
        key = (partition, str(schema))
        if key not in self._writers:
            path = storage.join(self._directory, f"p{partition:05d}-{len(self._files[partition])}")
            handle = storage.open(path, "wb")
            self._writers[key] = (handle, pa.ipc.new_stream(handle, schema))
            self._files[partition].append(path)
        return self._writers[key][1]

    def __iter__(self):
        if self.partitions == 1:
            yield self._in_memory
            return
        for handle, writer in self._writers.values():
            writer.close()
            handle.close()
        self._writers.clear()
        for partition in range(self.partitions):
            tables = []
            for path in self._files[partition]:
                with storage.open(path) as handle:
                    tables.append(pa.ipc.open_stream(handle).read_all())
                storage.remove(path)
            yield tables

    def close(self) -> None:
        for handle, writer in self._writers.values():
            writer.close()
            handle.close()
        self._writers.clear()
        if self._directory:
            storage.remove(self._directory)

    def __enter__(self) -> "KeyPartitions":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
