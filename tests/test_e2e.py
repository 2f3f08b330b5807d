"""The compiled pipeline, run locally from its YAML, on tiny generated data."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import tensorflow as tf

from recsys import modeling
from recsys.generate import generate
from recsys.tables import read_dataset
from tests.conftest import EVAL_DAYS, LOOKBACK_DAYS, TINY

pytestmark = pytest.mark.e2e

CONFIG = f"""\
lookback_days: {LOOKBACK_DAYS}
eval_days: {EVAL_DAYS}
retrieval_epochs: 3
retrieval_batch_size: 256
retrieval_top_k: 50
ranking_epochs: 2
ranking_batch_size: 512
recall_k: 20
"""


def recsys(*args):
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(CONFIG)
    return str(path)


@pytest.fixture(scope="module")
def successful_run(tiny_data, config, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    result = recsys("run", "--data", tiny_data, "--workdir", str(workdir), "--config", config)
    assert result.returncode == 0, result.stderr[-5000:]
    with open(workdir / "outputs.json") as handle:
        return {"workdir": workdir, "outputs": json.load(handle), "result": result}


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
    for stage in ("ingest", "features/join", "validate", "features/transform",
                  "train_retrieval", "train_ranking", "infra_validate", "evaluate", "push"):
        assert f"{stage}: started" in stderr and f"{stage}: finished in" in stderr
    stdout = successful_run["result"].stdout
    assert "pushed version 1" in stdout
    # The summary shows every check of the blessing (infra validation included).
    assert "| pass | infra | infra validation of retrieval |" in stdout
    assert "no model serving yet: value thresholds only" in stdout
    assert os.path.isfile(outputs["evaluation_html"]["path"])
    assert os.path.isfile(outputs["validation_html"]["path"])
    assert "quarantined 0 rows" in successful_run["result"].stdout
    # validate kept this span's statistics under the pipeline root: the next
    # run's drift baseline.
    stored = list((successful_run["workdir"] / "pipeline_root" / "statistics").glob(
        "span=*/span_examples.stats.pb"))
    assert len(stored) == 1


def test_recommend_prints_ranked_items(successful_run):
    result = recsys("recommend", "--serving-root", str(successful_run["workdir"] / "serving"),
                    "--user-id", "u000001", "--k", "5")
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
