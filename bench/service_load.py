"""Load test of `recsys serve` on loopback: the service pinned to one core, a
bounded closed-loop load generator (and a fixed-rate one) on the other.

    .venv/bin/python bench/service_load.py                      # builds the roots, ~25 min
    .venv/bin/python bench/service_load.py --serving-root R     # an existing 100k-item root

Catalogs. Without ``--serving-root`` the 100,000-item root is built as
bench/funnel_latency.py builds it (the pipeline's own DAG in process on generated
data, one epoch per trainer, retrieval top-``--candidates``). The 1,000,000-item
catalog is that root with 900,000 more items: copies of random items' features
under new ids, with embeddings drawn from a Gaussian fitted to the trained ones
(normalised like them), and an HNSW graph over all of them written beside the
embeddings (so the service loads it rather than building it). The models are
the same; only the catalog the index searches grows.

Peers, each a fresh `recsys serve` process pinned to one core (``taskset``
semantics via ``sched_setaffinity``, TensorFlow's pools at one thread, OpenMP at
one thread), in-process models, the embedded feature store:

- 100k items, item index (exact search: one matrix product);
- 100k items, the retrieval model's own top-K (the brute-force index inside the
  SavedModel: what TF Serving would run);
- 1M items, exact search (why an ANN index is needed);
- 1M items, HNSW (its recall@K against exact search is measured on 1,000 users).

For each: closed-loop clients at each ``--concurrency`` level (each sends its next
request when the last answered; ``--requests`` per level or ``--seconds``, whichever
ends first), then each of ``--rates`` requests/s on a fixed schedule for ``--rate-seconds``
(latency counted from the scheduled time, so a slow answer delays no one's clock).
Per-stage times are the service's own (the response's ``milliseconds``).
"""

import argparse
import http.client
import json
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.common import log, machine  # noqa: E402
from bench.funnel_latency import build_serving_root  # noqa: E402
from recsys.core.ranking import HNSW_EF_SEARCH  # noqa: E402
from tests.servers import free_port, server  # noqa: E402

STAGES = ("features", "retrieval", "ranking", "rerank")
# The service process: one core, one thread per TensorFlow pool, then the CLI.
PINNED_SERVE = (
    "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); "
    "import recsys; import tensorflow as tf; "
    "tf.config.threading.set_intra_op_parallelism_threads(1); "
    "tf.config.threading.set_inter_op_parallelism_threads(1); "
    "from recsys.app.cli import main; main(sys.argv[2:])"
)


def expand_catalog(source_root: str, root: str, items: int, seed: int = 0) -> str:
    """A copy of ``source_root`` whose served snapshot has ``items`` items (see the
    module's docstring), with its HNSW graph. Returns the new root."""
    import faiss
    import pandas as pd

    from recsys.core.contracts import ANN_INDEX_FILE, ITEM_ID, SNAPSHOT_DIR, SNAPSHOT_EMBEDDINGS
    from recsys.core.contracts import SNAPSHOT_ITEMS as ITEMS
    from recsys.core.ranking import hnsw_index
    from recsys.core.tables import read_dataset, write_dataset
    from recsys.serving.serving_root import served_version

    shutil.copytree(source_root, root)
    snapshot = os.path.join(root, SNAPSHOT_DIR, str(served_version(root, "retrieval")))
    catalog = read_dataset(os.path.join(snapshot, ITEMS))
    embeddings = read_dataset(os.path.join(snapshot, SNAPSHOT_EMBEDDINGS))
    rng = np.random.default_rng(seed)
    extra = items - len(catalog)
    new_ids = np.array([f"synthetic{n:07d}" for n in range(extra)], dtype=object)
    more = catalog.iloc[rng.integers(0, len(catalog), extra)].reset_index(drop=True)
    more[ITEM_ID] = new_ids
    # New embeddings drawn from a Gaussian fitted to the trained ones, normalised as
    # they are. Not noisy copies of real items: a catalog of tight clusters of
    # near-duplicates fragments the HNSW graph (recall@500 fell to 0.04 on one).
    vectors = np.stack(embeddings["embedding"].to_numpy()).astype(np.float32)
    drawn = rng.multivariate_normal(vectors.mean(0), np.cov(vectors.T), extra).astype(np.float32)
    drawn /= np.linalg.norm(drawn, axis=1, keepdims=True)
    all_vectors = np.concatenate([vectors, drawn])
    for name, frame in (
        (ITEMS, pd.concat([catalog, more], ignore_index=True)),
        (
            SNAPSHOT_EMBEDDINGS,
            pd.DataFrame(
                {
                    ITEM_ID: np.concatenate([embeddings[ITEM_ID].to_numpy(), new_ids]),
                    "embedding": list(all_vectors),
                }
            ),
        ),
    ):
        shutil.rmtree(os.path.join(snapshot, name))
        write_dataset(frame, os.path.join(snapshot, name))
    log(f"building the HNSW graph over {len(all_vectors):,} items")
    faiss.write_index(
        hnsw_index(all_vectors), os.path.join(snapshot, SNAPSHOT_EMBEDDINGS, ANN_INDEX_FILE)
    )
    return root


