"""End-to-end `recsys run` time and per-stage durations at a chosen sample scale.

    .venv/bin/python bench/pipeline_e2e.py --scale 1    # the `make run` sample
    .venv/bin/python bench/pipeline_e2e.py --scale 10   # ~10x the events

Runs the real CLI (compile, then the compiled YAML under KFP's local runner),
parses the stage progress lines and prints a Markdown table for
docs/benchmarks.md. Each stage's time includes only its own work; the gap
between stages is the task subprocess starting and importing TensorFlow.
"""

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

LINE = re.compile(r"\] ([\w/]+): (started|finished in ([\d.]+)s)")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scale", type=int, default=1, help="multiplies users and items of the default sample"
    )
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix=f"bench-x{args.scale}-")
    data = os.path.join(workdir, "data")
    recsys = [sys.executable, "-m", "recsys.app.cli"]
    subprocess.run(
        recsys
        + [
            "generate",
            "--out",
            data,
            "--users",
            str(2000 * args.scale),
            "--items",
            str(400 * args.scale),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    events = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import pandas as pd, sys; print(len(pd.read_parquet('{data}/impressions.parquet')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    started = time.monotonic()
    run = subprocess.run(
        recsys + ["run", "--data", data, "--workdir", workdir], capture_output=True, text=True
    )
    total = time.monotonic() - started
    if run.returncode != 0:
        sys.exit(run.stderr[-4000:])
    durations = {m.group(1): float(m.group(3)) for m in LINE.finditer(run.stderr) if m.group(3)}
    print(
        f"scale x{args.scale}: {events} impressions, {2000 * args.scale} users, "
        f"{400 * args.scale} items; machine: {os.cpu_count()} cores, {platform.platform()}"
    )
    print("\n| stage | seconds |\n|---|---:|")
    for stage, seconds in durations.items():
        print(f"| {stage} | {seconds:.1f} |")
    print(f"| stage work, total | {sum(durations.values()):.1f} |")
    print(f"| `recsys run` wall time (incl. compile, task start-up) | {total:.1f} |")
    blessing = [line for line in run.stdout.splitlines() if "blessed" in line][:1]
    print("\n" + "\n".join(blessing))


if __name__ == "__main__":
    main()
