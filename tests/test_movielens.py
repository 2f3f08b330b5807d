"""`recsys import-movielens`: a hand-written file set with the format's traps, then the
real MovieLens 100K from ../shared/data/ml-100k (skipped where it is absent)."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml

from recsys.app import cli
from recsys.app.local_run import data_config
from recsys.app.movielens import import_movielens, read_ratings
from recsys.core.features import load_registry
from tests.conftest import ML_100K

DAY = 86_400
GENRES = ["unknown", "Action", "Adventure", "Comedy", "Drama"]
T0 = 880_000_000  # 1997-11-20


def write_movielens(directory, ratings, items, users):
    """The MovieLens 100K layout: tab-separated u.data, |-separated latin-1 others."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "u.data"), "w") as handle:
        handle.writelines(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings)
    with open(os.path.join(directory, "u.genre"), "w") as handle:
        handle.writelines(f"{g}|{n}\n" for n, g in enumerate(GENRES))
        handle.write("\n")
    with open(os.path.join(directory, "u.item"), "w", encoding="latin-1") as handle:
        for item, title, genres in items:
            flags = "|".join("1" if g in genres else "0" for g in GENRES)
            handle.write(f"{item}|{title}|01-Jan-1995||http://imdb|{flags}\n")
    with open(os.path.join(directory, "u.user"), "w") as handle:
        handle.writelines(f"{u}|30|F|other|{zip_code}\n" for u, zip_code in users)


@pytest.fixture()
def small_movielens(tmp_path):
    ratings = [
        (1, 10, 5, T0),
        (1, 11, 2, T0 + 3600),
        (2, 10, 4, T0 + DAY),
        (2, 12, 3, T0 + 2 * DAY),
        (1, 12, 4, T0 + 9 * DAY),
        (3, 99, 5, T0 + 3 * DAY),
    ]  # movie 99 is not in u.item
    items = [
        (10, "Amélie (2001)", {"Comedy", "Drama"}),  # latin-1
        (11, 'The "Quoted" One (1990)', {"Action"}),  # a quote must not open a field
        (12, "No Genre (1993)", set()),
    ]
    users = [(1, "55105"), (2, "T8H1N"), (3, "02139")]
    source = tmp_path / "ml"
    write_movielens(source, ratings, items, users)
    return str(source), ratings


def test_conversion_through_the_generic_importer(small_movielens, tmp_path):
    source, ratings = small_movielens
    out = tmp_path / "raw"
    result = import_movielens(source, str(out))
    assert result.counts["impressions"] == len(ratings)
    impressions = pd.read_parquet(out / "impressions.parquet")
    assert impressions["event_id"].is_unique
    by_pair = impressions.set_index(["user_id", "item_id"])
    assert by_pair.loc[("1", "10"), "clicked"] == 1 and by_pair.loc[("1", "11"), "clicked"] == 0
    assert by_pair.loc[("2", "10"), "clicked"] == 1  # rating 4 counts as engagement
    # Kept, for ingest to quarantine as unknown_item_id
    assert "99" in set(impressions["item_id"])

    items = pd.read_parquet(out / "items.parquet").set_index("item_id")
    assert list(items.columns) == ["category"]  # nothing invented: no creator, duration
    assert len(items) == 3  # the quoted title did not swallow a line
    assert items.loc["10", "category"] == "Comedy"  # first flagged genre in u.genre order
    assert items.loc["11", "category"] == "Action"
    assert items.loc["12", "category"] == "unknown"
    users = pd.read_parquet(out / "users.parquet").set_index("user_id")
    assert list(users.columns) == ["age", "gender", "occupation"]
    registry = load_registry(str(out / "schemas"))
    for invented in ("country", "device", "creator_id", "duration_s", "item_age_days"):
        assert invented not in registry and invented in registry.switched_off
    assert registry["occupation"].transform == "vocabulary"
    assert registry["age"].transform == "log_z_score"
    # No feature tables: ingest derives them from the ratings (test_import.py).
    assert not (out / "user_features.parquet").exists()


def test_schemas_and_parameters_fit_the_data(small_movielens, tmp_path):
    source, _ = small_movielens
    out = tmp_path / "raw"
    import_movielens(source, str(out))
    items_schema = (out / "schemas" / "items.schema.pbtxt").read_text()
    for genre in ("Action", "Comedy", "unknown"):
        assert f'value: "{genre}"' in items_schema
    assert 'value: "news"' not in items_schema
    config = yaml.safe_load((out / "recsys.yaml").read_text())
    assert config["schema_dir"] == "schemas"
    assert config["lookback_days"] == 10  # ratings span day 0 to day 9
    assert config["watched_from"] == "impressions"
    # `recsys run --data` resolves the schema directory against the data directory.
    assert data_config(str(out))["schema_dir"] == str(out / "schemas")
    assert data_config(str(tmp_path)) == {}


