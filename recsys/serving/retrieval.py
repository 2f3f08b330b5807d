"""Retrieval: the top candidates of a request, from the model or from an item index.

- ``ModelRetrieval``: the retrieval SavedModel's own top-K (its brute-force index
  inside), behind any backend: what TF Serving serves and evaluation measures.
- ``IndexRetrieval``: the query tower (pushed with the snapshot) embeds the
  request here, then an item index over the pushed item embeddings returns the
  top K: exact search (faiss' flat index) below ``ann_min_items`` items, a faiss
  HNSW graph (approximate, sub-linear) from there on. What a catalog of millions needs:
  the brute-force index inside a SavedModel scores every item on every request.

Both score an item by the dot product of the query and item embeddings, so below
the threshold they return the same items.
"""

import contextlib

import numpy as np
import pandas as pd

from recsys.core import storage
from recsys.core.contracts import (
    ANN_INDEX_FILE,
    ITEM_ID,
    ITEM_IDS,
    QUERY_EMBEDDING,
    RETRIEVAL,
    SCORES,
    SIGNATURE,
    SNAPSHOT_EMBEDDINGS,
    SNAPSHOT_QUERY_MODEL,
)
from recsys.core.ranking import HNSW_EF_SEARCH, hnsw_index
from recsys.core.tables import read_dataset

# Catalogs from this size on are searched with the HNSW graph (--ann-min-items).
ANN_MIN_ITEMS = 500_000


class ModelRetrieval:
    """The retrieval model's top-K, through the backend that serves it."""

    def __init__(self, backend):
        self.backend = backend
        self.signature = backend.signature(RETRIEVAL)

    def retrieve(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.backend.predict(RETRIEVAL, inputs)


class IndexRetrieval:
    """Query tower in this process, then an exact or HNSW item index."""

    def __init__(
        self,
        query_model_dir: str,
        item_embeddings: pd.DataFrame,
        top_k: int,
        ann_min_items: int = ANN_MIN_ITEMS,
        index_file: str = "",
    ):
        import tensorflow as tf

        self._local = contextlib.ExitStack()
        model = tf.saved_model.load(self._local.enter_context(storage.local_copy(query_model_dir)))
        self._embed = model.signatures[SIGNATURE]
        self._model = model  # the signature needs the object alive
        self.signature = self._embed.structured_input_signature[1]
        self.item_ids = item_embeddings[ITEM_ID].astype(str).to_numpy()
        self.items = np.ascontiguousarray(
            np.stack(item_embeddings["embedding"].to_numpy()), dtype=np.float32
        )
        self.top_k = min(top_k, len(self.item_ids))
        self.approximate = len(self.item_ids) >= ann_min_items
        self.index = self._hnsw(index_file) if self.approximate else self._exact()

    def _exact(self):
        """Exact inner-product search (faiss' flat index: BLAS and a heap, about
        twice as fast as a numpy product and argpartition on one core)."""
        import faiss

        index = faiss.IndexFlatIP(self.items.shape[1])
        index.add(self.items)
        return index

    def _hnsw(self, index_file: str):
        """The pushed graph if it indexes exactly these rows, else one built now."""
        import faiss

        if index_file and storage.exists(index_file):
            with storage.local_copy(index_file) as path:
                index = faiss.read_index(path)
            sample = np.linspace(0, len(self.items) - 1, num=min(64, len(self.items)), dtype=int)
            if index.ntotal == len(self.items) and np.allclose(
                np.stack([index.reconstruct(int(i)) for i in sample]), self.items[sample]
            ):
                index.hnsw.efSearch = self._ef_search()
                return index
        return hnsw_index(self.items, self._ef_search())

    def _ef_search(self) -> int:
        """Candidates the graph search keeps: at least twice the k asked for (recall@500
        at 1M items was 0.87 with 500 and 0.96 with 1,000, at 0.8 ms; docs/benchmarks.md)."""
        return max(HNSW_EF_SEARCH, 2 * self.top_k)

    def embed(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import tensorflow as tf

        outputs = self._embed(
            **{
                name: tf.constant(values, self.signature[name].dtype)
                for name, values in inputs.items()
            }
        )
        return np.ascontiguousarray(outputs[QUERY_EMBEDDING].numpy(), dtype=np.float32)

    def retrieve(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores, rows = self.index.search(self.embed(inputs), self.top_k)
        # A graph that finds fewer than k pads with -1: an id no snapshot holds, which
        # the funnel drops as it drops any candidate it has no features for.
        ids = np.where(rows >= 0, self.item_ids[np.maximum(rows, 0)], "")
        return {ITEM_IDS: ids.astype(object), SCORES: scores}

    def close(self) -> None:
        self._local.close()


def index_retrieval(snapshot_dir: str, top_k: int, **options) -> IndexRetrieval:
    """``IndexRetrieval`` over what a version pushed: its query model and embeddings."""
    query_model = storage.join(snapshot_dir, SNAPSHOT_QUERY_MODEL)
    if not storage.isdir(query_model):
        raise FileNotFoundError(
            f"{query_model} does not exist: this version was pushed without its query "
            "tower (before it was pushed); serve it with --retrieval model"
        )
    embeddings = storage.join(snapshot_dir, SNAPSHOT_EMBEDDINGS)
    index_file = storage.join(embeddings, ANN_INDEX_FILE)
    return IndexRetrieval(
        query_model, read_dataset(embeddings), top_k, index_file=index_file, **options
    )
