"""An item index's memory against its recall: exact, HNSW and IVF-PQ (faiss), for the
catalog sizing in docs/scale.md.

    .venv/bin/python bench/index_memory.py --items 1000000 --embeddings DIR

The catalog is drawn like bench/service_load.py's: a Gaussian fitted to a trained
item embedding table (``--embeddings``, a run's train-retrieval/item_embeddings), or
unit vectors when none is given, L2-normalised like the towers' outputs. Queries are
drawn the same way. For each index: bytes per item (the serialized index over the
items), build seconds, recall@500 of its top 500 against exact search, and the
search time per query on one core.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.common import log, machine  # noqa: E402
from recsys.core.ranking import recall_vs_exact  # noqa: E402

K = 500


def draw(n: int, mean: np.ndarray, cov: np.ndarray, rng) -> np.ndarray:
    vectors = rng.multivariate_normal(mean, cov, size=n).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main():
    import faiss

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--embeddings", help="a trained item embedding table to fit")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(31)
    if args.embeddings:
        from recsys.core.tables import read_dataset

        table = np.stack(read_dataset(args.embeddings)["embedding"].to_numpy())
        mean, cov = table.mean(axis=0), np.cov(table, rowvar=False)
    else:
        mean, cov = np.zeros(64), np.eye(64)
    items = draw(args.items, mean, cov, rng)
    queries = draw(args.queries, mean, cov, rng)
    dim = items.shape[1]
    exact = faiss.IndexFlatIP(dim)
    exact.add(items)
    _, truth = exact.search(queries, K)
    lists = int(4 * np.sqrt(args.items))
    kinds = {
        "exact (flat)": lambda: faiss.IndexFlatIP(dim),
        "HNSW, 32 links": lambda: faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT),
        f"IVF{lists}, PQ 32 bytes": lambda: faiss.index_factory(
            dim, f"IVF{lists},PQ32", faiss.METRIC_INNER_PRODUCT
        ),
        f"IVF{lists}, PQ 16 bytes": lambda: faiss.index_factory(
            dim, f"IVF{lists},PQ16", faiss.METRIC_INNER_PRODUCT
        ),
    }
    rows = []
    for name, make in kinds.items():
        log(f"{name}: building over {args.items:,} items")
        started = time.monotonic()
        index = make()
        if not index.is_trained:
            index.train(items[rng.choice(len(items), min(len(items), 100_000), replace=False)])
        index.add(items)
        build = time.monotonic() - started
        if hasattr(index, "hnsw"):
            index.hnsw.efSearch = 2 * K
        if hasattr(index, "nprobe"):
            index.nprobe = 64
        started = time.monotonic()
        _, found = index.search(queries, K)
        per_query = (time.monotonic() - started) / len(queries) * 1000
        size = len(faiss.serialize_index(index))
        rows.append((name, size / args.items, build, recall_vs_exact(found, truth), per_query))
    print(machine())
    print(f"{args.items:,} items, {dim}-d, {args.queries} queries, recall@{K} vs exact\n")
    print("| index | bytes per item | build s | recall@500 | ms per query |")
    print("|---|---:|---:|---:|---:|")
    for name, per_item, build, recall, ms in rows:
        print(f"| {name} | {per_item:,.0f} | {build:.0f} | {recall:.3f} | {ms:.1f} |")


if __name__ == "__main__":
    main()
