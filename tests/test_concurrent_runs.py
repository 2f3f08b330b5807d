"""Runs at once on one workdir and one serving root (a scheduled run overlapping a
manual one): each run keeps its own outputs and log, and of two candidates compared
with the same serving version only one replaces it; the other is refused, because
it was never compared with the version pushed in between."""

import multiprocessing
import os
import subprocess
import sys

import pytest

from recsys.app import local_run
from recsys.components.push.config import PushConfig
from recsys.core import storage
from recsys.serving import serving_root as root_
from tests.push_child import push_with_environment

MODELS = ("retrieval", "ranking")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_pushes_at_once_replace_only_what_they_were_compared_with(
    stages, tmp_path, request, where
):
    serving_root = (
        str(tmp_path / "serving")
        if where == "local"
        else request.getfixturevalue("s3_root") + "/serving"
    )
    paths = stages["paths"]
    arguments = {
        # Both evaluated while nothing served (the stages' own evaluation).
        "blessing_path": paths["blessing"],
        "models": {"retrieval": paths["retrieval_model"], "ranking": paths["ranking_model"]},
        "warmup_dir": paths["warmup_requests"],
        "snapshots": {"users": paths["user_snapshot"], "items": paths["item_snapshot"]},
        "serving_root": serving_root,
        "config": PushConfig(),
    }
    environment = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    context = multiprocessing.get_context("spawn")
    runs = [
        context.Process(
            target=push_with_environment,
            args=(environment,),
            kwargs={**arguments, "rerank": rules},
        )
        for rules in ('{"k": 10}', '{"k": 12}')
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert [run.exitcode for run in runs] == [0, 0]
    assert root_.committed_versions(serving_root) == [1]
    assert root_.served_versions(serving_root) == {"ranking": 1, "retrieval": 1}
    kinds = [event["kind"] for event in root_.events(serving_root)]
    assert kinds == ["push", "refused"]
    refused = root_.events(serving_root)[1]
    assert refused["served"] == {"ranking": 1, "retrieval": 1}
    assert "another run pushed in between" in refused["reason"]


@pytest.mark.trains
def test_runs_at_once_on_one_workdir_keep_their_own_outputs_and_logs(tmp_path):
    """Two `recsys run` processes started together on one workdir (each fails at
    ingest, on data of its own, which keeps this quick): each run has its own
    directory, and each log holds its own run's failure only."""
    workdir = str(tmp_path / "work")
    children = {}
    for label in ("manual", "scheduled"):
        data_root = tmp_path / f"data-{label}"  # no tables: ingest stops, naming it
        data_root.mkdir()
        command = ["run", "--data", str(data_root), "--workdir", workdir]
        children[label] = subprocess.Popen(
            [sys.executable, "-m", "recsys.app.cli", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    consoles = {label: child.communicate(timeout=1800) for label, child in children.items()}
    assert [child.returncode for child in children.values()] == [1, 1]
    runs = sorted(os.listdir(os.path.join(workdir, "runs")))
    assert len(runs) == 2
    logs = {
        run: storage.read_text(os.path.join(local_run.run_dir(workdir, run), local_run.LOG_FILE))
        for run in runs
    }
    for label, (_, stderr) in consoles.items():
        other = "scheduled" if label == "manual" else "manual"
        (mine,) = [run for run in runs if local_run.run_dir(workdir, run) in stderr]
        assert f"data-{label}" in logs[mine] and f"data-{other}" not in logs[mine]
        assert os.path.isfile(os.path.join(local_run.run_dir(workdir, mine), "pipeline.yaml"))
