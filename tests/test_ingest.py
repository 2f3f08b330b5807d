import json
import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.components.ingest.config import IngestConfig
from recsys.components.ingest.ingest import Window, ingest, resolve_window, split_events
from recsys.core.contracts import INGEST_OUTPUTS
from recsys.core.derived import DAY
from recsys.core.tables import (
    DataError,
    parse_timestamps,
    read_dataset,
    read_raw_table,
    to_unix_seconds,
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 40 * DAY), min_size=1, max_size=200),
    st.integers(2, 20),
    st.integers(1, 19),
)
def test_split_is_by_time_and_loses_no_row(offsets, lookback, eval_days):
    eval_days = min(eval_days, lookback - 1)
    as_of = 30 * DAY
    events = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(offsets))],
            "event_ts": np.array(offsets, dtype=np.int64),
        }
    )
    window = Window(as_of, lookback, eval_days)
    try:
        train, evaluation, counts = split_events(events, window)
    except DataError as error:
        assert "window" in str(error)
        return
    assert (train["event_ts"] >= window.start).all()
    assert (train["event_ts"] < window.eval_start).all()
    assert (evaluation["event_ts"] >= window.eval_start).all()
    assert (evaluation["event_ts"] < as_of).all()
    assert len(train) + len(evaluation) + counts["impressions_before_window"] + counts[
        "impressions_at_or_after_as_of"
    ] == len(events)


def test_default_as_of_is_midnight_after_newest_event():
    ts = pd.Series([5 * DAY + 100, 9 * DAY + 3600])
    assert resolve_window("", 7, 2, ts).as_of == 10 * DAY
    assert resolve_window("1970-01-04", 7, 2, ts).as_of == 3 * DAY
    with pytest.raises(DataError, match="eval_days"):
        resolve_window("", 3, 3, ts)
    with pytest.raises(DataError, match="not a date"):
        resolve_window("yesterday-ish", 7, 2, ts)


def test_ingest_writes_every_table_and_drops_future_snapshots(tiny_data, tmp_path):
    outputs = {name: str(tmp_path / name) for name in INGEST_OUTPUTS}
    counts = ingest(tiny_data, outputs, IngestConfig(lookback_days=10, eval_days=3))
    train, evaluation = read_dataset(outputs["train_events"]), read_dataset(outputs["eval_events"])
    assert len(train) == counts["train_events"] > 0
    assert len(evaluation) == counts["eval_events"] > 0
    assert train["event_ts"].max() < counts["eval_start"] <= evaluation["event_ts"].min()
    assert train["event_ts"].dtype == np.int64
    # The optional propensity column is kept when the data has it.
    assert evaluation["propensity"].between(0, 1, inclusive="right").all()
    snapshots = read_dataset(outputs["user_features"])
    assert (snapshots["feature_ts"] <= counts["as_of"]).all()
    # The tiny data has a snapshot stamped exactly at as_of (serving uses it), none later.
    assert counts["user_features_after_as_of"] == 0
    assert counts["quarantined"] == 0 and len(read_dataset(outputs["quarantine"])) == 0
    serving = read_dataset(outputs["serving_log"])
    assert len(serving) == counts["serving_log"] > 0
    assert serving["event_ts"].between(counts["as_of"] - DAY, counts["as_of"] - 1).all()


