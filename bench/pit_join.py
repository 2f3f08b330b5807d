"""Point-in-time join: this Beam as-of join vs DuckDB ASOF LEFT JOIN vs pandas merge_asof.

    .venv/bin/python bench/pit_join.py --sizes 100k 1M 10M

Methods: ``beam-bucket`` (both sides hash-bucketed by key, the path for feature
tables of any size), ``beam-broadcast`` (the feature table indexed once and
joined onto every event batch, the default up to 5M feature rows), the bucketed
join on DirectRunner's multi-processing mode, ``beam-copy`` (read + write with
no join: the floor any Beam job pays here, including ~4 s of importing Beam),
DuckDB and pandas.

Per size, generated once: events (event_id, user_id, event_ts, clicked) and
feature snapshots (user_id, feature_ts, three values), both Parquet with 1M-row
row groups; event keys are Zipf-distributed (a few very hot users). Every
method runs in a fresh process, reads the same Parquet files and writes Parquet;
wall time covers read + join + write, peak memory is the largest summed RSS of
the method's process tree (Beam's multi-processing workers included), sampled
every 50 ms. Outputs are then compared row by row (sorted by event_id): every
method must produce the same feature values, and NULL exactly where this join
sets its missing flag. Results print as a Markdown table for docs/benchmarks.md.
"""

import argparse
import functools
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SIZES = {  # events, feature rows, entities
    "100k": (100_000, 10_000, 1_000),
    "1M": (1_000_000, 100_000, 10_000),
    "10M": (10_000_000, 1_000_000, 100_000),
}
VALUES = ["impressions_7d", "clicks_7d", "watch_seconds_7d"]
ROW_GROUP = 1_000_000
DAYS = 30
START = 1_700_000_000
METHODS = [
    "beam-bucket",
    "beam-broadcast",
    "beam-bucket-multiprocess",
    "beam-copy",
    "duckdb",
    "pandas",
]


