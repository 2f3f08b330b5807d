"""The serving log: what the funnel fed the models for every served item, in the
layout ingest reads as the ``serving_log`` table. The validate stage compares it
with the training examples (training/serving skew)."""

import queue
import sys
import threading
import time
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.core import storage
from recsys.core.contracts import EVENT_ID, EVENT_TS


class ServingLog:
    """The features of every served item, one row per impression, written as
    ``part-*.parquet`` files under ``directory``: point a run's
    ``<data_root>/serving_log`` at it and the validate stage compares them with the
    training examples (skew). Rows are buffered and written every ``rows_per_file``
    rows and on ``close()``."""

    def __init__(self, directory: str, rows_per_file: int = 50_000):
        self.directory, self.rows_per_file = directory, rows_per_file
        storage.makedirs(directory)
        self._parts: list[pd.DataFrame] = []
        self._rows = 0

    def append(
        self, request_id: str, query: dict[str, np.ndarray], served_items: dict[str, np.ndarray]
    ) -> None:
        """One request: its query columns (one row) and the served items' columns."""
        n = len(next(iter(served_items.values())))
        rows = {
            EVENT_ID: [f"{request_id}-{i}" for i in range(n)],
            EVENT_TS: np.repeat(query[EVENT_TS], n),
        }
        for name, values in query.items():
            if name != EVENT_TS:
                rows[name] = np.repeat(values, n)
        rows.update(served_items)
        self._parts.append(pd.DataFrame(rows))
        self._rows += n
        if self._rows >= self.rows_per_file:
            self.flush()

    @property
    def pending_rows(self) -> int:
        return self._rows

    def discard(self) -> int:
        """Forget the buffered rows (a write failed); how many they were."""
        rows, self._parts, self._rows = self._rows, [], 0
        return rows

    def flush(self) -> str | None:
        if not self._parts:
            return None
        frame = pd.concat(self._parts, ignore_index=True)
        for name in frame.columns:  # list features (the history) as Parquet lists
            if len(frame) and isinstance(frame[name].iloc[0], (list, tuple, np.ndarray)):
                frame[name] = frame[name].map(list)
        path = storage.join(
            self.directory, f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        )
        storage.write_parquet(pa.Table.from_pandas(frame, preserve_index=False), path)
        self._parts, self._rows = [], 0
        return path

    def close(self) -> None:
        self.flush()


class BackgroundServingLog:
    """A ``ServingLog`` written by a thread of its own, off the request path: ``append``
    only queues the request (never blocks, never raises); the thread writes a file
    every ``rows_per_file`` rows or ``flush_seconds``. When the queue is full (the
    writer is slower than the traffic) or a write fails, the rows are dropped and
    counted in ``dropped`` (and ``on_drop`` is called with how many), so a failing
    log never fails a request."""

    def __init__(
        self,
        directory: str,
        rows_per_file: int = 50_000,
        flush_seconds: float = 60.0,
        max_queued_requests: int = 10_000,
        on_drop=None,
    ):
        # The thread decides when to write (so a failed write is dropped, not retried
        # with an ever larger buffer): the inner log never flushes on its own.
        self.log = ServingLog(directory, rows_per_file=sys.maxsize)
        self.rows_per_file, self.flush_seconds = rows_per_file, flush_seconds
        self.dropped = self.written = 0
        self.last_error = ""
        self._on_drop = on_drop or (lambda rows: None)
        self._queue = queue.Queue(maxsize=max_queued_requests)
        self._thread = threading.Thread(target=self._run, name="serving-log", daemon=True)
        self._thread.start()

    def append(self, request_id: str, query: dict, served_items: dict) -> None:
        try:
            self._queue.put_nowait((request_id, query, served_items))
        except queue.Full:
            self._drop(len(next(iter(served_items.values()), ())))

    def _drop(self, rows: int) -> None:
        self.dropped += rows
        self._on_drop(rows)

    def _run(self) -> None:
        deadline = time.monotonic() + self.flush_seconds
        while True:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                item = None
            if item is _STOP:
                self._flush()
                return
            if item is not None:
                try:
                    self.log.append(*item)
                except Exception as error:  # a request the log cannot hold: counted, skipped
                    self.last_error = repr(error)
                    self._drop(len(next(iter(item[2].values()), ())))
            if self.log.pending_rows >= self.rows_per_file or time.monotonic() >= deadline:
                self._flush()
                deadline = time.monotonic() + self.flush_seconds

    def _flush(self) -> None:
        pending = self.log.pending_rows
        try:
            if self.log.flush():
                self.written += pending
        except Exception as error:  # storage down, disk full: the rows are lost, counted
            self.last_error = repr(error)
            self._drop(self.log.discard())

    def close(self, timeout_seconds: float = 30.0) -> None:
        """Write what is queued and stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout_seconds)


_STOP = object()
