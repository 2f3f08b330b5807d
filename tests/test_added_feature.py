"""Adding a feature is declarative: the diff in docs/design.md ("Adding a feature"),
which adds a user attribute to the users' contract, the examples schema and the
feature registry, and touches no code, is applied to a copy of the curated schemas;
then the whole DAG trains on data that has the attribute and the pushed models serve
it: transform, towers, serving signatures, infra validation, the snapshot, the
funnel's requests, its cold start and its serving log."""

import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from recsys.app.generate import generate
from recsys.core.contracts import FEATURES_FILE, SNAPSHOT_DIR, SNAPSHOT_SCHEMAS, UNKNOWN
from recsys.core.requests import raw_arrays
from recsys.core.schemas import SCHEMA_DIR
from recsys.core.tables import read_dataset
from recsys.pipelines.in_process import run_in_process
from recsys.serving import Context, Funnel, ServingLog
from tests.conftest import TEST_PARAMETERS, TINY

# Its tests share one whole-DAG run: one worker runs them all.
pytestmark = pytest.mark.xdist_group("added_feature")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANGUAGES = np.array(["en", "pt", "hi", "de", "ja"])
# The gate is not what this test is about: let any trained model through.
ANY_MODEL = dict(
    min_recall_lift=0.0,
    min_auc=0.0,
    max_normalized_entropy=10.0,
    min_calibration_ratio=0.0,
    max_calibration_ratio=100.0,
)


def documented_diff() -> str:
    with open(os.path.join(ROOT, "docs", "design.md")) as handle:
        design = handle.read()
    section = design.split("## Adding a feature", 1)[1]
    return re.search(r"```diff\n(.*?)```", section, re.DOTALL).group(1)


@pytest.fixture(scope="session")
def with_language(tmp_path_factory):
    root = tmp_path_factory.mktemp("added_feature")
    shutil.copytree(SCHEMA_DIR, root / "schemas")
    diff = documented_diff()
    assert all(
        line.split()[-1].startswith("b/schemas/")
        for line in diff.splitlines()
        if line.startswith("+++")
    )  # schemas only
    (root / "language.diff").write_text(diff)
    applied = subprocess.run(
        ["git", "apply", "language.diff"], cwd=root, capture_output=True, text=True
    )
    assert applied.returncode == 0, applied.stderr
    schema_dir = str(root / "schemas")

    data = root / "data"
    generate(str(data), **TINY)
    users = pd.read_parquet(data / "users.parquet")
    language = dict(
        zip(users["user_id"], LANGUAGES[np.arange(len(users)) % len(LANGUAGES)], strict=True)
    )
    for table in ("users", "serving_log"):  # serving logs what it sends the models
        frame = pd.read_parquet(data / f"{table}.parquet")
        frame["language"] = frame["user_id"].map(language)
        frame.to_parquet(data / f"{table}.parquet", index=False)
    serving_root = str(root / "serving")
    run = run_in_process(
        str(root / "pipeline_root"),
        {
            "data_root": str(data),
            "serving_root": serving_root,
            "schema_dir": schema_dir,
            **TEST_PARAMETERS,
            "retrieval_epochs": 1,
            "ranking_epochs": 1,
            **ANY_MODEL,
        },
    )
    return {"run": run, "serving_root": serving_root, "language": language, "root": root}


def test_the_documented_diff_touches_only_declarative_files():
    files = re.findall(r"^\+\+\+ b/(\S+)", documented_diff(), re.MULTILINE)
    assert files == [
        "schemas/users.schema.pbtxt",
        "schemas/examples.schema.pbtxt",
        "schemas/features.yaml",
    ]


def test_the_models_are_trained_and_validated_with_it(with_language):
    import tensorflow_transform as tft

    run = with_language["run"]
    output = tft.TFTransformOutput(run.artifact("transform_features", "transform_graph").path)
    assert {v.decode() for v in output.vocabulary_by_name("language")} == set(LANGUAGES)
    for model in ("retrieval_model", "ranking_model"):
        stage = "train_retrieval" if model == "retrieval_model" else "train_ranking"
        signature = (
            tf.saved_model.load(run.artifact(stage, model).path)
            .signatures["serving_default"]
            .structured_input_signature[1]
        )
        assert signature["language"].dtype == tf.string and signature["language"].shape.rank == 1
    infra = run.artifact("infra_validate", "infra_validation").metadata
    assert infra["passed"] is True, infra
    examples = read_dataset(run.artifact("join_features", "train_examples").path)
    assert (examples["language"] == examples["user_id"].map(with_language["language"])).all()


def test_the_pushed_models_serve_it(with_language, tmp_path):
    serving_root, language = with_language["serving_root"], with_language["language"]
    snapshot = os.path.join(serving_root, SNAPSHOT_DIR, "1")
    with open(os.path.join(snapshot, SNAPSHOT_SCHEMAS, FEATURES_FILE)) as handle:
        assert "language:" in handle.read()  # the registry went with the models
    log = ServingLog(str(tmp_path / "log"))
    funnel = Funnel.from_serving_root(serving_root, serving_log=log)
    user = funnel.features.user_index[0]
    assert funnel.features.users["language"][0] == language[user]
    assert "language" in funnel.retrieval_signature and "language" in funnel.user_inputs
    at = Context(
        pd.Timestamp(
            with_language["run"].artifact("ingest", "ingest_metrics").metadata["as_of"] - 3600,
            unit="s",
            tz="UTC",
        )
    )
    assert len(funnel.recommend(user, at).items) == 10

    # The attribute reaches the towers: another language, another query and scores.
    row, _ = funnel.features.user(user)
    query = {**row, **at.columns()}
    other = {
        **query,
        "language": np.array(["ja" if language[user] != "ja" else "en"], dtype=object),
    }
    query_model = tf.saved_model.load(
        os.path.join(with_language["run"].artifact("train_retrieval", "query_model").path)
    )
    embed = query_model.signatures["serving_default"]

    def embedding(columns):
        arrays = raw_arrays(columns, embed.structured_input_signature[1])
        return embed(**{name: tf.constant(value) for name, value in arrays.items()})[
            "query_embedding"
        ].numpy()

    assert not np.allclose(embedding(query), embedding(other))

    # A user nobody knows gets the registry's default, and a page.
    cold, known = funnel.features.user("someone-new")
    assert not known and cold["language"][0] == UNKNOWN
    assert len(funnel.recommend("someone-new", at).items) == 10
    log.close()
    logged = read_dataset(str(tmp_path / "log"))
    assert set(logged["language"]) == {language[user], UNKNOWN}