def generate(directory: str, events: int, feature_rows: int, entities: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    keys = np.array([f"u{i:07d}" for i in range(entities)], dtype=object)
    # Zipf(1.1)-like popularity: the hottest user has ~10% of all events at 100k users.
    weights = 1.0 / np.arange(1, entities + 1) ** 1.1
    event_keys = rng.choice(entities, size=events, p=weights / weights.sum())
    event_table = pa.table(
        {
            "event_id": np.arange(events, dtype=np.int64),
            "user_id": pa.array(keys[event_keys], pa.string()),
            "event_ts": START + rng.integers(0, DAYS * 86_400, events),
            "clicked": rng.integers(0, 2, events),
        }
    )
    # Each entity gets feature_rows / entities snapshots at distinct random times
    # (no ties on feature_ts, which DuckDB and pandas would break arbitrarily).
    per_entity = feature_rows // entities
    offsets = np.sort(rng.choice(DAYS * 86_400, size=(entities, per_entity)), axis=1)
    offsets += np.arange(per_entity)  # strictly increasing within an entity
    feature_table = pa.table(
        {
            "user_id": pa.array(np.repeat(keys, per_entity), pa.string()),
            "feature_ts": (START - 86_400 + offsets).ravel().astype(np.int64),
            "impressions_7d": rng.integers(0, 500, entities * per_entity),
            "clicks_7d": rng.integers(0, 50, entities * per_entity),
            "watch_seconds_7d": rng.random(entities * per_entity) * 1e4,
        }
    )
    for name, table in (("events", event_table), ("features", feature_table)):
        os.makedirs(os.path.join(directory, name), exist_ok=True)
        pq.write_table(
            table, os.path.join(directory, name, "part-00000.parquet"), row_group_size=ROW_GROUP
        )


def run_duckdb(data: str, out: str, _args):
    import duckdb

    values = ", ".join(f"f.{v}" for v in VALUES)
    duckdb.sql(f"""
        COPY (SELECT e.*, {values}
              FROM read_parquet('{data}/events/*.parquet') e
              ASOF LEFT JOIN read_parquet('{data}/features/*.parquet') f
              ON e.user_id = f.user_id AND e.event_ts >= f.feature_ts)
        TO '{out}/part-00000.parquet' (FORMAT PARQUET)""")


def run_pandas(data: str, out: str, _args):
    import pandas as pd

    events = pd.read_parquet(f"{data}/events").sort_values("event_ts", kind="stable")
    features = pd.read_parquet(f"{data}/features").sort_values("feature_ts", kind="stable")
    joined = pd.merge_asof(
        events,
        features,
        left_on="event_ts",
        right_on="feature_ts",
        by="user_id",
        direction="backward",
    )
    pq.write_table(
        pa.Table.from_pandas(joined.drop(columns="feature_ts"), preserve_index=False),
        f"{out}/part-00000.parquet",
    )


def run_beam(data: str, out: str, beam_args: list[str], broadcast: bool = False, join: bool = True):
    import apache_beam as beam

    from recsys.components.features.beam_asof import AsOfJoin, FeatureView, SharedRows
    from recsys.components.features.join import read_rows
    from recsys.core.beam_io import ReadDataset, pipeline_options

    view = FeatureView("user_features", "user_id", tuple(VALUES))
    schema = pq.read_schema(glob.glob(f"{data}/events/*.parquet")[0])
    features_schema = pq.read_schema(glob.glob(f"{data}/features/*.parquet")[0])
    for name in VALUES:
        schema = schema.append(features_schema.field(name))
    schema = schema.append(pa.field(view.missing_flag, pa.int64()))
    with beam.Pipeline(options=pipeline_options(beam_args)) as pipeline:
        sides = {"events": pipeline | "Read[events]" >> ReadDataset(f"{data}/events", ROW_GROUP)}
        if join and not broadcast:
            sides["features"] = pipeline | "Read[features]" >> ReadDataset(
                f"{data}/features", ROW_GROUP
            )
        rows = SharedRows(functools.partial(read_rows, f"{data}/features")) if broadcast else None
        joined = (
            sides | AsOfJoin(view, shared_rows=rows)
            if join
            else sides["events"] | beam.Map(_without_join, view)
        )
        _ = (
            joined
            | beam.Map(lambda table: table.cast(schema)).with_output_types(pa.Table)
            | beam.io.WriteToParquetBatched(
                f"{out}/part", schema=schema, file_name_suffix=".parquet"
            )
        )


def _without_join(batch, view):
    """The events with all-missing feature columns: what Beam costs before any join."""
    table = pa.Table.from_batches([batch])
    for name in view.columns:
        table = table.append_column(name, pa.nulls(table.num_rows, pa.float64()))
    return table.append_column(view.missing_flag, pa.array(np.ones(table.num_rows, np.int64)))


MULTI_PROCESSING = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
RUNNERS = {
    "beam-bucket": (run_beam, []),
    "beam-broadcast": (functools.partial(run_beam, broadcast=True), []),
    "beam-bucket-multiprocess": (run_beam, MULTI_PROCESSING),
    "beam-copy": (functools.partial(run_beam, join=False), []),
    "duckdb": (run_duckdb, []),
    "pandas": (run_pandas, []),
}


def tree_rss_bytes(pid: int) -> int:
    """Summed resident memory of ``pid`` and all its descendants (from /proc)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                total += next(
                    int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:")
                )
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    stack += [int(c) for c in children.read().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def measure(method: str, data: str, out: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    command = [sys.executable, __file__, "--run", method, "--data", data, "--out", out]
    start, peak = time.perf_counter(), 0
    quiet = dict(os.environ, PYTHONWARNINGS="ignore")  # Google client deprecation noise
    process = subprocess.Popen(command, env=quiet)
    while process.poll() is None:
        peak = max(peak, tree_rss_bytes(process.pid))
        time.sleep(0.05)
    wall = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"{method} failed with exit code {process.returncode}")
    return {"method": method, "wall_s": round(wall, 2), "peak_rss_mb": round(peak / 2**20)}


def load_output(out: str):
    import pandas as pd

    frames = [pq.read_table(path).to_pandas() for path in sorted(glob.glob(f"{out}/*.parquet"))]
    return pd.concat(frames, ignore_index=True).sort_values("event_id").reset_index(drop=True)


def compare(reference, other, name: str) -> None:
    """Same events, same values; where the Beam join sets its missing flag (and
    fills defaults) DuckDB and pandas must have NULL."""
    missing = reference["user_features_missing"].to_numpy() == 1
    if (
        len(other) != len(reference)
        or not (other["event_id"].to_numpy() == reference["event_id"].to_numpy()).all()
    ):
        raise SystemExit(f"{name}: different events ({len(other)} vs {len(reference)} rows)")
    if "user_features_missing" in other:
        other = other.copy()
        other.loc[other["user_features_missing"].to_numpy() == 1, VALUES] = np.nan
    for column in VALUES:
        theirs, ours = other[column].to_numpy(dtype=float), reference[column].to_numpy(dtype=float)
        if not (np.isnan(theirs) == missing).all() or not np.allclose(
            theirs[~missing], ours[~missing]
        ):
            raise SystemExit(f"{name}: column {column} differs from the Beam join")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["100k", "1M", "10M"], choices=SIZES)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--workdir", default="/tmp/pit_join_bench")
    parser.add_argument("--run", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        function, beam_args = RUNNERS[args.run]
        function(args.data, args.out, beam_args)
        return

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}"
    )
    results = []
    for size in args.sizes:
        data = os.path.join(args.workdir, size, "data")
        if not os.path.isdir(os.path.join(data, "features")):
            generate(data, *SIZES[size])
        outputs = {}
        for method in args.methods:
            outputs[method] = os.path.join(args.workdir, size, method)
            result = measure(method, data, outputs[method]) | {"size": size}
            print(json.dumps(result), flush=True)
            results.append(result)
        joins = [m for m in args.methods if m != "beam-copy"]
        reference = load_output(outputs[joins[0]])
        for method in joins:
            compare(reference, load_output(outputs[method]), method)
        print(f"{size}: all outputs identical", flush=True)

    print("\n| size (events x feature rows x entities) | method | wall s | peak RSS MB |")
    print("|---|---|---:|---:|")
    for r in results:
        events, features, entities = SIZES[r["size"]]
        print(
            f"| {r['size']} ({events:,} x {features:,} x {entities:,}) | {r['method']} | "
            f"{r['wall_s']} | {r['peak_rss_mb']} |"
        )


if __name__ == "__main__":
    main()
