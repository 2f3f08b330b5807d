"""The serving log: what the funnel fed the models for every served item, in the
layout ingest reads as the ``serving_log`` table. The validate stage compares it
with the training examples (training/serving skew)."""

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
