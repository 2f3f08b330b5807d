"""The feature registry: what it derives for each model and stage, the checks that
keep it and the curated schemas in agreement, and the derived features written once
for training and serving."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.core.contracts import FEATURES_FILE, UNKNOWN
from recsys.core.derived import context_columns, item_age_days
from recsys.core.features import RegistryError, load_registry
from recsys.core.requests import serving_contract
from recsys.core.schemas import SCHEMA_DIR

USER = [
    "user_id",
    "country",
    "device",
    "user_impressions_7d",
    "user_clicks_7d",
    "user_watch_seconds_7d",
    "user_features_missing",
    "user_history_items",
    "user_history_count",
    "user_history_mean_watch_seconds",
]
CONTEXT = ["hour_of_day", "day_of_week"]
CANDIDATE = ["item_id", "category", "creator_id", "duration_s"]
ITEM_STATISTICS = [
    "item_age_days",
    "item_impressions_7d",
    "item_clicks_7d",
    "item_ctr_7d",
    "item_features_missing",
]


def test_the_packaged_registry_gives_each_model_its_features_in_order():
    registry = load_registry()
    assert registry.inputs("retrieval.query") == USER + CONTEXT
    assert registry.inputs("retrieval.candidate") == CANDIDATE
    assert registry.inputs("ranking") == USER + CANDIDATE + ITEM_STATISTICS + CONTEXT
    assert [c.name for c in registry.tower_crosses("ranking")] == ["history_has_item"]
    assert registry.side("user") == USER and registry.side("item") == CANDIDATE + ITEM_STATISTICS
    assert registry.labels == ["clicked", "watch_seconds"]
    assert (registry.role("category"), registry.role("creator"), registry.role("item_age")) == (
        "category",
        "creator_id",
        "item_age_days",
    )
    assert registry["hour_of_day"].cardinality == 24 and registry["day_of_week"].cardinality == 7
    assert serving_contract("retrieval", registry)["user_history_items"] == ("string", 2)
    assert serving_contract("ranking", registry)["item_ctr_7d"] == ("float32", 1)


def test_the_cold_start_row_is_the_registry_defaults_with_missing_flags_set():
    row = load_registry().missing_row("user", "someone-new")
    assert list(row) == USER
    assert row["user_id"][0] == "someone-new" and row["country"][0] == UNKNOWN
    assert row["user_features_missing"][0] == 1 and list(row["user_history_items"][0]) == []
    assert row["user_clicks_7d"].dtype == np.float32 and row["user_clicks_7d"][0] == 0


def _schemas(tmp_path) -> str:
    directory = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, directory)
    return str(directory)


def _edit(path, old, new):
    with open(path) as handle:
        text = handle.read()
    assert old in text, old
    with open(path, "w") as handle:
        handle.write(text.replace(old, new))


@pytest.mark.parametrize(
    "file, old, new, message",
    [
        # A registry feature the examples schema lacks.
        (
            FEATURES_FILE,
            "  hour_of_day:",
            "  language: {group: user, source: users, transform: "
            "vocabulary, models: [ranking]}\n  hour_of_day:",
            "feature 'language' is not in examples.schema.pbtxt. Declare its type there too",
        ),
        # An examples schema feature the registry lacks.
        (
            FEATURES_FILE,
            "  device:                 {group: user, source: users, transform: "
            "vocabulary, models: [retrieval.query, ranking]}\n",
            "",
            "examples schema feature 'device' is not in the registry",
        ),
        # A transform that does not fit the type.
        (
            FEATURES_FILE,
            "country:                {group: user, source: users, transform: vocabulary",
            "country:                {group: user, source: users, transform: z_score",
            "feature 'country': transform z_score needs int64 or float32 values; the schema says "
            "string",
        ),
        (FEATURES_FILE, "role: category,", "role: genre,", "role 'genre' is not one of"),
        (
            FEATURES_FILE,
            "models: [ranking]}\n  item_impressions_7d",
            "modle: [ranking]}\n  item_impressions_7d",
            "has unknown key(s) ['modle']",
        ),
        (
            FEATURES_FILE,
            "transform: sequence, of: item_id",
            "transform: sequence, of: creator",
            "a sequence needs 'of: <a vocabulary feature>'",
        ),
        (
            FEATURES_FILE,
            "user_clicks_7d:         {group: user, source: user_features,",
            "user_clicks_7d:         {group: user, default: none, source: user_features,",
            "feature 'user_clicks_7d': default 'none' is not a float32 value",
        ),
        # A label that serving would have to send.
        (
            "examples.schema.pbtxt",
            '  int_domain { min: 0 max: 1 }\n  not_in_environment: "SERVING"',
            "  int_domain { min: 0 max: 1 }",
            "feature 'clicked': a label must be not_in_environment",
        ),
        # A category without its range.
        (
            "examples.schema.pbtxt",
            "int_domain { min: 0 max: 23 }",
            "int_domain { min: 0 }",
            "feature 'hour_of_day': a category needs an int_domain",
        ),
    ],
)
def test_a_registry_that_disagrees_with_the_schemas_names_file_feature_and_fix(
    file, old, new, message, tmp_path
):
    directory = _schemas(tmp_path)
    _edit(os.path.join(directory, file), old, new)
    with pytest.raises(RegistryError) as error:
        load_registry(directory)
    assert message in str(error.value)
    assert "features.yaml" in str(error.value)


def test_a_broken_registry_stops_the_run_at_ingest_with_the_reason(tiny_data, tmp_path):
    from recsys.app.data_check import check_span

    directory = _schemas(tmp_path)
    _edit(
        os.path.join(directory, FEATURES_FILE),
        "transform: log_z_score, models: [retrieval.candidate",
        "transform: vocabulary, models: [retrieval.candidate",
    )
    with pytest.raises(
        RegistryError, match="feature 'duration_s': transform vocabulary needs string values"
    ):
        check_span(tiny_data, str(tmp_path / "check"), {"schema_dir": directory})
    assert not os.path.exists(tmp_path / "check" / "ingest" / "train_events")


def test_a_schema_dir_without_a_registry_uses_the_packaged_one(tmp_path):
    directory = _schemas(tmp_path)
    os.remove(os.path.join(directory, FEATURES_FILE))
    assert load_registry(directory).inputs("ranking") == load_registry().inputs("ranking")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-2_000_000_000, 4_000_000_000), min_size=1, max_size=50))
def test_context_columns_are_pandas_utc_hour_and_weekday(seconds):
    stamps = pd.to_datetime(pd.Series(seconds), unit="s", utc=True)
    context = context_columns(np.array(seconds))
    np.testing.assert_array_equal(context["hour_of_day"], stamps.dt.hour.to_numpy())
    np.testing.assert_array_equal(context["day_of_week"], stamps.dt.dayofweek.to_numpy())


def test_item_age_is_in_days_and_never_negative():
    np.testing.assert_allclose(
        item_age_days(np.array([86_400 * 3, 10]), np.array([0, 20])), [3.0, 0.0]
    )
