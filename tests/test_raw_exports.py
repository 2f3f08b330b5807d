"""What real exports look like, through ingest's streaming reader (and the importer):
partition folders, gzip-compressed CSV, a ragged CSV row, repeated column names, a
label that never varies, timestamps that are not event times. Each is read, or
refused with a message naming the file, the row or column and the fix."""

import gzip
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from recsys.app.importer import MappingError, import_data
from recsys.components.ingest.config import IngestConfig
from recsys.components.ingest.ingest import ingest
from recsys.core.contracts import INGEST_OUTPUTS
from recsys.core.tables import DataError, read_dataset

DAY = 86_400


def _copy(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    return data


def _ingest(data, tmp_path, batch_rows=1_000, **options):
    outputs = {name: str(tmp_path / "out" / name) for name in INGEST_OUTPUTS}
    config = IngestConfig(lookback_days=10, eval_days=3, **options)
    return ingest(str(data), outputs, config, batch_rows=batch_rows), outputs


def _events(data) -> pd.DataFrame:
    return pd.read_parquet(data / "impressions.parquet")


def test_hive_partition_folders_are_read(tiny_data, tmp_path):
    """impressions/dt=YYYY-MM-DD/part-0.parquet, as Spark and Hive write them: every
    file under the folder is read, the folder names are not columns."""
    reference, _ = _ingest(_copy(tiny_data, tmp_path / "flat"), tmp_path / "flat")
    data = _copy(tiny_data, tmp_path)
    events = _events(data)
    (data / "impressions.parquet").unlink()
    for day, rows in events.groupby(events["event_ts"].dt.strftime("%Y-%m-%d")):
        folder = data / "impressions" / f"dt={day}"
        folder.mkdir(parents=True)
        rows.to_parquet(folder / "part-0.parquet")
    (data / "impressions" / "_SUCCESS").write_text("")  # a marker file, not data
    counts, outputs = _ingest(data, tmp_path)
    assert counts["impressions_read"] == len(events)
    for name in ("train_events", "eval_events", "impressions_quarantined"):
        assert counts[name] == reference[name]
    assert "dt" not in read_dataset(outputs["train_events"]).columns


def test_gzip_csv_is_read_like_the_parquet(tiny_data, tmp_path):
    reference, _ = _ingest(_copy(tiny_data, tmp_path / "parquet"), tmp_path / "parquet")
    data = _copy(tiny_data, tmp_path)
    events = _events(data)
    events["event_ts"] = events["event_ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    (data / "impressions.parquet").unlink()
    with gzip.open(data / "impressions.csv.gz", "wt") as handle:
        events.to_csv(handle, index=False)
    counts, _ = _ingest(data, tmp_path)
    assert counts["impressions_read"] == len(events)
    assert counts["train_events"] == reference["train_events"] > 0
    assert counts["quarantined"] == 0


def test_a_ragged_csv_row_is_quarantined_alone_with_its_file_and_row(tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    events = _events(data)
    events["event_ts"] = events["event_ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    events["watch_seconds"] = events["watch_seconds"].astype(object)
    events.loc[1999, "watch_seconds"] = "12s"  # data row 2000: a wrong type, after a ragged row
    (data / "impressions.parquet").unlink()
    lines = events.to_csv(index=False).splitlines()
    # Data row 1500 (line 1501) gets a stray field; data row 2500 loses two.
    lines[1500] += ",surplus"
    lines[2500] = ",".join(lines[2500].split(",")[:-2])
    (data / "impressions.csv").write_text("\n".join(lines) + "\n")
    counts, outputs = _ingest(data, tmp_path, batch_rows=700)  # rows on both sides of batches
    quarantine = read_dataset(outputs["quarantine"]).set_index("row")
    assert counts["quarantined_ragged_row"] == 2 and counts["quarantined_wrong_type"] == 1
    assert counts["impressions_read"] == len(events)
    assert counts["impressions_accepted"] == len(events) - 3
    assert sorted(quarantine.index) == [1500, 2000, 2500]  # the file's own data rows
    assert quarantine["source_file"].str.endswith("impressions.csv").all()
    surplus = quarantine.loc[1500]
    assert surplus["reason"] == "ragged_row" and "fields; the header has" in surplus["detail"]
    assert json.loads(surplus["original"]).endswith(",surplus")
    assert json.loads(quarantine.loc[2000, "original"])["event_id"] == events["event_id"][1999]


def test_repeated_column_names_are_named_in_csv_and_parquet(tiny_data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = _copy(tiny_data, tmp_path)
    events = _events(data)
    events["event_ts"] = events["event_ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    (data / "impressions.parquet").unlink()
    text = events.to_csv(index=False).splitlines()
    header = text[0].split(",")
    header[header.index("watch_seconds")] = "clicked"
    (data / "impressions.csv").write_text("\n".join([",".join(header), *text[1:]]) + "\n")
    with pytest.raises(DataError, match=r"impressions.csv: column name\(s\) \['clicked'\] appear"):
        _ingest(data, tmp_path)

    (data / "impressions.csv").unlink()
    table = pa.Table.from_pandas(pd.read_parquet(f"{tiny_data}/impressions.parquet"))
    twice = pa.Table.from_arrays(
        [*table.columns, table.column("clicked")], names=[*table.column_names, "clicked"]
    )
    pq.write_table(twice, data / "impressions.parquet")
    with pytest.raises(DataError, match=r"impressions.parquet: column name\(s\) \['clicked'\]"):
        _ingest(data, tmp_path / "parquet")


@pytest.mark.parametrize("label", [0, 1])
def test_a_window_whose_label_never_varies_is_blocked(tiny_data, tmp_path, label):
    data = _copy(tiny_data, tmp_path)
    events = _events(data)
    events["clicked"] = label
    events["watch_seconds"] = 0.0
    events.to_parquet(data / "impressions.parquet")
    with pytest.raises(DataError, match="the label is constant") as error:
        _ingest(data, tmp_path)
    assert f"clicked = {label}" in str(error.value)


def test_timestamps_that_are_not_event_times_are_refused_by_the_importer(tmp_path):
    """--timestamp pointed at an id column: 1, 2, 3, ... read as seconds since 1970."""
    rng = np.random.default_rng(1)
    n = 500
    pd.DataFrame(
        {
            "user": rng.integers(0, 50, n),
            "item": rng.integers(0, 80, n),
            "rating": rng.integers(1, 6, n),
            "row_id": np.arange(1, n + 1),
        }
    ).to_csv(tmp_path / "log.csv", index=False)
    section = {"path": str(tmp_path / "log.csv"), "user": "user", "item": "item"}
    section.update(timestamp="row_id", label="rating >= 4")
    with pytest.raises(MappingError, match="fall before 1990") as error:
        import_data({"interactions": section}, str(tmp_path / "out"))
    message = str(error.value)
    assert "'row_id'" in message and "1970-01-01 to 1970-01-01" in message
    assert "--timestamp" in message
