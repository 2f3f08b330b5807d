"""`recsys run` end to end: each stage's time and peak memory, per data case.

    .venv/bin/python bench/pipeline_e2e.py --case x1             # the `make run` sample
    .venv/bin/python bench/pipeline_e2e.py --case x1 x10 x100 long-span --out results.json
    .venv/bin/python bench/pipeline_e2e.py --compare before.json after.json

Cases:

- ``x1``, ``x10``, ``x100``: ``recsys generate`` at 1, 10 and 100 times the sample's
  users and items (2,000 x N users, 400 x N items, 14 days; x100 is about 11 million
  impressions), then ``recsys run --data`` on it;
- ``long-span``: a log spanning years for few entities, as a new user brings one:
  150,000 random interactions of 2,000 users with 4,000 items over 15 years (CSV,
  seeded), through ``recsys import`` and ``recsys run`` at the window it proposes.

For each stage: its time and the peak resident memory of its task's process tree,
both from the stage's own ``finished`` line (``recsys.core.memory``). The bench also
samples the whole run's process tree (every 0.5 s) and stops the run when it passes
``--memory-limit-gib``, naming the stage that was running: where a case breaks is a
result, not a crash of the machine (the sampled figures include the fork server that
starts the tasks, about 0.6 GiB of imported libraries the tasks share). The rest of
the wall time is compiling the pipeline and starting the tasks: forked from one
process that imported their libraries once, or with ``--fresh-task-processes`` a new
interpreter each, as KFP's runner does by default.

Prints a Markdown table per case (and one row per stage across cases) for
docs/benchmarks.md; ``--out`` keeps every number as JSON.
"""

import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.common import log, machine  # noqa: E402
from recsys.core.memory import GIB, tree_rss  # noqa: E402

STAGE_LINE = re.compile(
    r"\]\s+([\w/-]+): (started|finished in ([\d.]+)s, peak memory ([\d.]+) GiB|FAILED after)"
)
SCALES = {"x1": 1, "x10": 10, "x100": 100}
# The long-span case (issue 27's reproduction): random interactions over 15 years.
LONG_SPAN = {"interactions": 150_000, "users": 2_000, "items": 4_000, "years": 15}


class Monitored:
    """A command whose process tree is sampled while it runs; killed (with its whole
    process group) when it passes ``limit`` bytes. ``stage`` names what ran at the
    peak; progress lines update it."""

    def __init__(self, command: list[str], limit: int, log_path: str):
        self.command, self.limit, self.log_path = command, limit, log_path
        self.peak, self.stage, self.killed_in = 0, "", None
        self.stage_peaks: dict[str, float] = {}
        self.lines: list[str] = []

    def run(self) -> int:
        started = time.monotonic()
        with open(self.log_path, "w") as out:
            process = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # its own process group, killed as one
            )
            done = threading.Event()
            sampler = threading.Thread(target=self._sample, args=(process, done), daemon=True)
            sampler.start()
            for line in process.stderr:
                out.write(line)
                self.lines.append(line)
                match = STAGE_LINE.search(line)
                if match and match.group(2) == "started":
                    self.stage = match.group(1)
                    log(f"  {self.stage} started")
                elif match:
                    log(f"  {line.strip().split('] ', 1)[-1]}")
            code = process.wait()
            done.set()
            sampler.join()
        self.seconds = time.monotonic() - started
        return code

    def _sample(self, process: subprocess.Popen, done: threading.Event) -> None:
        parent = psutil.Process(process.pid)
        while not done.wait(0.5):
            try:
                rss = tree_rss(parent)
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, rss)
            if self.stage:
                self.stage_peaks[self.stage] = max(self.stage_peaks.get(self.stage, 0), rss)
            if rss > self.limit and self.killed_in is None:
                self.killed_in = self.stage or "(before the first stage)"
                log(f"  {self.killed_in}: {rss / GIB:.1f} GiB > the limit; stopping the run")
                os.killpg(process.pid, signal.SIGKILL)


def stages(lines: list[str]) -> dict[str, dict]:
    """Each stage's seconds and peak GiB from its finished line."""
    found = {}
    for line in lines:
        match = STAGE_LINE.search(line)
        if match and match.group(3):
            found[match.group(1)] = {
                "seconds": float(match.group(3)),
                "peak_gib": float(match.group(4)),
            }
    return found


def long_span_log(path: str, seed: int = 27) -> None:
    """LONG_SPAN's random interactions as a CSV: user, item, Unix seconds, rating 1-5."""
    rng = np.random.default_rng(seed)
    n = LONG_SPAN["interactions"]
    start = int(pd.Timestamp("2011-01-01", tz="UTC").timestamp())
    span = int(LONG_SPAN["years"] * 365.25 * 86400)
    pd.DataFrame(
        {
            "user": rng.integers(0, LONG_SPAN["users"], n),
            "item": rng.integers(0, LONG_SPAN["items"], n),
            "timestamp": np.sort(start + rng.integers(0, span, n)),
            "rating": rng.integers(1, 6, n),
        }
    ).to_csv(path, index=False)


