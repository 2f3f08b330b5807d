"""Table and file I/O: raw tables as the user brings them, datasets between stages.

Raw data (what you bring): one table per ``contracts.RAW_TABLES`` entry, each either
``<name>.parquet``, ``<name>.csv``, or a ``<name>/`` directory of such files; the
columns each needs are the required ones of its curated schema.
CSV may be separated by commas, semicolons, tabs or '|' and start with a
byte-order mark. Timestamp columns (``*_ts``) may be Parquet timestamps, ISO-8601
text or Unix epoch numbers (seconds or finer, told apart by magnitude); ingest
turns them all into int64 Unix seconds (UTC), which is what every later stage
(TFDV, TFT, the models) reads.

Between stages a dataset is a directory of ``part-*.parquet`` files, so Beam
can read and write it in shards.
"""

import contextlib
import csv
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recsys.core import storage
from recsys.core.contracts import RAW_TABLES, TIMESTAMP_SUFFIX
from recsys.core.limits import BATCH_ROWS
from recsys.core.schemas import required_columns


class DataError(ValueError):
    """Input data that cannot be used as given; the message says where and what to do."""


# The files a raw table may be made of: Parquet, CSV and gzip-compressed CSV.
RAW_SUFFIXES = (".parquet", ".csv", ".csv.gz")


def find_table(data_root: str, name: str) -> list[str]:
    """Files that hold raw table ``name`` under ``data_root``: ``name`` with a suffix
    of RAW_SUFFIXES, and every such file under a ``name/`` directory at any depth
    (Hive-style partition folders such as ``dt=2026-01-01/``; folder names are not
    read as columns). Names starting with ``.`` or ``_`` (``_SUCCESS``, Spark's
    ``_temporary``) are skipped."""
    files = [
        path
        for suffix in RAW_SUFFIXES
        if storage.isfile(path := storage.join(data_root, f"{name}{suffix}"))
    ]
    directory = storage.join(data_root, name)
    if storage.isdir(directory):
        files += [
            storage.join(directory, relative)
            for relative in storage.find(directory)
            if relative.endswith(RAW_SUFFIXES)
            and not any(part.startswith((".", "_")) for part in relative.split("/"))
        ]
    if not files:
        raise DataError(
            f"raw table '{name}' not found under {data_root}: expected {name}.parquet, "
            f"{name}.csv, {name}.csv.gz or a {name}/ directory of such files (partition "
            "folders such as dt=2026-01-01/ are fine; see README, 'Bring your own data')."
        )
    return files


@dataclass
class RawFile:
    """Rows of one raw file as read (a batch of them, when streamed): CSV values as
    text, Parquet values as stored."""

    path: str
    table: pa.Table
    undecodable: np.ndarray  # rows with text that is not valid in the declared encoding
    rows: np.ndarray | None = None  # each row's 1-based data row in the file (default 1..n)
    # CSV rows that could not be read as a row of the header's columns: (data row,
    # fields found, fields expected, the row's text).
    ragged: list[tuple[int, int, int, str]] = field(default_factory=list)

    def __post_init__(self):
        if self.rows is None:
            self.rows = np.arange(1, self.table.num_rows + 1)

    @functools.cached_property
    def frame(self) -> pd.DataFrame:
        return self.table.to_pandas()

    @functools.cached_property
    def missing(self) -> dict[str, np.ndarray]:
        """Column -> rows with no value (a null, or an empty CSV cell)."""
        return {
            name: np.asarray(self.table.column(name).is_null(), dtype=bool)
            for name in self.table.column_names
        }


def read_raw_file(path: str, encoding: str = "utf-8") -> RawFile:
    """A whole raw file (``iter_raw_file`` for large ones)."""
    parts = list(iter_raw_file(path, encoding, batch_rows=2**62))
    if len(parts) == 1:
        return parts[0]
    return RawFile(
        path,
        pa.concat_tables([p.table for p in parts]),
        np.concatenate([p.undecodable for p in parts]),
        np.concatenate([p.rows for p in parts]),
        [row for p in parts for row in p.ragged],
    )


