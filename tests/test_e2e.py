"""The compiled pipeline, run locally from its YAML, on tiny generated data: three
simulated daily retrains (``recsys simulate``), then what they left behind."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import tensorflow as tf

from recsys.app import local_run
from recsys.app.generate import generate
from recsys.core import modeling
from recsys.core.tables import read_dataset
from recsys.serving import serving_root as root_
from tests.conftest import EVAL_DAYS, LOOKBACK_DAYS, TINY

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("pipeline")]

CONFIG = f"""\
lookback_days: {LOOKBACK_DAYS}
eval_days: {EVAL_DAYS}
# Slices of 300 users and 120 items are small: a day's noise is larger than 5%.
max_slice_regression: 0.25
retrieval_epochs: 3
retrieval_batch_size: 256
retrieval_top_k: 50
ranking_epochs: 2
ranking_batch_size: 512
recall_k: 20
"""


# A hang detector, not a budget: the 3-day simulation takes minutes here, and CI
# machines can be several times slower or busy with other jobs.
HANG_SECONDS = 3600


def recsys(*args):
    return subprocess.run(
        [sys.executable, "-m", "recsys.app.cli", *args],
        capture_output=True,
        text=True,
        timeout=HANG_SECONDS,
    )


@pytest.fixture(scope="session")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(CONFIG)
    return str(path)


@pytest.fixture(scope="session")
def simulation(config, tmp_path_factory):
    """Three daily runs in one workdir; category drift from day 3 on."""
    workdir = tmp_path_factory.mktemp("simulation")
    result = recsys(
        "simulate",
        "--days",
        "3",
        "--drift-day",
        "3",
        "--workdir",
        str(workdir),
        "--users",
        str(TINY["users"]),
        "--items",
        str(TINY["items"]),
        "--seed",
        str(TINY["seed"]),
        "--lookback-days",
        str(LOOKBACK_DAYS),
        "--eval-days",
        str(EVAL_DAYS),
        "--config",
        config,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    with open(workdir / "timeline.json") as handle:
        return {"workdir": workdir, "timeline": json.load(handle)["days"], "result": result}


@pytest.fixture(scope="session")
def successful_run(simulation):
    """Day 1: the first run, nothing serving yet."""
    with open(simulation["workdir"] / "runs" / "day01" / "outputs.json") as handle:
        return {**simulation, "outputs": json.load(handle)}


def test_run_pushes_loadable_models_with_warmup(successful_run):
    serving = successful_run["workdir"] / "serving"
    for name in ("retrieval", "ranking"):
        version = serving / name / "1"
        assert (version / "saved_model.pb").is_file()
        warmup = version / "assets.extra" / "tf_serving_warmup_requests"
        assert len(list(tf.data.TFRecordDataset(str(warmup)))) > 0
    # A fresh load of the pushed retrieval model answers for a raw user.
    serve = tf.saved_model.load(str(serving / "retrieval" / "1")).signatures["serving_default"]
    users = read_dataset(str(serving / "feature_snapshot" / "1" / "users")).head(3)
    # The request: the user's snapshot row (history included) and the request's context.
    requests = users.assign(hour_of_day=20, day_of_week=4)
    ids = serve(**modeling.raw_tensors(requests, serve.structured_input_signature[1]))
    ids = ids["item_ids"].numpy()
    assert ids.shape == (3, 50)
    assert all(len(set(row)) == 50 for row in ids)


def test_run_beats_popularity_and_reports_stages(successful_run):
    outputs, stderr = successful_run["outputs"], successful_run["result"].stderr
    metrics = outputs["retrieval_metrics"]["metadata"]
    assert metrics["recall_at_20"] > metrics["popularity_recall_at_20"]
    assert outputs["blessing"]["metadata"]["blessed"] is True
    assert outputs["blessing"]["metadata"]["failed_checks"] == 0
    assert outputs["push_report"]["metadata"]["pushed"] is True
    # Impressions that were shown, not chosen: the click head alone models them.
    assert outputs["ranking_training"]["metadata"]["consumption_head"] == 0
    for stage in (
        "ingest",
        "features/join",
        "validate",
        "features/transform",
        "train_retrieval",
        "train_ranking",
        "infra_validate",
        "evaluate",
        "push",
    ):
        assert f"{stage}: started" in stderr and f"{stage}: finished in" in stderr
    # The summary `recsys run` prints shows every check of the blessing.
    run_dir = local_run.run_dir(str(successful_run["workdir"]), "day01")
    summary = local_run.summary({**outputs, "seconds": 0, "run_dir": run_dir})
    assert "pushed version 1" in summary
    assert f"this run's outputs and full log: {run_dir}" in summary
    assert "| pass | infra | infra validation of retrieval |" in summary
    assert "no model serving yet: value thresholds only" in summary
    assert "quarantined 0 rows" in summary
    # Its first line: the wall time against the stages' own (their `finished` lines).
    watch = local_run.StageWatch()
    for line in stderr.splitlines():
        watch.read(line)
    assert set(watch.seconds) >= {"ingest", "features/join", "evaluate", "push"}
    work = sum(watch.seconds.values())
    timed = local_run.summary(
        {**outputs, "seconds": 2 * work, "stage_seconds": work, "run_dir": run_dir}
    )
    assert f"finished in {2 * work:.0f}s (the stages' own work {work:.0f}s: 2.00x)" in timed
    assert os.path.isfile(outputs["evaluation_html"]["path"])
    assert os.path.isfile(outputs["validation_html"]["path"])


def test_daily_runs_warm_start_compare_with_the_champion_and_stop_on_drift(simulation):
    day1, day2, day3 = simulation["timeline"]
    workdir = simulation["workdir"]
    # Day 1: nothing to start from, compare with or drift against.
    assert day1["status"] == "pushed version 1" and day1["drift"] is None
    assert day1["warm_start"] == {"retrieval": None, "ranking": None}
    # Day 2 found what it needed under the pipeline root and the serving root:
    # the blessed checkpoint of version 1, day 1's span statistics, version 1 serving.
    assert day2["warm_start"] == {"retrieval": 1, "ranking": 1}
    assert day2["drift"] is not None and day2["drift"]["flagged"] == []
    assert "compared with serving version ranking 1, retrieval 1" in day2["reason"]
    assert day2["blessed"] and day2["status"] == "pushed version 2", day2["reason"]
    # Day 3: the category mix drifts; validate blocks; nothing is trained or pushed.
    assert day3["status"] == "stopped at validate" and not day3["pushed"]
    assert "category" in day3["drift"]["flagged"] and day3["drift"]["max_ratio"] > 1
    assert day3["served_version"] == 2
    assert root_.committed_versions(str(workdir / "serving")) == [1, 2]
    # Only spans that passed are baselines: day 4 would compare with day 2's.
    stored = sorted(
        p.parent.name
        for p in (workdir / "pipeline_root" / "statistics").glob("span=*/span_examples.stats.pb")
    )
    assert len(stored) == 2
    stderr = simulation["result"].stderr
    assert f"previous span ({stored[-1].removeprefix('span=')}" in stderr
    report = (workdir / "timeline.html").read_text()
    assert "category drift injected from day 3" in report
    assert report.count('src="data:image/png;base64,') == 1 and "https://" not in report
    assert (workdir / "timeline.png").read_bytes().startswith(b"\x89PNG")


def test_recommend_prints_ranked_items(successful_run):
    result = recsys(
        "recommend",
        "--serving-root",
        str(successful_run["workdir"] / "serving"),
        "--user-id",
        "u000001",
        "--k",
        "5",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("top 5 for u000001")
    assert sum(line.split()[1].startswith("v") for line in lines[2:]) == 5


def test_wrongly_typed_column_fails_at_ingest_and_pushes_nothing(config, tmp_path):
    data = tmp_path / "data"
    generate(str(data), **TINY)
    events = pd.read_parquet(data / "impressions.parquet")
    events["watch_seconds"] = events["watch_seconds"].map(lambda s: f"{s}s")  # "12.5s"
    os.remove(data / "impressions.parquet")
    events.to_csv(data / "impressions.csv", index=False)
    workdir = tmp_path / "run"
    result = recsys("run", "--data", str(data), "--workdir", str(workdir), "--config", config)
    assert result.returncode == 1
    assert "ingest: FAILED" in result.stderr
    assert "wrong_type in column 'watch_seconds'" in result.stderr
    assert "What to do" in result.stderr and "quarantine" in result.stderr
    assert "validate: started" not in result.stderr
    assert not (workdir / "serving").exists() or not any((workdir / "serving").iterdir())


def test_a_stage_killed_by_the_kernel_is_named_with_what_bounds_its_memory(config, tmp_path):
    """SIGKILL, as the kernel's out-of-memory killer sends it, to the ingest task's
    process once it has started: the run names the stage, its memory and the knob."""
    import signal

    import psutil

    data = tmp_path / "data"
    generate(str(data), **TINY)
    slow = tmp_path / "config.yaml"  # small batches: ingest runs long enough to be killed
    slow.write_text(open(config).read() + "batch_rows: 20\n")
    run = subprocess.Popen(
        [sys.executable, "-m", "recsys.app.cli", "run", "--data", str(data)]
        + ["--workdir", str(tmp_path / "run"), "--config", str(slow)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines = []
    for line in run.stderr:
        lines.append(line)
        if "ingest: started" in line:
            tasks = [
                p
                for p in psutil.Process(run.pid).children(recursive=True)
                if any("executor_main" in part for part in p.cmdline())
            ]
            assert tasks, "the ingest task's process was not found"
            for task in tasks:
                task.send_signal(signal.SIGKILL)
    assert run.wait(timeout=600) == 1
    stderr = "".join(lines)
    assert "stage 'ingest' was killed" in stderr
    assert "out of memory" in stderr and "batch_rows" in stderr
    assert "validate: started" not in stderr
