"""The detection table: each data fault injected into clean generated data, and
what the pipeline's data checks do with it; plus false alarms on clean data.

    .venv/bin/python bench/validation_detection.py [--users 300] [--seeds 5]

Every scenario runs `recsys check`'s code path (ingest with the data contract,
the point-in-time join, validate) on one span; drift scenarios compare with the
clean data's previous span. Prints a Markdown table for docs/data_validation.md.
"""

import argparse
import os
import platform
import re
import shutil
import tempfile
import time

import numpy as np
import pandas as pd

from recsys.app.data_check import check_span
from recsys.app.generate import generate
from recsys.components.validate.validate import ValidationFailed, find_baseline
from recsys.core.tables import DataError

BASELINE_AS_OF, AS_OF = "2026-01-14", "2026-01-15"  # spans: days 8 and 9


def _edit(data, table, change, csv=False):
    """Rewrite raw table ``table`` with ``change`` applied (as CSV if asked)."""
    path = os.path.join(data, f"{table}.parquet")
    frame = change(pd.read_parquet(path))
    if csv:
        os.remove(path)
        frame.to_csv(
            os.path.join(data, f"{table}.csv"),
            index=False,
            encoding="latin-1" if csv == "latin-1" else "utf-8",
        )
    else:
        frame.to_parquet(path, index=False)


def _some(frame, share=0.005):
    """Every (1/share)-th row from row 7: a sprinkling of bad rows."""
    return frame.index[7 :: int(1 / share)]


def _set(column, value, share=0.005, text=False):
    def change(frame):
        if text:
            frame[column] = frame[column].astype(str)
        frame[column] = frame[column].astype(object)
        frame.loc[_some(frame, share), column] = value
        return frame

    return change


SCENARIOS = {
    # name: (generate kwargs, raw edit or None, what the fault is)
    "new column": ({}, ("impressions", lambda f: f.assign(referrer="push"), False)),
    "missing column": ({}, ("users", lambda f: f.drop(columns=["device"]), False)),
    "wrong type (a few rows)": ({}, ("impressions", _set("watch_seconds", "12.5s"), True)),
    "wrong type (whole column)": (
        {},
        (
            "impressions",
            lambda f: f.assign(watch_seconds=f["watch_seconds"].map(lambda s: f"{s}s")),
            True,
        ),
    ),
    "out-of-domain string": ({}, ("users", _set("device", "smart_tv", share=0.1), False)),
    "out-of-range number": ({}, ("impressions", _set("clicked", 3), False)),
    "NaN / inf": (
        {},
        (
            "impressions",
            lambda f: f.assign(
                watch_seconds=np.where(
                    np.arange(len(f)) % 400 == 7,
                    np.nan,
                    np.where(np.arange(len(f)) % 400 == 9, np.inf, f["watch_seconds"]),
                )
            ),
            False,
        ),
    ),
    "label present in serving": ({}, ("serving_log", lambda f: f.assign(clicked=0), False)),
    "duplicate event ids": (
        {},
        (
            "impressions",
            lambda f: f.assign(
                event_id=np.where(
                    np.arange(len(f)) % 200 == 7, f["event_id"].iloc[0], f["event_id"]
                )
            ),
            False,
        ),
    ),
    "future timestamps": (
        {},
        (
            "impressions",
            lambda f: f.assign(
                event_ts=f["event_ts"].where(
                    np.arange(len(f)) % 200 != 7, pd.Timestamp("2099-01-01", tz="UTC")
                )
            ),
            False,
        ),
    ),
    "latin-1 text": (
        {},
        (
            "impressions",
            lambda f: f.assign(
                user_id=np.where(np.arange(len(f)) % 200 == 7, f["user_id"] + "ü", f["user_id"])
            ),
            "latin-1",
        ),
    ),
    "categorical skew": ({"skew": "device", "skew_day": 7}, None),
    "numeric skew": ({"skew": "watch_minutes", "skew_day": 7}, None),
    "categorical drift": ({"drift": "category", "drift_day": 9}, None),
    "numeric drift": ({"drift": "numeric", "drift_day": 9}, None),
    "example-count drop": ({"drift": "volume", "drift_day": 9}, None),
}