def prepare(case: str, workdir: str, limit: int) -> dict:
    """Writes the case's data directory; returns what making it cost."""
    recsys = [sys.executable, "-m", "recsys.app.cli"]
    data = os.path.join(workdir, "data")
    if os.path.isdir(data):
        log(f"{case}: reusing the data in {data}")
        return {"step": "reused", "seconds": 0.0, "peak_gib": 0.0, "data": data}
    if case in SCALES:
        scale = SCALES[case]
        command = recsys + [
            "generate",
            "--out",
            data,
            "--users",
            str(2000 * scale),
            "--items",
            str(400 * scale),
        ]
        step = "generate"
    else:
        csv = os.path.join(workdir, "interactions.csv")
        long_span_log(csv)
        command = recsys + [
            "import",
            "--interactions",
            csv,
            "--user",
            "user",
            "--item",
            "item",
            "--timestamp",
            "timestamp",
            "--label",
            "rating >= 4",
            "--out",
            data,
        ]
        step = "import"
    log(f"{case}: {step}")
    made = Monitored(command, limit, os.path.join(workdir, f"{step}.log"))
    code = made.run()
    result = {
        "step": step,
        "seconds": round(made.seconds, 1),
        "peak_gib": round(made.peak / GIB, 2),
        "data": data,
    }
    if code != 0:
        result["failed"] = "".join(made.lines[-20:])
    return result


# What each trainer's metadata says of its run: the rates docs/scale.md sizes from.
RATES = ("train_seconds", "examples_per_second", "steady_examples_per_second")
TRAINING_FIELDS = {
    "train-ranking": ("train_examples", *RATES, "final_eval_auc"),
    "train-retrieval": ("train_positives", "epochs_run", *RATES, "val_recall_at_50"),
}


def training_metadata(workdir: str) -> dict:
    """The newest run's trainer metadata (from KFP's executor outputs) under ``workdir``."""
    runs = sorted(glob.glob(os.path.join(workdir, "work", "pipeline_root", "recsys-pipeline-*")))
    found = {}
    for task, fields in TRAINING_FIELDS.items():
        path = os.path.join(runs[-1], task, "executor_output.json") if runs else ""
        if not os.path.exists(path):
            continue
        with open(path) as handle:
            outputs = json.load(handle)["artifacts"]
        metadata = {
            k: v for o in outputs.values() for a in o["artifacts"] for k, v in a["metadata"].items()
        }
        found[task] = {field: metadata.get(field) for field in fields}
    return found


def run_case(case: str, workdir: str, limit: int, fresh_task_processes: bool = False) -> dict:
    os.makedirs(workdir, exist_ok=True)
    result = {
        "case": case,
        "workdir": workdir,
        "prepare": prepare(case, workdir, limit),
        "task_processes": "fresh" if fresh_task_processes else "forked",
    }
    if "failed" in result["prepare"]:
        return result
    data = result["prepare"]["data"]
    rows = {
        name: pq.ParquetFile(os.path.join(data, f"{name}.parquet")).metadata.num_rows
        for name in ("impressions", "users", "items")
        if os.path.exists(os.path.join(data, f"{name}.parquet"))
    }
    result["rows"] = rows
    log(f"{case}: recsys run on {rows}")
    command = [
        sys.executable,
        "-m",
        "recsys.app.cli",
        "run",
        "--data",
        data,
        "--workdir",
        os.path.join(workdir, "work"),
        *(["--fresh-task-processes"] if fresh_task_processes else []),
    ]
    run = Monitored(command, limit, os.path.join(workdir, "run.log"))
    code = run.run()
    result.update(
        wall_seconds=round(run.seconds, 1),
        stages=stages(run.lines),
        sampled_stage_peak_gib={k: round(v / GIB, 2) for k, v in run.stage_peaks.items()},
        run_peak_gib=round(run.peak / GIB, 2),
        returncode=code,
        training=training_metadata(workdir),
    )
    if run.killed_in:
        result["outcome"] = f"stopped in {run.killed_in} above {limit / GIB:.0f} GiB"
    elif code != 0:
        failed = [line for line in run.lines if "FAILED" in line or "run:" in line]
        result["outcome"] = f"failed in {run.stage}: " + (failed[-1].strip() if failed else "")
    else:
        result["outcome"] = "completed"
        blessing = [line for line in run.lines if "blessed" in line.lower()]
        result["blessing"] = blessing[0].strip() if blessing else ""
    return result


