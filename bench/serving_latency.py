"""Latency of the online path on pushed models: retrieval, ranking, re-ranking.

    .venv/bin/python bench/serving_latency.py --serving-root work/serving [--requests 300]

Loads the newest pushed version the way `recsys recommend` does (SavedModels in
this process; TF Serving itself is not installed here, so there is no RPC hop)
and times, per request of one user: retrieval alone, and the whole
retrieve -> rank -> re-rank path. Prints p50/p95/p99 in milliseconds.
"""

import argparse
import os
import platform
import time

import recsys  # noqa: F401

import numpy as np
import pandas as pd

from recsys import modeling
from recsys.serving import Recommender


def percentiles(samples_ms):
    return {p: float(np.percentile(samples_ms, p)) for p in (50, 95, 99)}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serving-root", default="work/serving")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    recommender = Recommender.load(args.serving_root)
    users = recommender.users.index.to_numpy()[: args.requests]
    signature = recommender.retrieve.structured_input_signature[1]
    for user in users[:10]:  # warm up both models
        recommender.recommend(user, k=args.k)

    retrieval_ms, full_ms = [], []
    for user in users:
        started = time.perf_counter()
        request = recommender.user_row(user, pd.Timestamp.now(tz="UTC"))
        recommender.retrieve(**modeling.raw_tensors(request, signature))
        retrieval_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        recommender.recommend(user, k=args.k)
        full_ms.append((time.perf_counter() - started) * 1000)

    print(f"model version {recommender.version}, {len(recommender.items)} items, "
          f"{len(users)} requests of one user; {os.cpu_count()} cores, {platform.platform()}")
    print("\n| path | p50 ms | p95 ms | p99 ms |\n|---|---:|---:|---:|")
    for name, samples in (("retrieval only (top-K)", retrieval_ms),
                          ("retrieve -> rank -> re-rank", full_ms)):
        p = percentiles(samples)
        print(f"| {name} | {p[50]:.1f} | {p[95]:.1f} | {p[99]:.1f} |")


if __name__ == "__main__":
    main()
