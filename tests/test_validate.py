import shutil

import pytest

from components.validate.validate import ValidationFailed, validate
from recsys.tables import read_dataset, write_dataset
from tests.conftest import TABLES


def test_clean_data_passes_and_reports_rows(stages):
    # The shared stage run already validated; re-validate to read the summary.
    paths = stages["paths"]
    report = str(stages["root"] / "validation.html")
    summary = validate({n: paths[n] for n in TABLES}, "", paths["stats"] + "2",
                       paths["anomalies"] + "2", report_path=report)
    assert summary["train_events"] == {"rows": stages["counts"]["train_events"], "anomalies": 0}
    assert "| items |" in summary["markdown"]
    with open(report) as handle:
        page = handle.read()
    assert "No anomalies" in page
    assert 'alt="watch_seconds" src="data:image/png;base64,' in page  # train vs eval plot
    assert "http://" not in page and "https://" not in page  # renders offline


def _copy_tables(stages, tmp_path):
    copies = {}
    for name in TABLES:
        copies[name] = str(tmp_path / name)
        shutil.copytree(stages["paths"][name], copies[name])
    return copies


def test_wrong_type_blocks_with_feature_and_advice(stages, tmp_path):
    tables = _copy_tables(stages, tmp_path)
    events = read_dataset(tables["train_events"])
    events["watch_seconds"] = events["watch_seconds"].astype(str)  # e.g. a CSV export gone wrong
    shutil.rmtree(tables["train_events"])
    write_dataset(events, tables["train_events"])
    with pytest.raises(ValidationFailed) as failure:
        validate(tables, "", str(tmp_path / "stats"), str(tmp_path / "anomalies"),
                 report_path=str(tmp_path / "report.html"))
    message = str(failure.value)
    assert "train_events: feature 'watch_seconds'" in message
    # The report is written before the run stops, so the failure can be looked at.
    assert "Expected data of type: FLOAT" in (tmp_path / "report.html").read_text()
    assert "Expected data of type: FLOAT but got STRING" in message
    assert "What to do" in message
    assert (tmp_path / "anomalies" / "train_events.anomalies.pbtxt").exists()


def test_out_of_range_and_unknown_category_block(stages, tmp_path):
    tables = _copy_tables(stages, tmp_path)
    items = read_dataset(tables["items"])
    items.loc[items.index[: len(items) // 2], "category"] = "crypto"
    events = read_dataset(tables["eval_events"])
    events.loc[events.index[0], "clicked"] = 7
    for name, frame in (("items", items), ("eval_events", events)):
        shutil.rmtree(tables[name])
        write_dataset(frame, tables[name])
    with pytest.raises(ValidationFailed) as failure:
        validate(tables, "", str(tmp_path / "stats"), str(tmp_path / "anomalies"))
    message = str(failure.value)
    assert "items: feature 'category'" in message
    assert "eval_events: feature 'clicked'" in message
