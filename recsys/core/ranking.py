"""Top-k selection over score matrices, and the approximate item index: shared by
the retrieval trainer (its ANN index and that index's recall against exact
search), evaluation (full-catalog rankings) and the service's retrieval."""

import numpy as np


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k highest scores, best first (argpartition: of
    items tied at the k-th score, any may be chosen)."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


# A faiss HNSW graph's settings (faiss' names): neighbours per node, and how many
# candidates insertion and search keep (higher: better recall, slower).
HNSW_NEIGHBOURS, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128


def hnsw_index(items: np.ndarray, ef_search: int = HNSW_EF_SEARCH):
    """An approximate inner-product index over the rows of ``items`` (faiss HNSW):
    what retrieval uses past about a million items, where exact search scores the
    whole catalog on every request. Row i of the index is row i of ``items``."""
    import faiss

    items = np.ascontiguousarray(items, dtype=np.float32)
    index = faiss.IndexHNSWFlat(items.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.hnsw.efSearch = ef_search
    index.add(items)
    return index


def recall_vs_exact(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each exact top-k list that the approximate list also returns."""
    found = [len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approximate, exact, strict=True)]
    return float(np.mean(found) / exact.shape[1])
