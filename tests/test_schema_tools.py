import shutil

import pandas as pd
import pytest
import tensorflow_data_validation as tfdv

from recsys.app import schema_tools
from recsys.core.schemas import SCHEMA_DIR


def test_infer_proposes_ranges_and_diff_shows_only_real_differences(tiny_data, tmp_path):
    written = schema_tools.infer(tiny_data, str(tmp_path / "proposed"))
    assert set(written) == {
        "impressions",
        "users",
        "items",
        "user_features",
        "item_features",
        "examples",
        "features.yaml",
    }
    proposed = tfdv.load_schema_text(written["impressions"])
    watch = tfdv.get_feature(proposed, "watch_seconds")
    assert watch.HasField("float_domain")  # TFDV alone sets none
    # Non-negative, and open-ended: the next day's longest watch is above today's.
    assert watch.float_domain.min == 0 and not watch.float_domain.HasField("max")

    report = schema_tools.diff(str(tmp_path / "proposed"))
    assert "## impressions: feature 'watch_seconds' (differs)" in report
    assert "-  max: 86400.0" in report  # the curated bound, versus the observed one
    assert "feature 'event_id'" not in report  # identical features are not listed

    shutil.copytree(SCHEMA_DIR, tmp_path / "same")
    assert schema_tools.diff(str(tmp_path / "same")) == "no differences"


@pytest.mark.trains
def test_inferred_schemas_are_a_schema_dir_that_passes_its_data(tiny_data, tmp_path):
    """Usable as written: the proposed directory (the examples schema and registry
    included) checks the data it came from without a blocking anomaly."""
    from recsys.app.data_check import check_span

    proposed = tmp_path / "proposed"
    schema_tools.infer(tiny_data, str(proposed))
    examples = tfdv.load_schema_text(str(proposed / "examples.schema.pbtxt"))
    country = tfdv.get_feature(examples, "country")
    users = pd.read_parquet(f"{tiny_data}/users.parquet")
    assert set(country.string_domain.value) == set(users["country"])  # from the data
    assert not tfdv.get_feature(examples, "user_id").HasField("string_domain")  # ids: none
    checked = check_span(tiny_data, str(tmp_path / "check"), {"schema_dir": str(proposed)})
    assert [a for a in checked["validate"]["anomalies"] if a.action == "block"] == []