def outcome(data, workdir, baseline) -> tuple[str, str, str]:
    """(detected as, blocked?, where) for one scenario."""
    try:
        result = check_span(
            data, workdir, dict(as_of=AS_OF, lookback_days=7, eval_days=3, drift_baseline=baseline)
        )
    except ValidationFailed as failure:
        found = sorted(
            {
                f"{a.kind} {a.type} ({a.dataset}" + (f".{a.feature})" if a.feature else ")")
                for a in failure.anomalies
            }
        )
        return "; ".join(found), "blocked", "validate"
    except DataError as error:
        lines = str(error).splitlines()
        missing = re.search(r"required column '(\w+)' is missing", lines[0])
        detail = (
            f"missing required column {missing.group(1)!r}"
            if missing
            else next(
                line.strip(" -").split(":")[0] for line in lines[1:] if line.startswith("  - ")
            )
        )
        return detail, "blocked", "ingest"
    counts = result["ingest"]
    reasons = sorted(k[len("quarantined_") :] for k in counts if k.startswith("quarantined_"))
    anomalies = result["validate"]["anomalies"]
    if reasons:
        return (
            f"quarantined {counts['quarantined']} rows: {', '.join(reasons)}",
            "no (run goes on)",
            "ingest",
        )
    if anomalies:
        return "; ".join(f"{a.kind}: {a.dataset}" for a in anomalies), "warned", "validate"
    return "not detected", "no", "-"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    size = dict(users=args.users, items=max(120, args.users // 5), days=10)
    started = time.monotonic()
    scratch = tempfile.mkdtemp(prefix="detection-")
    clean = os.path.join(scratch, "clean")
    generate(clean, seed=1, **size)
    statistics_root = os.path.join(scratch, "statistics")
    check_span(
        clean,
        os.path.join(scratch, "baseline"),
        dict(as_of=BASELINE_AS_OF, lookback_days=7, eval_days=3, statistics_root=statistics_root),
    )
    baseline = find_baseline(statistics_root, "2026-01-15")[0]

    rows = []
    for name, (injection, edit) in SCENARIOS.items():
        data = os.path.join(scratch, name.replace(" ", "_").replace("/", ""))
        generate(data, seed=1, **size, **injection)
        if edit:
            _edit(data, edit[0], edit[1], csv=edit[2])
        detected, blocked, where = outcome(data, data + "-run", baseline)
        rows.append((name, where, detected, blocked))
        print(f"{name}: {where}: {detected} -> {blocked}", flush=True)

    false_alarms = 0
    for seed in range(1, args.seeds + 1):
        data = os.path.join(scratch, f"clean{seed}")
        generate(data, seed=seed, **size)
        root = os.path.join(scratch, f"statistics{seed}")
        for as_of in (BASELINE_AS_OF, AS_OF):
            try:
                result = check_span(
                    data,
                    os.path.join(scratch, f"c{seed}{as_of}"),
                    dict(as_of=as_of, lookback_days=7, eval_days=3, statistics_root=root),
                )
                false_alarms += (
                    len(result["validate"]["anomalies"]) + result["ingest"]["quarantined"]
                )
            except DataError as error:
                print(f"FALSE ALARM seed {seed} {as_of}: {error}")
                false_alarms += 1
    shutil.rmtree(scratch, ignore_errors=True)

    print(
        f"\n{len(SCENARIOS)} faults, {args.seeds} clean seeds x 2 spans, "
        f"{size['users']} users; {time.monotonic() - started:.0f}s on "
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)\n"
    )
    print("| fault injected | caught at | detected as | blocks the run |")
    print("|---|---|---|---|")
    for name, where, detected, blocked in rows:
        print(f"| {name} | {where} | {detected} | {blocked} |")
    print(f"| clean data, {args.seeds} seeds x 2 spans | - | {false_alarms} false alarms | - |")


if __name__ == "__main__":
    main()