def table(results: list[dict]) -> str:
    """One row per stage, a column of seconds and peak GiB per case."""
    names = list(dict.fromkeys(s for r in results for s in r.get("stages", {})))
    header = "| stage | " + " | ".join(f"{r['case']} s | {r['case']} GiB" for r in results)
    lines = [header + " |", "|---|" + "---:|---:|" * len(results)]
    for name in names:
        cells = []
        for r in results:
            stage = r.get("stages", {}).get(name)
            if stage:
                cells += [f"{stage['seconds']:.1f}", f"{stage['peak_gib']:.2f}"]
            elif r.get("outcome", "").endswith(name) or name in r.get("outcome", ""):
                cells += ["killed", f">{r['sampled_stage_peak_gib'].get(name, 0):.1f}"]
            else:
                cells += ["", ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label, key in (("stage work", None), ("`recsys run` wall", "wall_seconds")):
        cells = []
        for r in results:
            seconds = (
                sum(s["seconds"] for s in r.get("stages", {}).values())
                if key is None
                else r.get(key, 0)
            )
            peak = max([s["peak_gib"] for s in r.get("stages", {}).values()] or [0])
            cells += [f"{seconds:.1f}", f"{peak:.2f}" if key is None else ""]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def killed_stage(result: dict) -> list[str]:
    """The stage a run stopped or failed in, if it did (its ``outcome`` names it)."""
    return [
        name
        for name in result.get("sampled_stage_peak_gib", {})
        if name not in result.get("stages", {})
        and result.get("outcome", "").startswith(("stopped in " + name, "failed in " + name))
    ]


def compare(before: list[dict], after: list[dict]) -> str:
    """Per case and stage: seconds and peak GiB before -> after (the last result of each
    case in each file)."""
    old = {r["case"]: r for r in before}
    new = {r["case"]: r for r in after}
    lines = [
        "| case | stage | seconds before | seconds after | peak GiB before | peak GiB after |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for case in [c for c in [*SCALES, "long-span"] if c in old or c in new]:
        names = list(
            dict.fromkeys(
                name
                for result in (new.get(case, {}), old.get(case, {}))
                for name in [
                    *result.get("stages", {}),
                    *killed_stage(result),
                ]
            )
        )
        for name in names:
            cells = []
            for result in (old.get(case, {}), new.get(case, {})):
                stage = result.get("stages", {}).get(name)
                killed = result.get("sampled_stage_peak_gib", {}).get(name)
                cells.append(
                    (f"{stage['seconds']:.1f}", f"{stage['peak_gib']:.2f}")
                    if stage
                    else (result["outcome"].split()[0], f"{killed:.2f} at the stop")
                    if name in killed_stage(result)
                    else ("", "")
                )
            lines.append(
                f"| {case} | {name} | {cells[0][0]} | {cells[1][0]} | {cells[0][1]} "
                f"| {cells[1][1]} |"
            )
        for label, result in (("before", old.get(case)), ("after", new.get(case))):
            if result:
                lines.append(
                    f"| {case} | outcome {label}: {result.get('outcome', '').split(':')[0]}; wall "
                    f"{result.get('wall_seconds', 0):.0f} s | | | | |"
                )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("BEFORE", "AFTER"),
        help="print the before/after table of two --out files and exit",
    )
    parser.add_argument(
        "--case", nargs="+", default=["x1"], choices=[*SCALES, "long-span"], help="data cases"
    )
    parser.add_argument("--workdir", default=None, help="default: a new temporary directory")
    parser.add_argument(
        "--memory-limit-gib",
        type=float,
        default=16.0,
        help="stop a run whose process tree passes this (the machine has "
        f"{psutil.virtual_memory().total / GIB:.0f} GiB)",
    )
    parser.add_argument("--out", help="append each case's numbers to this JSON file")
    parser.add_argument(
        "--fresh-task-processes",
        action="store_true",
        help="start each task in a new interpreter (KFP's default) instead of forking it "
        "from `recsys run`'s fork server: the launcher's share of the wall time",
    )
    args = parser.parse_args()
    if args.compare:
        before, after = (json.load(open(path)) for path in args.compare)
        print(compare(before, after))
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-e2e-")
    limit = int(args.memory_limit_gib * GIB)
    results = []
    for case in args.case:
        result = run_case(case, os.path.join(workdir, case), limit, args.fresh_task_processes)
        result["machine"] = machine()
        results.append(result)
        log(f"{case}: {result.get('outcome', result['prepare'].get('failed', ''))}")
        if args.out:
            previous = json.load(open(args.out)) if os.path.exists(args.out) else []
            with open(args.out, "w") as handle:
                json.dump(previous + [result], handle, indent=1)
    print(machine())
    for r in results:
        made = r["prepare"]
        print(
            f"\n{r['case']}: {r.get('rows', {})}; {made['step']} {made['seconds']} s, peak "
            f"{made['peak_gib']} GiB; run: {r.get('outcome', '')}"
        )
        for task, fields in r.get("training", {}).items():
            print(f"  {task}: " + ", ".join(f"{k} {v}" for k, v in fields.items()))
    print()
    print(table([r for r in results if "stages" in r]))


if __name__ == "__main__":
    main()