def iter_raw_file(path: str, encoding: str = "utf-8", batch_rows: int = 200_000):
    """The rows of one raw file in batches of at most ``batch_rows`` (a ``RawFile``
    each), read as a stream: memory follows the batch, not the file. Parquet values
    come as stored; CSV (``.csv``, or gzip-compressed ``.csv.gz``) as text, a
    separator read off the header line, empty cells as missing, rows whose field
    count differs from the header's set apart in ``ragged`` (with their data row
    number) and the rest read on. Duplicate column names are an error naming them."""
    if path.endswith(".parquet"):
        yield from _iter_parquet(path, batch_rows)
    else:
        yield from _iter_csv(path, encoding, batch_rows)


def _duplicate_columns(path: str, names: list[str]) -> None:
    counts = pd.Series(names).value_counts()
    repeated = list(counts[counts > 1].index)
    if repeated:
        positions = {name: [i + 1 for i, n in enumerate(names) if n == name] for name in repeated}
        raise DataError(
            f"{path}: column name(s) {repeated} appear more than once (columns "
            f"{', '.join(f'{n!r} at {p}' for n, p in positions.items())}). Each column "
            "needs its own name: rename or drop the repeats in the export."
        )


def _iter_parquet(path: str, batch_rows: int):
    schema = storage.parquet_schema(path)
    _duplicate_columns(path, schema.names)
    first = 1
    for batch in storage.iter_parquet(path, batch_rows):
        if batch.num_rows:
            table = pa.Table.from_batches([batch])
            rows = np.arange(first, first + table.num_rows)
            yield RawFile(path, table, np.zeros(table.num_rows, dtype=bool), rows)
            first += table.num_rows
    if first == 1:  # no rows: the columns still count
        yield RawFile(path, schema.empty_table(), np.zeros(0, dtype=bool))


def _open_csv(path: str):
    """A raw CSV file's bytes; ``.csv.gz`` decompressed on the fly."""
    return storage.open(path, compression="gzip" if path.endswith(".gz") else None)


def csv_header(handle, path: str) -> tuple[str, list[str]]:
    """(separator, column names) of the CSV open in ``handle`` (binary, left at its
    start): see ``csv_separator``; a byte-order mark before the header is dropped."""
    separator = csv_separator(handle, path)
    line = handle.readline()
    handle.seek(0)
    text = line.decode("utf-8", errors="replace").removeprefix("\ufeff")
    names = next(csv.reader([text.rstrip("\r\n")], delimiter=separator))
    _duplicate_columns(path, names)
    return separator, names


def _iter_csv(path: str, encoding: str, batch_rows: int):
    is_utf8 = encoding.replace("_", "-").lower() in ("utf-8", "utf8")
    ragged: list[tuple[int, int, int, str]] = []

    def set_aside(row) -> str:
        # row.number counts the header as row 1.
        number = row.number - 1 if row.number is not None and row.number > 0 else -1
        ragged.append((number, row.actual_columns, row.expected_columns, row.text))
        return "skip"

    with _open_csv(path) as handle:
        separator, names = csv_header(handle, path)
        # UTF-8 is checked value by value below (bytes in, text out); other declared
        # encodings are decoded by the reader.
        text_type = pa.binary() if is_utf8 else pa.string()
        reader = pacsv.open_csv(
            handle,
            read_options=pacsv.ReadOptions(
                column_names=names,
                skip_rows=1,
                use_threads=False,
                block_size=1 << 22,
                encoding="utf8" if is_utf8 else encoding,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=separator, newlines_in_values=True, invalid_row_handler=set_aside
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: text_type for name in names},
                strings_can_be_null=True,
                null_values=[""],
            ),
        )
        valid_before = 0  # rows yielded so far
        skipped: list[int] = []  # data rows set aside so far, in order
        for table in _rebatched(reader, batch_rows):
            skipped += [number for number, *_ in ragged]
            columns, undecodable = {}, np.zeros(table.num_rows, dtype=bool)
            for name in names:
                column = table.column(name)
                if is_utf8:
                    column, bad = _as_utf8(column)
                    undecodable |= bad
                columns[name] = column
            table = pa.table(columns)
            # Data row of each row read: its position plus the rows set aside before it.
            positions = np.arange(valid_before, valid_before + table.num_rows) + 1
            shifted = np.asarray(skipped, dtype=np.int64) - np.arange(len(skipped))
            rows = positions + np.searchsorted(shifted, positions, side="right")
            yield RawFile(path, table, undecodable, rows, list(ragged))
            ragged.clear()
            valid_before += table.num_rows


