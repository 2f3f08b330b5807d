"""The whole pipeline on a real S3 API server (moto, started by the suite): the raw
tables, the serving root and the state between runs (drift baselines, warm-start
checkpoints) all in a bucket; then `recsys versions`, `recommend` and `rollback`
against that root.

The bucket starts as a scheduled run would find it the day after the shared
stages' run: their models pushed as version 1, their checkpoints kept as blessed
version 1, their span statistics stored as the previous day's. The compiled
pipeline then runs locally (KFP's local runner keeps its artifacts on local disk,
as pods do) and finds all of it through s3://."""

import datetime
import json
import os

import pytest

from recsys.core import storage
from recsys.core.contracts import BLESSED_COMPLETE, BLESSED_DIR, STATISTICS_DIR
from recsys.serving import serving_root as root_
from tests.conftest import push_stages
from tests.test_e2e import CONFIG, recsys

pytestmark = pytest.mark.e2e


def test_the_pipeline_runs_on_buckets_and_operators_work_there(
    stages, tiny_data, s3_root, tmp_path
):
    data_root, serving_root, state_root = (
        f"{s3_root}/{name}" for name in ("data", "models", "state")
    )
    storage.copy_dir(tiny_data, data_root)
    assert push_stages(stages, serving_root)["version"] == 1
    local_state = os.path.join(stages["root"], "pipeline_root")
    storage.copy_dir(os.path.join(local_state, BLESSED_DIR), storage.join(state_root, BLESSED_DIR))
    (span,) = storage.listdir(os.path.join(local_state, STATISTICS_DIR))
    day = datetime.date.fromisoformat(span.removeprefix("span="))
    previous = f"span={day - datetime.timedelta(days=1)}"
    storage.copy_dir(
        os.path.join(local_state, STATISTICS_DIR, span),
        storage.join(state_root, STATISTICS_DIR, previous),
    )

    config = tmp_path / "s3.yaml"
    fast = CONFIG.replace("retrieval_epochs: 3", "retrieval_epochs: 1")  # paths, not quality
    config.write_text(
        fast.replace("ranking_epochs: 2", "ranking_epochs: 1")
        + f"serving_root: {serving_root}\nstate_root: {state_root}\nwarm_start: true\n"
        # Compared with version 1 on the same data, but never refused for noise:
        # this test is about where things are read and written.
        + "max_regression: 0.99\nmax_slice_regression: 0.99\n"
    )
    workdir = tmp_path / "work"
    result = recsys("run", "--data", data_root, "--workdir", str(workdir), "--config", str(config))
    assert result.returncode == 0, result.stderr[-5000:]
    (outputs_file,) = (workdir / "runs").glob("*/outputs.json")
    outputs = json.loads(outputs_file.read_text())

    # Read from the bucket: the raw tables, the previous span, the checkpoints, v1.
    assert int(outputs["ingest_metrics"]["metadata"]["train_events"]) > 0
    with open(outputs["validation_html"]["path"]) as handle:  # drift measured against it
        drift = handle.read().split("Drift (this span vs previous span)")[1]
    assert "<td>category</td><td>L_INFTY</td><td>0.0000</td>" in drift
    for model in ("retrieval", "ranking"):
        assert outputs[f"{model}_training"]["metadata"]["warm_start_version"] == 1
    assert "compared with serving version ranking 1, retrieval 1" in result.stdout
    # Written to the bucket: version 2 served, its checkpoints, this span's statistics.
    assert outputs["push_report"]["metadata"]["version"] == 2
    assert root_.served_versions(serving_root) == {"ranking": 2, "retrieval": 2}
    config_text = storage.read_text(storage.join(serving_root, "models.config"))
    assert f'base_path: "{serving_root}/ranking"' in config_text
    assert storage.exists(storage.join(state_root, BLESSED_DIR, "2", BLESSED_COMPLETE))
    assert storage.listdir(storage.join(state_root, STATISTICS_DIR)) == [previous, span]

    # Operators on the bucket.
    versions = recsys("versions", "--serving-root", serving_root)
    assert versions.returncode == 0, versions.stderr[-3000:]
    assert "push" in versions.stdout and "2" in versions.stdout
    recommend = recsys("recommend", "--serving-root", serving_root, "--user-id", "u000001")
    assert recommend.returncode == 0, recommend.stderr[-3000:]
    assert recommend.stdout.startswith("top ")
    rollback = recsys("rollback", "--serving-root", serving_root, "--model", "ranking")
    assert rollback.returncode == 0, rollback.stderr[-3000:]
    assert "ranking: now serving version 1 (was 2)" in rollback.stdout
    assert root_.served_versions(serving_root) == {"ranking": 1, "retrieval": 2}
