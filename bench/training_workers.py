"""Training examples per second with 1 and 2 workers (MultiWorkerMirroredStrategy,
local processes on loopback ports), both trainers, on the same transformed data.

    .venv/bin/python bench/training_workers.py --scale 10   # generate, then ingest .. transform
    .venv/bin/python bench/training_workers.py --transformed DIR --item-snapshot DIR

The rate that scales with the data is the steady one, after the first epoch (which
also traces the graph and, with two workers, sets up the cluster): examples of an
epoch over the seconds of the later epochs. Each configuration runs in fresh worker
processes; on 2 cores two workers share the machine, so the gain measured here is
what all-reduce on one host leaves, not what separate machines would give.
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.common import log, machine  # noqa: E402
from recsys.components.train_ranking.config import RankingConfig  # noqa: E402
from recsys.components.train_retrieval.config import RetrievalConfig  # noqa: E402
from recsys.core import distributed  # noqa: E402
from recsys.core.limits import SHUFFLE_BUFFER  # noqa: E402

TRAINERS = {
    "train_ranking": (
        "recsys.components.train_ranking.train_ranking:run",
        RankingConfig(epochs=3),
        ("ranking_model", "checkpoint"),
    ),
    "train_retrieval": (
        "recsys.components.train_retrieval.train_retrieval:run",
        RetrievalConfig(epochs=3, early_stopping_patience=0),
        ("retrieval_model", "query_model", "item_embeddings", "checkpoint"),
    ),
}


def transformed_run(scale: int, workdir: str) -> str:
    """A run's transform-features directory of the sample at ``scale`` (the DAG in
    process up to the transform)."""
    from recsys.app.generate import generate
    from recsys.pipelines.in_process import run_in_process

    data = os.path.join(workdir, "data")
    generate(data, users=2000 * scale, items=400 * scale)
    run = run_in_process(
        os.path.join(workdir, "root"),
        {"data_root": data, "serving_root": os.path.join(workdir, "serving")},
        stop_after="transform_features",
    )
    paths = run.paths()
    return os.path.dirname(paths["transformed_train"]), paths["item_snapshot"]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transformed", help="a run's transform-features directory")
    parser.add_argument("--item-snapshot", help="that run's join-features/item_snapshot")
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="bench-workers-")
    if args.transformed:
        transformed, snapshot = args.transformed, args.item_snapshot
    else:
        transformed, snapshot = transformed_run(args.scale, workdir)
    rows = []
    for stage, (function, config, outputs) in TRAINERS.items():
        for workers in args.workers:
            out = os.path.join(workdir, f"{stage}-{workers}")
            job = {
                "transformed_train": os.path.join(transformed, "transformed_train"),
                "transformed_eval": os.path.join(transformed, "transformed_eval"),
                "transform_graph": os.path.join(transformed, "transform_graph"),
                "item_snapshot": snapshot,
                "config": dataclasses.asdict(config),
                "schema_dir": "",
                "warm_start_dir": "",
                "shuffle_buffer": SHUFFLE_BUFFER,
                "consumed_impressions": False,  # the synthetic log's impressions were shown
                "metrics_path": os.path.join(out, "metrics.json"),
                **{name: os.path.join(out, name) for name in outputs},
            }
            log(f"{stage} on {workers} worker(s)")
            started = time.monotonic()
            if workers == 1:
                metrics = distributed.call(function, job)
            else:
                metrics = distributed.run_local(function, job, workers, stage, 6 * 3600)
            quality = metrics.get("val_recall_at_50", metrics.get("final_eval_auc"))
            rows.append(
                (
                    stage,
                    workers,
                    metrics["steady_examples_per_second"],
                    metrics["examples_per_second"],
                    time.monotonic() - started,
                    quality,
                )
            )
    print(machine())
    print(f"data: {transformed}\n")
    print(
        "| trainer | workers | steady examples/s | examples/s incl. first epoch "
        "| wall s | quality |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for stage, workers, steady, overall, wall, quality in rows:
        print(
            f"| {stage} | {workers} | {steady:,.0f} | {overall:,.0f} | {wall:.0f} | {quality:.4f} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
