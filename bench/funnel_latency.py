"""Latency of the online funnel on one core: retrieval over a 100k-item catalog,
500 candidates ranked, 20 returned; p50/p95/p99 over 1,000 requests.

    .venv/bin/python bench/funnel_latency.py                       # build models, ~5 min
    .venv/bin/python bench/funnel_latency.py --serving-root work/serving --candidates 100

Without ``--serving-root`` it builds a serving root first: the synthetic
generator with ``--items`` items (500 users, 7 days), then the pipeline's own DAG
in process (ingest, join, transform, one epoch of each trainer, infra validation,
push; validate's checks and evaluate's gate are given, since quality is not what
is measured), retrieval exported with top_k = ``--candidates`` over the whole
catalog. Then a fresh process pins itself to one CPU
(``sched_setaffinity``) with TensorFlow's thread pools at one thread, and times
``Funnel.recommend`` for ``--requests`` requests of distinct users, after 20
warmup requests. Peers, in the same process and run: the same funnel with MMR
diversity on, and through TF Serving's gRPC and REST protocols served by the
stand-in in tests/tf_serving_double.py (the model server itself cannot be
installed here; client and stand-in share the one core, so this is the protocol
and serialization cost, not TF Serving's).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.common import log, machine  # noqa: E402

STEPS = ("retrieval", "ranking", "rerank")


def build_serving_root(root: str, items: int, candidates: int) -> str:
    """The pipeline's DAG in process on generated data, one epoch per trainer, with
    validate's checks and evaluate's gate given (quality is not what is measured)."""
    import json

    from recsys.app.generate import generate
    from recsys.core.schemas import SCHEMA_DIR
    from recsys.pipelines.in_process import run_in_process

    raw = os.path.join(root, "raw")
    log(f"generating 500 users x {items} items x 7 days")
    generate(raw, users=500, items=items, days=7)
    blessing = os.path.join(root, "blessing.json")
    with open(blessing, "w") as handle:
        json.dump({"blessed": True, "reason": "benchmark"}, handle)
    serving_root = os.path.join(root, "serving")
    log(
        "running the DAG: ingest, join, transform, one epoch of each trainer, infra "
        "validation, push"
    )
    run_in_process(
        os.path.join(root, "pipeline_root"),
        {
            "data_root": raw,
            "serving_root": serving_root,
            "lookback_days": 7,
            "eval_days": 2,
            "retrieval_epochs": 1,
            "retrieval_top_k": candidates,
            "retrieval_early_stopping_patience": 0,
            "ranking_epochs": 1,
        },
        given={"validate": {"schema": SCHEMA_DIR}, "evaluate": {"blessing": blessing}},
    )
    return serving_root


def percentiles(samples) -> dict:
    import numpy as np

    return {p: float(np.percentile(samples, p)) for p in (50, 95, 99)}


def measure(serving_root: str, k: int, requests: int) -> None:
    """Runs in its own process: one core, one TensorFlow thread per pool."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import tensorflow as tf

    import recsys  # noqa: F401  (prepares the process for TensorFlow)

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from dataclasses import replace

    import pandas as pd

    from recsys.serving import Context, Funnel, GrpcBackend, RerankConfig, RestBackend
    from tests.tf_serving_double import ServedModels, start_grpc, start_rest

    base = RerankConfig(k=k, max_per_creator=2)
    funnel = Funnel.from_serving_root(serving_root, rerank_config=base)
    users = list(funnel.features.user_index)
    users = (users * (requests // len(users) + 1))[: requests + 20]
    context = Context(pd.Timestamp.now(tz="UTC"))
    models = ServedModels(serving_root, ["retrieval", "ranking"])
    grpc_server, target = start_grpc(models)
    http_server, url = start_rest(models)
    peers = {
        "in process": funnel,
        "in process, MMR lambda 0.8": Funnel.from_serving_root(
            serving_root, rerank_config=replace(base, mmr_lambda=0.8)
        ),
        "gRPC (stand-in server, same core)": Funnel.from_serving_root(
            serving_root, backend=GrpcBackend(target, timeout_seconds=10), rerank_config=base
        ),
        "REST (stand-in server, same core)": Funnel.from_serving_root(
            serving_root, backend=RestBackend(url, timeout_seconds=10), rerank_config=base
        ),
    }
    print(f"{machine()}; pinned to 1 CPU, TF intra/inter-op threads 1")
    retrieved = funnel.backend.predict("retrieval", _one_query(funnel, users[0], context))
    print(
        f"catalog {len(funnel.features.item_index):,} items, retrieval top "
        f"{retrieved['item_ids'].shape[1]} candidates ranked, {k} returned, {requests} "
        "requests (after 20 warmup)\n"
    )
    print("| path | p50 ms | p95 ms | p99 ms | retrieval p50 | ranking p50 | rerank p50 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, peer in peers.items():
        totals, steps = [], {step: [] for step in STEPS}
        for number, user in enumerate(users):
            started = time.perf_counter()
            result = peer.recommend(user, context)
            elapsed = (time.perf_counter() - started) * 1000
            if number >= 20:
                totals.append(elapsed)
                for step in STEPS:
                    steps[step].append(result.milliseconds[step])
            assert len(result.items) == k, (name, user, result.removed)
        total = percentiles(totals)
        print(
            f"| {name} | {total[50]:.1f} | {total[95]:.1f} | {total[99]:.1f} | "
            + " | ".join(f"{percentiles(steps[s])[50]:.1f}" for s in STEPS)
            + " |",
            flush=True,
        )
    grpc_server.stop(None)
    http_server.shutdown()


def _one_query(funnel, user, context):
    from recsys.core.requests import raw_arrays

    return raw_arrays(
        {**funnel.features.user(user)[0], **context.columns()}, funnel.retrieval_signature
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serving-root", help="measure this pushed root instead of building one")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_only:
        measure(args.serving_root, args.k, args.requests)
        return 0
    with tempfile.TemporaryDirectory() as root:
        serving_root = args.serving_root or build_serving_root(root, args.items, args.candidates)
        log(f"measuring {serving_root} in a fresh process on one core")
        return subprocess.call(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--measure-only",
                "--serving-root",
                serving_root,
                "--k",
                str(args.k),
                "--requests",
                str(args.requests),
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