def test_cli_reports_a_missing_layout(tmp_path, capsys):
    assert (
        cli.main(["import-movielens", "--src", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    )
    error = capsys.readouterr().err
    assert "u.data" in error and "grouplens.org" in error


def test_unknown_parameter_in_data_config_is_an_error(tmp_path):
    (tmp_path / "recsys.yaml").write_text("lookback_dayz: 3\n")
    with pytest.raises(ValueError, match="lookback_dayz"):
        data_config(str(tmp_path))


needs_movielens = pytest.mark.skipif(
    not os.path.isfile(os.path.join(ML_100K, "u.data")),
    reason=f"MovieLens 100K not found at {os.path.abspath(ML_100K)} (not redistributable, so "
    "not in the repository); download ml-100k.zip from grouplens.org and unzip it there",
)


@pytest.mark.trains
@needs_movielens
def test_real_movielens_converts_and_passes_the_data_checks(tmp_path):
    """The real files through import, then ingest -> join -> validate with the
    written schemas and parameters: what `recsys run --data` runs first."""
    from recsys.app.data_check import check_span

    out = tmp_path / "raw"
    counts = import_movielens(ML_100K, str(out)).counts
    ratings = read_ratings(ML_100K)
    assert counts["impressions"] == len(ratings) == 100_000
    impressions = pd.read_parquet(out / "impressions.parquet")
    assert impressions["clicked"].sum() == (ratings["rating"] >= 4).sum()
    assert np.array_equal(
        np.sort(impressions["event_ts"].astype("int64") // 10**9), np.sort(ratings["timestamp"])
    )
    config = data_config(str(out))
    # Raises ValidationFailed on any blocking anomaly against the written schemas.
    result = check_span(str(out), str(tmp_path / "check"), config)
    ingested = result["ingest"]
    # Only ratings of movies missing from u.item are quarantined, with their reason.
    listed = set(pd.read_parquet(out / "items.parquet")["item_id"])
    unlisted = int((~impressions["item_id"].isin(listed)).sum())
    assert ingested["quarantined"] == unlisted
    assert ingested["train_events"] + ingested["eval_events"] == 100_000 - unlisted


@needs_movielens
@pytest.mark.e2e
@pytest.mark.xdist_group("movielens")  # a whole pipeline run: its own group, any worker
def test_recsys_run_on_movielens(tmp_path):
    """`recsys import --preset movielens-100k`, then `recsys run --data` with nothing
    else: the data directory's recsys.yaml supplies the window and the schemas."""
    from recsys.serving.snapshot import pushed_registry
    from tests.test_e2e import recsys

    data = tmp_path / "movielens"
    imported = recsys("import", "--preset", "movielens-100k", "--src", ML_100K, "--out", str(data))
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert "creator_id: the items mapping names no column for it" in imported.stdout
    workdir = tmp_path / "run"
    config = tmp_path / "fast.yaml"  # fewer epochs: this test checks the path, not quality
    config.write_text("retrieval_epochs: 3\nranking_epochs: 1\n")
    result = recsys("run", "--data", str(data), "--workdir", str(workdir), "--config", str(config))
    assert result.returncode == 0, result.stderr[-5000:]
    assert f"parameters from {data / 'recsys.yaml'}" in result.stderr
    (outputs_file,) = (workdir / "runs").glob("*/outputs.json")  # the one run's own directory
    outputs = json.loads(outputs_file.read_text())
    ingested = outputs["ingest_metrics"]["metadata"]
    impressions = pd.read_parquet(data / "impressions.parquet")
    unlisted = ~impressions["item_id"].isin(pd.read_parquet(data / "items.parquet")["item_id"])
    assert (
        ingested["quarantined"] == ingested.get("quarantined_unknown_item_id", 0) == unlisted.sum()
    )
    retrieval = outputs["retrieval_metrics"]["metadata"]
    assert retrieval["catalog_items"] == len(pd.read_parquet(data / "items.parquet"))
    assert retrieval["recall_at_50"] > retrieval["popularity_recall_at_50"]
    assert outputs["blessing"]["metadata"]["blessed"] is True
    # A ratings log: every impression is a consumption, so the ranker learns which.
    assert outputs["ranking_training"]["metadata"]["consumption_head"] == 1
    # MovieLens has no creators: no creator cap cuts pages.
    funnel = outputs["funnel_metrics"]["metadata"]
    assert funnel["funnel_mean_page_length"] == funnel["funnel_k"]
    assert (workdir / "serving" / "retrieval" / "1" / "saved_model.pb").is_file()
    # Nothing invented reached the models, and the summary says what was left out.
    served = pushed_registry(str(workdir / "serving" / "feature_snapshot" / "1"))
    assert {"age", "gender", "occupation", "category"} <= set(served.features)
    assert not {"country", "device", "creator_id", "duration_s"} & set(served.features)
    assert "switched off:" in result.stdout
    assert "  device: the users mapping names no column for it" in result.stdout
    assert "derived from the interactions (no such table): user_features, item_features" in (
        result.stdout
    )
