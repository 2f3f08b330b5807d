"""The Beam stages on DirectRunner and on PortableRunner (Beam's job service with an
external SDK worker pool), timed in the same run on the same data, outputs compared.

    .venv/bin/python bench/portable_runner.py                 # the `make run` sample
    .venv/bin/python bench/portable_runner.py --users 300 --items 120 --days 10

The sample is generated, then the pipeline's own DAG runs in process up to
transform (on DirectRunner) to give each stage its inputs. Each Beam stage then
runs once per runner: the join (broadcast, and bucketed with the history
bucketed too), TFDV statistics of train and eval examples, and TFT
analyze+transform. Each timing is the stage's wall clock, job submission and
worker start included; the outputs are compared as tests/test_portable_runner.py
does. Both runners share the machine's cores; the job service runs one SDK worker.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.common import log, machine  # noqa: E402
from recsys.app.generate import generate  # noqa: E402
from recsys.components.features import join  # noqa: E402
from recsys.components.features.config import JoinConfig  # noqa: E402
from recsys.components.features.transform import transform  # noqa: E402
from recsys.components.validate.validate import compute_statistics  # noqa: E402
from recsys.core.contracts import (  # noqa: E402
    EVAL_EXAMPLES,
    ITEM_SNAPSHOT,
    JOIN_INPUTS,
    TRAIN_EXAMPLES,
    USER_SNAPSHOT,
)
from recsys.core.tables import read_dataset  # noqa: E402
from recsys.pipelines.in_process import run_in_process  # noqa: E402
from tests.servers import beam_portable_runner  # noqa: E402

JOINED = (TRAIN_EXAMPLES, EVAL_EXAMPLES, USER_SNAPSHOT, ITEM_SNAPSHOT)


def same_rows(left: str, right: str) -> bool:
    frames = [read_dataset(d) for d in (left, right)]
    frames = [f.apply(lambda c: c.map(repr) if c.dtype == object else c) for f in frames]
    frames = [f.sort_values(list(f.columns), ignore_index=True) for f in frames]
    return frames[0].equals(frames[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)  # the sample `make run` uses
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--days", type=int, default=14)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-portable-")
    data = os.path.join(work, "data")
    generate(data, users=args.users, items=args.items, days=args.days, seed=1)
    log("running the DAG up to transform on DirectRunner for the stages' inputs")
    run = run_in_process(
        os.path.join(work, "pipeline_root"),
        {"data_root": data, "serving_root": "", "lookback_days": min(args.days, 14)},
        stop_after="transform_features",
    )
    paths, as_of = run.paths(), int(run.artifact("ingest", "ingest_metrics").metadata["as_of"])
    inputs = {name: paths[name] for name in JOIN_INPUTS}
    examples = {name: paths[name] for name in ("train_examples", "eval_examples")}

    def join_stage(strategy: str, beam_args: str, out: str) -> str:
        views = {v: {"join": strategy} for v in ("user_features", "item_features")}
        maximum = join.HISTORY_BROADCAST_MAX_ROWS  # the views follow their "join"
        join.HISTORY_BROADCAST_MAX_ROWS = 0 if strategy == "bucket" else maximum
        try:
            outputs = {name: os.path.join(out, name) for name in JOINED}
            join.join_features(inputs, as_of, "", outputs, JoinConfig(json.dumps(views)), beam_args)
        finally:
            join.HISTORY_BROADCAST_MAX_ROWS = maximum
        return outputs[TRAIN_EXAMPLES]

    def statistics_stage(beam_args: str, out: str):
        return compute_statistics(examples, out, beam_args)

    def transform_stage(beam_args: str, out: str) -> str:
        outputs = {split: os.path.join(out, f"transformed_{split}") for split in ("train", "eval")}
        transform(
            paths["train_examples"],
            paths["eval_examples"],
            paths["schema"],
            os.path.join(out, "graph"),
            outputs,
            os.path.join(out, "tmp"),
            beam_args,
        )
        return outputs["train"]

    stages = {
        "join, broadcast": lambda a, o: join_stage("broadcast", a, o),
        "join, bucketed": lambda a, o: join_stage("bucket", a, o),
        "TFDV statistics": statistics_stage,
        "TFT analyze+transform": transform_stage,
    }
    rows = []
    with beam_portable_runner(work) as portable:
        for name, stage in stages.items():
            results, seconds = {}, {}
            for runner, beam_args in (("direct", "[]"), ("portable", portable)):
                log(f"{name} on {runner}")
                started = time.perf_counter()
                results[runner] = stage(beam_args, os.path.join(work, f"{name}-{runner}"))
                seconds[runner] = time.perf_counter() - started
            equal = (
                results["direct"] == results["portable"]
                if isinstance(results["direct"], dict)
                else same_rows(results["direct"], results["portable"])
            )
            rows.append((name, seconds["direct"], seconds["portable"], equal))
    print(f"{args.users} users, {args.items} items, {args.days} days; " + machine())
    print(f"train examples: {len(read_dataset(paths['train_examples']))} rows")
    print("| stage | DirectRunner s | PortableRunner s | same output |")
    print("|---|---|---|---|")
    for name, direct, portable, equal in rows:
        print(f"| {name} | {direct:.1f} | {portable:.1f} | {'yes' if equal else 'NO'} |")
    return 0 if all(row[3] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
