"""What evaluate reads, read as the datasets stream: never a whole table of examples.

- ``EvalData``: the eval examples, read once a batch at a time into the few columns
  every metric needs per impression (who, what, when, the label, the watch time, the
  item's category: tens of bytes a row) and each eval user's first example with all
  its features (what that user is queried with); a model is scored on the examples
  by streaming them again, a batch at a time (``per_batch``), keeping only what each
  batch's scores reduce to;
- ``TrainingClicks``: of the training examples, only the (user, item) pairs clicked
  and the click-through rate (the ranking prior).

Memory follows ``batch_rows`` and the eval split's row count times those few columns.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.components.evaluate.models import call_in_batches
from recsys.core.contracts import CLICKED, EVENT_ID, EVENT_TS, ITEM_ID, USER_ID, WATCH_SECONDS
from recsys.core.limits import BATCH_ROWS
from recsys.core.tables import iter_dataset

# Per impression, what the metrics need besides model scores.
IMPRESSION_COLUMNS = [USER_ID, ITEM_ID, EVENT_TS, CLICKED, WATCH_SECONDS]


def first_examples(examples: pd.DataFrame, users: np.ndarray) -> pd.DataFrame:
    """Each of ``users``' earliest example, in the order of ``users``: the features
    serving had for the user's first request of the window."""
    # event_id breaks ties: the join writes examples in no particular order.
    return (
        examples.sort_values([EVENT_TS, EVENT_ID])
        .drop_duplicates(USER_ID)
        .set_index(USER_ID)
        .loc[users]
        .reset_index()
    )


@dataclass
class EvalData:
    directory: str
    impressions: pd.DataFrame  # IMPRESSION_COLUMNS (and the category), in stream order
    first: pd.DataFrame  # each eval user's first example, all columns, sorted by user
    batch_rows: int = BATCH_ROWS

    @classmethod
    def read(
        cls, directory: str, category: str | None = None, batch_rows: int = BATCH_ROWS
    ) -> "EvalData":
        columns = IMPRESSION_COLUMNS + ([category] if category else [])
        parts, firsts = [], []
        for batch in iter_dataset(directory, batch_rows):
            # Kept as Arrow and converted once at the end: pandas then holds one
            # Python string per distinct id (to_pandas deduplicates within a
            # conversion), not one per batch that mentions it.
            table = pa.Table.from_batches([batch])
            parts.append(table.select([c for c in columns if c in table.column_names]))
            firsts.append(_earliest(table))
            if len(firsts) > 4:  # keep one candidate row per user
                firsts = [_earliest(pa.concat_tables(firsts))]
        impressions = pa.concat_tables(parts).to_pandas() if parts else pd.DataFrame()
        first = (
            _earliest(pa.concat_tables(firsts))
            .to_pandas()
            .sort_values(USER_ID)
            .reset_index(drop=True)
            if firsts
            else None
        )
        return cls(directory, impressions, first, batch_rows)

    @property
    def users(self) -> np.ndarray:
        return self.first[USER_ID].to_numpy()

    def first_of(self, users: np.ndarray) -> pd.DataFrame:
        """The first examples of ``users`` (eval users), in their order."""
        return self.first.set_index(USER_ID).loc[users].reset_index()

    def per_batch(self, work) -> np.ndarray:
        """``work(frame)`` over the eval examples a batch (a DataFrame of all their
        columns) at a time, concatenated: a model's scores, reduced per batch."""
        parts = [work(batch.to_pandas()) for batch in iter_dataset(self.directory, self.batch_rows)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def score(self, fn, output: str) -> np.ndarray:
        """One output of a serving signature on every eval example, in stream order."""
        return self.per_batch(lambda frame: call_in_batches(fn, frame, output))


def _earliest(table: pa.Table) -> pa.Table:
    """Each user's earliest row (event_id breaks ties: the join writes examples in no
    particular order), in Arrow: only the rows kept ever become Python objects."""
    table = table.take(pc.sort_indices(table, [(EVENT_TS, "ascending"), (EVENT_ID, "ascending")]))
    users = pc.dictionary_encode(table.column(USER_ID).combine_chunks()).indices
    _, first = np.unique(users.to_numpy(zero_copy_only=False), return_index=True)
    return table.take(pa.array(first))


@dataclass
class TrainingClicks:
    """The training examples as far as evaluate needs them."""

    pairs: pd.DataFrame  # (user_id, item_id) clicked in training, each pair once
    click_rate: float  # the training window's click-through rate: the ranking prior

    @classmethod
    def read(cls, directory: str, batch_rows: int = BATCH_ROWS) -> "TrainingClicks":
        pairs, clicks, rows = [], 0, 0
        for batch in iter_dataset(directory, batch_rows, [USER_ID, ITEM_ID, CLICKED]):
            clicked = pc.equal(batch.column(CLICKED), 1)
            clicks += int(pc.sum(clicked).as_py() or 0)
            rows += batch.num_rows
            pairs.append(_unique_pairs(pa.Table.from_batches([batch]).filter(clicked)))
            if len(pairs) > 4:
                pairs = [_unique_pairs(pa.concat_tables(pairs))]
        frame = (
            _unique_pairs(pa.concat_tables(pairs)).to_pandas()  # one string per distinct id
            if pairs
            else pd.DataFrame({USER_ID: [], ITEM_ID: []})
        )
        return cls(frame, clicks / rows if rows else float("nan"))


def _unique_pairs(table: pa.Table) -> pa.Table:
    """The distinct (user, item) pairs of ``table``, in Arrow (a group-by with no
    aggregates)."""
    return table.group_by([USER_ID, ITEM_ID]).aggregate([]).select([USER_ID, ITEM_ID])