def test_csv_with_iso_timestamps_reads_like_parquet(tiny_data, tmp_path):
    parquet = read_raw_table(tiny_data, "impressions")
    raw = pd.read_parquet(f"{tiny_data}/impressions.parquet")
    raw["event_ts"] = raw["event_ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    raw.to_csv(tmp_path / "impressions.csv", index=False)
    pd.testing.assert_frame_equal(read_raw_table(str(tmp_path), "impressions"), parquet)


def test_missing_column_names_file_and_columns(tiny_data, tmp_path):
    frame = pd.read_parquet(f"{tiny_data}/impressions.parquet").drop(columns=["clicked"])
    frame.to_parquet(tmp_path / "impressions.parquet")
    with pytest.raises(
        DataError, match=r"impressions.parquet: missing required column\(s\) \['clicked'\]"
    ):
        read_raw_table(str(tmp_path), "impressions")


def test_missing_table_and_bad_timestamps_are_explained(tmp_path):
    with pytest.raises(DataError, match="raw table 'users' not found"):
        read_raw_table(str(tmp_path), "users")
    with pytest.raises(DataError, match=r"'event_ts' has 2 value\(s\) that are not timestamps"):
        to_unix_seconds(pd.Series(["2026-01-01T00:00:00Z", "soon", "later"]), "x.csv", "event_ts")


def _copy_of(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    return data


def _ingest(data, tmp_path, now=None, **options):
    outputs = {name: str(tmp_path / "out" / name) for name in INGEST_OUTPUTS}
    counts = ingest(
        str(data), outputs, IngestConfig(lookback_days=10, eval_days=3, **options), now=now
    )
    return counts, outputs


def _rows_of(impressions: pd.DataFrame, n: int) -> pd.Index:
    return impressions.index[100 : 100 + 5 * n : 5]


def _text_value(frame, rows, column, value):
    frame[column] = frame[column].astype(object)
    frame.loc[rows, column] = value


# Each fault: (what is done to 4 impression rows, reason, column). The file is
# written as CSV so text faults arrive as text, the way real exports do.
FAULTS = {
    "wrong type": (
        lambda f, r: _text_value(f, r, "watch_seconds", "12.5s"),
        "wrong_type",
        "watch_seconds",
    ),
    "NaN": (lambda f, r: _text_value(f, r, "watch_seconds", "NaN"), "not_finite", "watch_seconds"),
    "inf": (lambda f, r: _text_value(f, r, "watch_seconds", "inf"), "not_finite", "watch_seconds"),
    "empty required field": (
        lambda f, r: _text_value(f, r, "user_id", None),
        "missing_value",
        "user_id",
    ),
    "out-of-range number": (
        lambda f, r: _text_value(f, r, "clicked", 3),
        "out_of_range",
        "clicked",
    ),
    "fractional int": (lambda f, r: _text_value(f, r, "clicked", 0.5), "wrong_type", "clicked"),
    "future timestamp": (
        lambda f, r: _text_value(f, r, "event_ts", "2099-06-01T00:00:00Z"),
        "future_timestamp",
        "event_ts",
    ),
    "unparseable timestamp": (
        lambda f, r: _text_value(f, r, "event_ts", "yesterday"),
        "wrong_type",
        "event_ts",
    ),
    "duplicate event ids": (
        lambda f, r: _text_value(f, r, "event_id", f["event_id"].iloc[0]),
        "duplicate_key",
        "event_id",
    ),
    "unknown user": (
        lambda f, r: _text_value(f, r, "user_id", "u999999"),
        "unknown_user_id",
        "user_id",
    ),
    "unknown item": (
        lambda f, r: _text_value(f, r, "item_id", "v999999"),
        "unknown_item_id",
        "item_id",
    ),
    "zero propensity": (
        lambda f, r: _text_value(f, r, "propensity", 0.0),
        "out_of_range",
        "propensity",
    ),
    "propensity above 1": (
        lambda f, r: _text_value(f, r, "propensity", 1.5),
        "out_of_range",
        "propensity",
    ),
    "watch longer than video": (
        lambda f, r: _text_value(f, r, "watch_seconds", 86000.0),
        "watch_exceeds_duration",
        "watch_seconds",
    ),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_bad_rows_are_quarantined_with_reason_and_original(fault, tiny_data, tmp_path):
    data = _copy_of(tiny_data, tmp_path)
    events = pd.read_parquet(data / "impressions.parquet")
    events["event_ts"] = events["event_ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    mutate, reason, column = FAULTS[fault]
    rows = _rows_of(events, 4)
    originals = events.loc[rows, "event_id"].tolist()
    mutate(events, rows)
    (data / "impressions.parquet").unlink()
    events.to_csv(data / "impressions.csv", index=False)

    counts, outputs = _ingest(data, tmp_path)

    quarantine = read_dataset(outputs["quarantine"])
    assert counts["impressions_quarantined"] == counts["quarantined"] == len(quarantine) == 4
    assert counts[f"quarantined_{reason}"] == 4
    assert set(quarantine["reason"]) == {reason} and set(quarantine["column"]) == {column}
    assert list(quarantine["row"]) == [i + 1 for i in rows]  # 1-based data rows of the file
    assert quarantine["source_file"].str.endswith("impressions.csv").all()
    kept = [json.loads(text)["event_id"] for text in quarantine["original"]]
    if fault != "duplicate event ids":
        assert kept == originals
    accepted = (
        counts["train_events"]
        + counts["eval_events"]
        + counts["impressions_before_window"]
        + counts["impressions_at_or_after_as_of"]
    )
    assert accepted + counts["impressions_quarantined"] == counts["impressions_read"] == len(events)


def test_latin1_text_is_quarantined_unless_declared(tiny_data, tmp_path):
    data = _copy_of(tiny_data, tmp_path)
    events = pd.read_parquet(data / "impressions.parquet")
    events["note"] = "plain"
    events.loc[_rows_of(events, 3), "note"] = "Zoë à São Paulo"
    (data / "impressions.parquet").unlink()
    events.to_csv(data / "impressions.csv", index=False, encoding="latin-1")
    events.loc[_rows_of(events, 1), "note"].iloc[0].encode("latin-1")  # really latin-1 bytes

    counts, outputs = _ingest(data, tmp_path)
    quarantine = read_dataset(outputs["quarantine"])
    assert counts["quarantined_undecodable_text"] == 3
    assert "São Paulo" in quarantine["original"].iloc[0]  # original kept, read as latin-1

    counts, outputs = _ingest(data, tmp_path / "declared", input_encoding="latin-1")
    assert counts["quarantined"] == 0
    accepted = pd.concat(
        [read_dataset(outputs["train_events"]), read_dataset(outputs["eval_events"])]
    )
    assert (accepted["note"] == "Zoë à São Paulo").sum() == 3

    events.to_csv(data / "impressions.csv", index=False, encoding="utf-8")  # UTF-8 is fine
    counts, _ = _ingest(data, tmp_path / "utf8")
    assert counts["quarantined"] == 0


def test_duplicate_and_unknown_ids_in_reference_and_feature_tables(tiny_data, tmp_path):
    data = _copy_of(tiny_data, tmp_path)
    items = pd.read_parquet(data / "items.parquet")
    pd.concat([items, items.tail(1)]).to_parquet(data / "items.parquet")
    snapshots = pd.read_parquet(data / "user_features.parquet")
    snapshots.loc[snapshots.index[:2], "user_id"] = "u999999"
    snapshots.to_parquet(data / "user_features.parquet")
    serving = pd.read_parquet(data / "serving_log.parquet")
    serving.loc[serving.index[-2:], "user_id"] = "u999999"  # a user newer than the dump
    serving.to_parquet(data / "serving_log.parquet")
    counts, outputs = _ingest(data, tmp_path, max_reject_rate=0.01)
    quarantine = read_dataset(outputs["quarantine"]).set_index("table")
    assert quarantine.loc["items", "reason"] == "duplicate_key"
    assert quarantine.loc["items", "row"] == len(items) + 1
    assert list(quarantine.loc["user_features", "reason"]) == ["unknown_user_id"] * 2
    assert counts["items"] == len(items)
    assert counts["serving_log_quarantined"] == 0  # serving meets new users; not an error


def test_reject_rate_above_limit_fails_naming_reasons_examples_and_quarantine(tiny_data, tmp_path):
    data = _copy_of(tiny_data, tmp_path)
    events = pd.read_parquet(data / "impressions.parquet")
    events["watch_seconds"] = events["watch_seconds"].map(lambda s: f"{s}s")
    events.loc[events.index[:30], "user_id"] = "u999999"
    (data / "impressions.parquet").unlink()
    events.to_csv(data / "impressions.csv", index=False)
    with pytest.raises(DataError) as error:
        _ingest(data, tmp_path)
    message = str(error.value)
    assert f"{len(events)} of {len(events)} rows (100.0%) of table 'impressions'" in message
    assert "max_reject_rate=1.0%" in message
    assert f"wrong_type in column 'watch_seconds': {len(events)} rows" in message
    assert "impressions.csv row 1" in message and '"watch_seconds":"0.0s"' in message
    quarantine_dir = str(tmp_path / "out" / "quarantine")
    assert f"All quarantined rows with their reasons: {quarantine_dir}" in message
    assert len(read_dataset(quarantine_dir)) == len(events)  # written before failing


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(st.integers(0, 199), st.sampled_from(sorted(FAULTS)), max_size=12))
def test_every_row_is_accepted_or_quarantined_for_its_fault(tiny_data, tmp_path_factory, faults):
    """Any mix of faults on any rows: exactly the faulty rows are quarantined, each
    with its fault's reason, and read = accepted + quarantined."""
    tmp_path = tmp_path_factory.mktemp("mix")
    data = _copy_of(tiny_data, tmp_path)
    events = pd.read_parquet(data / "impressions.parquet")
    events = events.iloc[:: len(events) // 200].iloc[:200].reset_index(drop=True)
    events["event_ts"] = events["event_ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    for row, fault in faults.items():
        if fault == "duplicate event ids":  # duplicate of row 0 (which stays clean)
            if row == 0:
                continue
        FAULTS[fault][0](events, pd.Index([row]))
    if faults.get(0) and any(f == "duplicate event ids" for f in faults.values()):
        return  # row 0 itself broken: which copy is "first" is a different question
    (data / "impressions.parquet").unlink()
    events.to_csv(data / "impressions.csv", index=False)
    counts, outputs = _ingest(data, tmp_path, max_reject_rate=1.0)
    quarantine = read_dataset(outputs["quarantine"])
    expected = {
        row + 1: FAULTS[fault][1]
        for row, fault in faults.items()
        if not (fault == "duplicate event ids" and row == 0)
    }
    assert dict(zip(quarantine["row"], quarantine["reason"], strict=True)) == expected
    assert counts["impressions_read"] == 200
    assert counts["impressions_accepted"] + counts["impressions_quarantined"] == 200


def test_missing_required_column_stops_ingest_naming_table_and_column(tiny_data, tmp_path):
    data = _copy_of(tiny_data, tmp_path)
    users = pd.read_parquet(data / "users.parquet").drop(columns=["device"])
    users.to_parquet(data / "users.parquet")
    with pytest.raises(
        DataError,
        match=r"table 'users' .*users.parquet.*: required column "
        r"'device' is missing",
    ):
        _ingest(data, tmp_path)


def test_parquet_null_nan_and_inf_are_told_apart(tiny_data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = _copy_of(tiny_data, tmp_path)
    events = pd.read_parquet(data / "impressions.parquet")
    watch = events["watch_seconds"].to_numpy().copy()
    watch[[10, 11]] = [np.nan, np.inf]
    table = pa.Table.from_pandas(events.drop(columns=["watch_seconds"]), preserve_index=False)
    null_at_12 = pa.array(watch, mask=np.arange(len(watch)) == 12, from_pandas=False)
    pq.write_table(table.append_column("watch_seconds", null_at_12), data / "impressions.parquet")
    counts, outputs = _ingest(data, tmp_path)
    quarantine = read_dataset(outputs["quarantine"])
    assert dict(zip(quarantine["row"], quarantine["reason"], strict=True)) == {
        11: "not_finite",
        12: "not_finite",
        13: "missing_value",
    }


def test_history_lists_in_the_serving_log_are_checked(tiny_data, tmp_path):
    """The engagement history is a list column: text where a list belongs and a list
    longer than the schema's value_count max are quarantined; lists pass typed."""
    data = _copy_of(tiny_data, tmp_path)
    serving = pd.read_parquet(data / "serving_log.parquet")
    # Rows of the last half day: ingest keeps the serving log of the run's last day.
    last_day = serving.index[
        serving["event_ts"] >= serving["event_ts"].max() - pd.Timedelta(hours=12)
    ]
    as_text, too_long = last_day[0], last_day[1]
    history = serving["user_history_items"].map(list)
    history[too_long] = [f"v{i}" for i in range(51)]
    serving["user_history_items"] = history
    # Parquet cannot mix lists and text in one column: the text row comes in its own file.
    text_row = serving.loc[[as_text]].assign(user_history_items="v000001,v000002")
    (data / "serving_log.parquet").unlink()
    (data / "serving_log").mkdir()
    serving.drop(index=as_text).to_parquet(data / "serving_log" / "part-0.parquet")
    text_row.to_parquet(data / "serving_log" / "part-1.parquet")
    counts, outputs = _ingest(data, tmp_path, max_reject_rate=0.5)
    quarantine = read_dataset(outputs["quarantine"])
    bad = quarantine[quarantine["table"] == "serving_log"].set_index("reason")
    assert counts["serving_log_quarantined"] == 2
    assert bad.loc["wrong_type", "column"] == "user_history_items"
    assert "CSV cannot hold lists" in bad.loc["wrong_type", "detail"]
    assert bad.loc["out_of_range", "detail"] == "more than 50 values"
    kept = read_dataset(outputs["serving_log"])
    assert kept["user_history_items"].map(lambda v: len(v) <= 50).all()
    assert len(kept) == counts["serving_log"] > 0


@pytest.mark.parametrize("storage", ["int64", "float64 with a null", "csv"])
def test_integer_ids_are_the_same_keys_as_text_ids(storage, tiny_data, tmp_path):
    """Warehouse exports carry integer ids; every table must still join on them."""
    reference, _ = _ingest(tiny_data, tmp_path / "text")
    data = _copy_of(tiny_data, tmp_path)
    for name in ("users", "impressions", "user_features", "serving_log"):
        frame = pd.read_parquet(data / f"{name}.parquet")
        numbers = frame["user_id"].str.lstrip("u").astype("int64")  # "u000016" -> 16
        if storage == "float64 with a null" and name == "serving_log":
            numbers = numbers.astype("float64")
            numbers.iloc[0] = np.nan  # one row quarantined as missing_value
        frame["user_id"] = numbers
        frame.to_parquet(data / f"{name}.parquet")
        if storage == "csv" and name == "users":  # a CSV holds no list columns
            (data / f"{name}.parquet").unlink()
            frame.to_csv(data / f"{name}.csv", index=False)
    counts, outputs = _ingest(data, tmp_path / "numbers")
    # Same counts as with text ids, but for the one null id quarantined from the log.
    changed = {
        key for key in counts.keys() | reference.keys() if counts.get(key) != reference.get(key)
    }
    if storage == "float64 with a null":
        assert counts["serving_log_quarantined"] == 1
        assert changed <= {
            "serving_log",
            "serving_log_quarantined",
            "quarantined",
            "quarantined_missing_value",
        }
    else:
        assert changed == set()
    events = read_dataset(outputs["train_events"])
    assert events["user_id"].map(type).eq(str).all()
    assert set(events["user_id"]) <= set(read_dataset(outputs["users"])["user_id"])
    assert "16" in set(read_dataset(outputs["users"])["user_id"])


def _events_as_csv(tiny_data, tmp_path, edit, **to_csv):
    """A copy of the tiny data with impressions exported as CSV after ``edit``."""
    data = _copy_of(tiny_data, tmp_path)
    events = pd.read_parquet(data / "impressions.parquet")
    (data / "impressions.parquet").unlink()
    edit(events)
    events.to_csv(data / "impressions.csv", index=False, **to_csv)
    return data


def _epoch(unit: int):
    def edit(events):
        events["event_ts"] = events["event_ts"].astype("int64") // 10**9 * unit

    return edit


@pytest.mark.parametrize(
    "edit, to_csv, note",
    [
        (_epoch(1), dict(encoding="utf-8-sig"), None),  # a spreadsheet's byte-order mark
        (_epoch(1), dict(sep=";"), None),
        (_epoch(1), dict(sep="\t"), None),
        (_epoch(10**3), {}, "holds Unix epoch milliseconds (e.g. 17"),
        (_epoch(10**6), {}, "holds Unix epoch microseconds"),
    ],
    ids=["bom", "semicolons", "tabs", "milliseconds", "microseconds"],
)
def test_export_quirks_read_like_the_parquet(edit, to_csv, note, tiny_data, tmp_path, capsys):
    reference, reference_outputs = _ingest(tiny_data, tmp_path / "parquet")
    capsys.readouterr()
    data = _events_as_csv(tiny_data, tmp_path, edit, **to_csv)
    counts, outputs = _ingest(data, tmp_path / "csv")
    assert counts == reference
    pd.testing.assert_frame_equal(
        read_dataset(outputs["train_events"]), read_dataset(reference_outputs["train_events"])
    )
    logged = capsys.readouterr().err
    assert (note in logged) if note else ("epoch" not in logged)


def test_empty_and_header_only_files_are_named(tiny_data, tmp_path):
    data = _events_as_csv(
        tiny_data, tmp_path, lambda events: events.drop(events.index, inplace=True)
    )
    with pytest.raises(
        DataError, match=r"table 'impressions' has no rows: \['.*impressions.csv'\]"
    ):
        _ingest(data, tmp_path)
    (data / "impressions.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"impressions.csv: the file is empty, not even a header"):
        _ingest(data, tmp_path)


def test_day_first_dates_are_quarantined_not_misread(tiny_data, tmp_path):
    """ "05/01/2026" is 5 January or 1 May depending on who exported it; only
    ISO-8601 text is read as a date."""

    def day_first(events):
        events["event_ts"] = events["event_ts"].dt.strftime("%d/%m/%Y %H:%M")

    data = _events_as_csv(tiny_data, tmp_path, day_first)
    with pytest.raises(DataError, match="wrong_type in column 'event_ts'"):
        _ingest(data, tmp_path)
    quarantine = read_dataset(str(tmp_path / "out" / "quarantine"))
    assert set(quarantine["reason"]) == {"wrong_type"}
    assert quarantine["detail"].str.contains("ISO-8601").all()


@settings(max_examples=200, deadline=None)
@given(st.integers(10**8, 4_102_444_800), st.sampled_from([1, 10**3, 10**6, 10**9]))
def test_epoch_numbers_are_read_in_their_unit(seconds, unit):
    """From 1973 to 2100, a column of Unix seconds, ms, us or ns reads as the same seconds."""
    values = pd.Series([seconds * unit, (seconds + 60) * unit], dtype="int64")
    assert parse_timestamps(values).tolist() == [seconds, seconds + 60]
    assert parse_timestamps(values.astype(str)).tolist() == [seconds, seconds + 60]