class Client:
    """One keep-alive connection; ``recommend`` returns (ms, status, body)."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def recommend(self, user: str, k: int):
        body = json.dumps({"user_id": user, "k": k})
        started = time.perf_counter()
        self.connection.request("POST", "/v1/recommend", body, {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        data = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        return elapsed, response.status, json.loads(data) if response.status == 200 else data


def closed_loop(port, users, k, clients, requests, seconds):
    """``clients`` threads, each sending its next request when the last answered."""
    results, lock = [], threading.Lock()
    deadline = time.monotonic() + seconds
    per_client = requests // clients

    def run(number):
        client = Client(port)
        for i in range(per_client):
            if time.monotonic() > deadline:
                return
            outcome = client.recommend(users[(number * per_client + i) % len(users)], k)
            with lock:
                results.append(outcome)

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.monotonic() - started


def fixed_rate(port, users, k, rate, seconds, clients=16):
    """``rate`` requests/s on a fixed schedule; latency from the scheduled time."""
    results, lock = [], threading.Lock()
    total = int(rate * seconds)
    start = time.perf_counter() + 0.5
    schedule = iter(range(total))
    take = threading.Lock()

    def run():
        client = Client(port)
        while True:
            with take:
                n = next(schedule, None)
            if n is None:
                return
            due = start + n / rate
            time.sleep(max(due - time.perf_counter(), 0))
            _, status, body = client.recommend(users[n % len(users)], k)
            late = (time.perf_counter() - due) * 1000
            with lock:
                results.append((late, status, body))

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - start


def summary(results, elapsed) -> dict:
    latencies = np.array([r[0] for r in results])
    ok = [r[2] for r in results if r[1] == 200]
    stages = {
        stage: float(np.percentile([body["milliseconds"][stage] for body in ok], 50))
        for stage in STAGES
    }
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "throughput": len(results) / elapsed,
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
        **{f"{stage} p50": value for stage, value in stages.items()},
    }


def ready(port: int, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/readyz")
            response = connection.getresponse()
            if response.status == 200:
                return json.loads(response.read())
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the service on port {port} was not ready within {timeout} s")


def hnsw_recall(root: str, users: list[str], top_k: int) -> float:
    """Recall@top_k of the HNSW graph against exact search, on these users' queries."""
    import pandas as pd

    from recsys.core.contracts import SNAPSHOT_DIR
    from recsys.core.requests import raw_arrays
    from recsys.serving import Context
    from recsys.serving.retrieval import index_retrieval
    from recsys.serving.snapshot import FeatureSnapshot

    snapshot_dir = os.path.join(root, SNAPSHOT_DIR, "1")
    features = FeatureSnapshot.load(snapshot_dir)
    rows = features.user_index.get_indexer(users)
    queries = {name: values[rows] for name, values in features.users.items()}
    context = Context(pd.Timestamp.now(tz="UTC")).columns()
    queries.update({name: np.repeat(values, len(rows)) for name, values in context.items()})
    exact = index_retrieval(snapshot_dir, top_k, ann_min_items=10**12)
    approximate = index_retrieval(snapshot_dir, top_k, ann_min_items=0)
    truth = exact.retrieve(raw_arrays(queries, exact.signature))["item_ids"]
    found = approximate.retrieve(raw_arrays(queries, approximate.signature))["item_ids"]
    return float(np.mean([len(set(a) & set(b)) / top_k for a, b in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serving-root", help="an existing 100k-item serving root")
    parser.add_argument("--work", help="where to build roots (default: a temporary dir)")
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--requests", type=int, default=1000, help="per concurrency level")
    parser.add_argument("--seconds", type=float, default=60, help="limit per level")
    parser.add_argument("--rates", default="25,50,100", help="fixed request rates (per second)")
    parser.add_argument("--rate-seconds", type=float, default=20)
    parser.add_argument("--million", type=int, default=1_000_000, help="0: skip the big catalog")
    args = parser.parse_args()

    work = args.work or tempfile.mkdtemp(prefix="service-load-")
    root = args.serving_root or os.path.join(work, "serving")
    if not args.serving_root:
        build_serving_root(work, 100_000, args.candidates)
    peers = [
        ("100k items, item index (exact)", root, ["--retrieval", "index"]),
        ("100k items, retrieval model's top-K", root, ["--retrieval", "model"]),
    ]
    big = os.path.join(work, "serving-1m")
    if args.million:
        if not os.path.isdir(big):
            log(f"expanding the catalog to {args.million:,} items")
            expand_catalog(root, big, args.million)
        exact = ["--retrieval", "index", "--ann-min-items", str(10**12)]
        peers += [
            ("1M items, exact search", big, exact),
            ("1M items, HNSW", big, ["--retrieval", "index"]),
        ]

    from recsys.core.tables import read_dataset

    users = list(read_dataset(os.path.join(root, "feature_snapshot", "1", "users"))["user_id"])
    cores = sorted(os.sched_getaffinity(0))
    service_core, client_cores = cores[0], set(cores[1:]) or {cores[0]}
    levels = [int(level) for level in args.concurrency.split(",")]
    rates = [float(rate) for rate in args.rates.split(",")]
    rows = []
    for name, serving_root, options in peers:
        port = free_port()
        command = [sys.executable, "-c", PINNED_SERVE, str(service_core), "serve",
                   "--serving-root", serving_root, "--port", str(port), "--log-level", "warning",
                   *options]  # fmt: skip
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}
        log(f"{name}: starting the service on core {service_core}")
        with server(command, port, os.path.join(work, f"serve-{port}.log"), environment):
            loaded = time.monotonic()
            ready(port)
            log(f"{name}: ready after {time.monotonic() - loaded:.0f} s")
            os.sched_setaffinity(0, client_cores)
            closed_loop(port, users, args.k, 1, 50, 60)  # warm the connection path
            for clients in levels:
                results, elapsed = closed_loop(
                    port, users, args.k, clients, args.requests, args.seconds
                )
                rows.append((name, f"closed loop, {clients} clients", summary(results, elapsed)))
                log(f"{name}: {rows[-1][1]}: {rows[-1][2]}")
            for rate in rates:
                results, elapsed = fixed_rate(port, users, args.k, rate, args.rate_seconds)
                rows.append((name, f"fixed {rate:g} requests/s", summary(results, elapsed)))
                log(f"{name}: {rows[-1][1]}: {rows[-1][2]}")
            os.sched_setaffinity(0, set(cores))

    print(f"{machine()}; service pinned to core {service_core}, load generator on the others")
    print(f"{args.candidates} candidates ranked, k={args.k}, embedded feature store, in process\n")
    print(
        "| catalog and retrieval | load | requests | errors | req/s | p50 ms | p99 ms | "
        + " | ".join(f"{stage} p50" for stage in STAGES)
        + " |"
    )
    print("|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(STAGES))
    for name, load, s in rows:
        print(
            f"| {name} | {load} | {s['requests']} | {s['errors']} | {s['throughput']:.0f} | "
            f"{s['p50']:.1f} | {s['p99']:.1f} | "
            + " | ".join(f"{s[f'{stage} p50']:.1f}" for stage in STAGES)
            + " |"
        )
    if args.million:
        recall = hnsw_recall(big, users[:1000], args.candidates)
        print(
            f"\nHNSW recall@{args.candidates} against exact search, 1,000 users' queries, "
            f"efSearch {max(HNSW_EF_SEARCH, 2 * args.candidates)}: {recall:.3f}"
        )


if __name__ == "__main__":
    main()
