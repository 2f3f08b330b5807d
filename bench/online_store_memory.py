"""The online feature store's memory per user: a pushed user snapshot materialized
into a real Redis (``RedisStore``, as `recsys serve --feature-store redis://...`
writes it), for the sizing in docs/scale.md.

    .venv/bin/python bench/online_store_memory.py \
        --snapshot SERVING_ROOT/feature_snapshot/1 --users 200000

The snapshot's user rows are repeated under new ids up to ``--users`` (same
columns and values, ids as long as the sample's), then materialized; Redis'
``used_memory`` before and after, divided by the users, is the bytes per user:
the JSON row, the key, and Redis' per-key overhead with an expiry. Then the
newest events of each user (``add_events``, the store's capped list) for
``--events-per-user`` events, measured the same way.
"""

import argparse
import os
import sys
import tempfile

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.common import log, machine  # noqa: E402
from recsys.core import contracts  # noqa: E402
from recsys.core.tables import read_dataset  # noqa: E402
from recsys.serving.online_store import RedisStore  # noqa: E402
from recsys.serving.snapshot import FeatureSnapshot  # noqa: E402
from tests.servers import redis_server  # noqa: E402


def used_memory(store: RedisStore) -> int:
    return int(store.bulk.info("memory")["used_memory"])


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--snapshot", required=True, help="a pushed feature_snapshot/<version>")
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--events-per-user", type=int, default=10)
    args = parser.parse_args()

    sample = read_dataset(os.path.join(args.snapshot, contracts.SNAPSHOT_USERS))
    rng = np.random.default_rng(0)
    users = sample.iloc[rng.integers(0, len(sample), args.users)].reset_index(drop=True)
    width = int(sample[contracts.USER_ID].astype(str).str.len().median())
    users[contracts.USER_ID] = [f"u{index:0{width - 1}d}" for index in range(args.users)]
    items = pd.DataFrame({contracts.ITEM_ID: ["i0"]})
    snapshot = FeatureSnapshot(users, items)

    with tempfile.TemporaryDirectory() as directory, redis_server(directory) as (url, _):
        store = RedisStore(url)
        before = used_memory(store)
        log(f"materializing {args.users:,} user rows ({len(users.columns)} columns)")
        store.prepare("1", snapshot)
        rows = used_memory(store) - before
        row_json = users.head(1000).to_json(orient="records", lines=True)
        events = pd.DataFrame(
            {
                contracts.USER_ID: np.repeat(users[contracts.USER_ID], args.events_per_user),
                contracts.ITEM_ID: "i0000000",
                contracts.EVENT_TS: 1_760_000_000,
                contracts.CLICKED: 1,
                contracts.WATCH_SECONDS: 30.0,
            }
        )
        before_events = used_memory(store)
        log(f"adding {len(events):,} events ({args.events_per_user} per user)")
        for start in range(0, len(events), 100_000):
            store.add_events(events.iloc[start : start + 100_000])
        recent = used_memory(store) - before_events
        store.close()
    print(machine())
    print(f"{args.users:,} users, {len(users.columns)} feature columns, ids of {width} chars\n")
    print("| what | bytes per user |")
    print("|---|---:|")
    print(f"| a user's row as JSON (the value alone, mean) | {len(row_json) / 1000:.0f} |")
    print(f"| the row in Redis (key, value, expiry, overhead) | {rows / args.users:.0f} |")
    print(
        f"| the newest {args.events_per_user} events in Redis (capped list) "
        f"| {recent / args.users:.0f} |"
    )


if __name__ == "__main__":
    main()