def _rebatched(reader, batch_rows: int):
    """Tables of ``batch_rows`` rows (the last may be shorter) from a batch reader;
    one empty table when it has none, so the columns are still seen."""
    pending, count, yielded = [], 0, False
    for batch in reader:
        pending.append(pa.Table.from_batches([batch]))
        count += batch.num_rows
        while count >= batch_rows:
            table = pa.concat_tables(pending).combine_chunks()
            yield table.slice(0, batch_rows)
            yielded = True
            rest = table.slice(batch_rows)
            pending, count = ([rest] if rest.num_rows else []), rest.num_rows
    if count or not yielded:
        yield pa.concat_tables(pending).combine_chunks() if pending else reader.schema.empty_table()


def _as_utf8(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(the column as text, rows whose bytes are not UTF-8). Those rows' values are
    read as Latin-1, which maps every byte to a character, so nothing is lost and
    the quarantine shows the original."""
    try:
        return column.cast(pa.string()), np.zeros(len(column), dtype=bool)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        pass
    values, bad = [], np.zeros(len(column), dtype=bool)
    for row, value in enumerate(column.to_pylist()):  # the rare column with a bad value
        if value is None:
            values.append(None)
            continue
        try:
            values.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            values.append(value.decode("latin-1"))
            bad[row] = True
    return pa.array(values, pa.string()), bad


def csv_separator(handle, path: str) -> str:
    """The separator of the CSV open in ``handle`` (binary, left at its start), read off
    its header line: a comma unless the header has none and splits on ';'
    (spreadsheets in many locales), a tab or '|'. An empty file is an error here,
    before pandas reports it without the file's name (``path``)."""
    header = handle.readline()
    handle.seek(0)
    if not header.strip():
        raise DataError(
            f"{path}: the file is empty, not even a header row. Export it with a header "
            "naming the columns (README, 'Bring your own data')."
        )
    if b"," in header:
        return ","
    counts = {sep: header.count(sep.encode()) for sep in (";", "\t", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def read_raw_table(data_root: str, name: str, schema_dir: str = "") -> pd.DataFrame:
    """Read a raw table, check its required columns, normalise ``*_ts`` to Unix seconds."""
    table = RAW_TABLES[name]
    required = required_columns(table.schema, schema_dir, table.environment)
    frames = []
    for path in find_table(data_root, name):
        if not path.endswith(".parquet"):
            with _open_csv(path) as handle:
                frame = pd.read_csv(
                    handle,
                    sep=csv_separator(handle, path),
                    encoding="utf-8-sig",
                    encoding_errors="replace",
                )
        else:
            frame = storage.read_parquet(path).to_pandas()
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise DataError(
                f"{path}: missing required column(s) {missing} for table '{name}'; "
                f"found {list(frame.columns)}. Rename or add them (README, 'Bring your own data')."
            )
        for column in [c for c in frame.columns if c.endswith(TIMESTAMP_SUFFIX)]:
            frame[column] = to_unix_seconds(frame[column], path, column)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


# ISO-8601 dates and times (date, optional time, optional zone). Only these are read
# as text: "01/05/2026" is 1 May or 5 January depending on who exported it.
ISO_8601 = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|[+-]\d{2}(:?\d{2})?)?$"
# Unix epoch units, finest first: (name, divisor to seconds, the median from which a
# column is read in the unit when it is not declared; past the year 5000 in the next
# coarser unit). A declared unit (``recsys import``'s timestamp_unit) uses the key.
EPOCH_UNITS = {
    "ns": ("nanoseconds", 1e9, 1e17),
    "us": ("microseconds", 1e6, 1e14),
    "ms": ("milliseconds", 1e3, 1e11),
    "s": ("seconds", 1.0, 0.0),
}
# The unit of timestamps that are ISO-8601 text only (numbers are not read as epochs).
ISO = "iso"


def epoch_unit(numbers: pd.Series) -> str:
    """The unit (a key of EPOCH_UNITS) of a column of Unix epoch numbers, from its
    median."""
    numbers = numbers.dropna()
    median = numbers.abs().median() if len(numbers) else 0.0
    return next(unit for unit, (_, _, bound) in EPOCH_UNITS.items() if median >= bound)


def parse_timestamps(values: pd.Series, unit: str = "") -> pd.Series:
    """Unix seconds (float; NaN where empty or unparseable) from Parquet timestamps,
    Unix epoch numbers (or numeric text) in seconds, or, told apart by magnitude,
    milli-, micro- or nanoseconds (the unit read is in ``.attrs["unit"]``), or
    ISO-8601 text, read as UTC when it names no zone. ``unit``, when given, is the
    declared one: a key of EPOCH_UNITS, or ISO for text only."""
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = (
            values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        )
        seconds = stamps.astype("int64") // 1_000_000_000
        return seconds.astype(float).where(stamps.notna())
    numeric = pd.to_numeric(values, errors="coerce").astype(float)
    if unit == ISO:
        numeric[:] = np.nan
        name = "ISO-8601 text"
    else:
        name, divisor, _ = EPOCH_UNITS[unit or epoch_unit(numeric)]
        numeric = numeric / divisor
    numeric.attrs["unit"] = name
    text = values[numeric.isna() & values.notna()].astype(str).str.strip()
    iso = text[text.str.match(ISO_8601)]
    if len(iso):
        parsed = pd.to_datetime(iso, utc=True, errors="coerce")
        seconds = parsed.astype("int64") // 1_000_000_000
        numeric.loc[iso.index] = seconds.astype(float).where(parsed.notna())
    return numeric


def ids_as_text(values: pd.Series, missing: np.ndarray | None = None) -> pd.Series:
    """Ids (any text column) as ``str`` whatever the file stored, so that an id is the
    same key in every table: Parquet ``int64`` 16 and CSV "16" are both "16", and so
    is ``float64`` 16.0, which is what an integer column with a null becomes in a
    pandas export. None where ``missing`` (default: where null)."""
    missing = values.isna().to_numpy() if missing is None else missing
    present = values[~missing]
    if pd.api.types.is_float_dtype(present) and np.array_equal(present, np.floor(present)):
        present = present.astype("int64")
    text = pd.Series(None, index=values.index, dtype=object)
    text[~missing] = present.astype(str).to_numpy(dtype=object)
    return text


def to_unix_seconds(values: pd.Series, path: str, column: str) -> pd.Series:
    """Timestamps of any common encoding as int64 Unix seconds (UTC); every row needs one."""
    seconds = parse_timestamps(values)
    bad = seconds.isna() & values.notna()
    if bad.any():
        examples = values[bad].astype(str).head(3).tolist()
        raise DataError(
            f"{path}: column '{column}' has {int(bad.sum())} value(s) that are not "
            f"timestamps, e.g. {examples}. Use ISO-8601 (2026-01-31T18:00:00Z), Unix "
            "epoch numbers or Parquet timestamps."
        )
    if seconds.isna().any():
        raise DataError(
            f"{path}: column '{column}' has {int(seconds.isna().sum())} empty timestamp(s); "
            "every row needs one."
        )
    return seconds.astype("int64")


def raw_table(data: pd.DataFrame | pa.Table) -> pa.Table:
    """A table as a raw file holds it: ``*_ts`` columns (Unix seconds) as Parquet
    timestamps (UTC)."""
    if isinstance(data, pd.DataFrame):
        frame = data.copy()
        for column in [c for c in frame.columns if c.endswith(TIMESTAMP_SUFFIX)]:
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
        return pa.Table.from_pandas(frame, preserve_index=False)
    table = data
    for index, name in enumerate(table.column_names):
        if name.endswith(TIMESTAMP_SUFFIX) and not pa.types.is_timestamp(table.schema[index].type):
            seconds = table.column(index).cast(pa.int64()).cast(pa.timestamp("s", tz="UTC"))
            table = table.set_column(index, name, seconds.cast(pa.timestamp("ns", tz="UTC")))
    return table


def write_raw_tables(tables: dict[str, pd.DataFrame | pa.Table], out: str) -> dict[str, int]:
    """Raw tables as ``out/<name>.parquet`` with ``*_ts`` columns (Unix seconds) as
    Parquet timestamps; returns each table's row count."""
    for name, data in tables.items():
        storage.write_parquet(raw_table(data), storage.join(out, f"{name}.parquet"))
    return {name: len(data) for name, data in tables.items()}


# Rows per Parquet row group of a dataset: what a reader holds to read a part of it.
ROW_GROUP_ROWS = 100_000


def write_dataset(data: pd.DataFrame | pa.Table, directory: str) -> str:
    """Store a dataset as ``directory/part-00000.parquet``."""
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    path = storage.join(directory, "part-00000.parquet")
    storage.write_parquet(table, path, row_group_rows=ROW_GROUP_ROWS)
    return path


class DatasetWriter:
    """A dataset written a batch at a time (``write``): part files of at most
    ``file_rows`` rows, in row groups of at most ROW_GROUP_ROWS, so neither this
    writer nor a reader of one part holds the table. ``close`` writes an empty part
    with ``schema`` (or the columns seen) when no row came, so the columns are known
    downstream; returns the rows written."""

    def __init__(self, directory: str, schema: pa.Schema | None = None, file_rows: int = 2_000_000):
        self.directory, self.schema, self.file_rows = directory, schema, file_rows
        self.rows, self._files, self._in_file = 0, 0, 0
        self._stack = contextlib.ExitStack()
        self._writer = None

    def write(self, data: pd.DataFrame | pa.Table) -> None:
        table = (
            data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
        )
        if table.num_rows == 0:
            self.schema = self.schema or table.schema
            return
        if self._writer is not None:
            try:
                table = table.cast(self._writer.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
                self._close_file()  # a column's type changed (all null before): a new part
        for start in range(0, table.num_rows, ROW_GROUP_ROWS):
            if self._writer is not None and self._in_file >= self.file_rows:
                self._close_file()
            if self._writer is None:
                path = storage.join(self.directory, f"part-{self._files:05d}.parquet")
                self._writer = self._stack.enter_context(storage.parquet_writer(path, table.schema))
                self.schema = self.schema or table.schema
                self._files += 1
            piece = table.slice(start, ROW_GROUP_ROWS)
            self._writer.write_table(piece)
            self._in_file += piece.num_rows
            self.rows += piece.num_rows

    def _close_file(self) -> None:
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self._writer, self._in_file = None, 0

    def close(self) -> int:
        self._close_file()
        if self._files == 0:
            storage.write_parquet(
                (self.schema or pa.schema([])).empty_table(),
                storage.join(self.directory, "part-00000.parquet"),
            )
        return self.rows

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_dataset(
    directory: str, batch_rows: int, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """A dataset's rows as record batches of at most ``batch_rows``, part by part."""
    files = storage.glob(dataset_pattern(directory))
    if not files:
        raise DataError(f"no Parquet files in dataset directory {directory}")
    for path in files:
        yield from storage.iter_parquet(path, batch_rows, columns)


def dataset_rows(directory: str) -> int:
    """Rows of a dataset from its Parquet footers (no data read)."""
    return sum(storage.parquet_rows(path) for path in storage.glob(dataset_pattern(directory)))


def rows_at(directory: str, positions, batch_rows: int = BATCH_ROWS) -> pd.DataFrame:
    """The dataset's rows at ``positions`` (sorted, 0-based over its parts in order),
    picked as it streams."""
    positions = np.asarray(positions, dtype=np.int64)
    picked, offset = [], 0
    for batch in iter_dataset(directory, batch_rows):
        mine = positions[(positions >= offset) & (positions < offset + batch.num_rows)]
        if len(mine):
            picked.append(pa.Table.from_batches([batch]).take(pa.array(mine - offset)))
        offset += batch.num_rows
    return pa.concat_tables(picked).to_pandas() if picked else pd.DataFrame()


def column_sums(directory: str, columns: list[str], batch_rows: int = BATCH_ROWS) -> dict:
    """Each numeric column's sum over the dataset, read a batch at a time."""
    sums = dict.fromkeys(columns, 0)
    for batch in iter_dataset(directory, batch_rows, columns):
        for name in columns:
            sums[name] += pc.sum(batch.column(name)).as_py() or 0
    return sums


def dataset_pattern(directory: str) -> str:
    return storage.join(directory, "*.parquet")


def read_dataset_table(directory: str, columns: list[str] | None = None) -> pa.Table:
    files = storage.glob(dataset_pattern(directory))
    if not files:
        raise DataError(f"no Parquet files in dataset directory {directory}")
    return pa.concat_tables([storage.read_parquet(f, columns=columns) for f in files])


def read_dataset(directory: str, columns: list[str] | None = None) -> pd.DataFrame:
    return read_dataset_table(directory, columns).to_pandas()
