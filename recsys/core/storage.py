"""One filesystem layer: every file the project reads or writes goes through here.

A path is a local path or a URL: ``gs://bucket/key``, ``s3://bucket/key``, or
``minio://bucket/key`` (how Kubeflow Pipelines writes a pipeline root on its
bundled MinIO: the S3 API at an endpoint of its own). fsspec does the work
(docs/design.md says why fsspec rather than pyarrow.fs); credentials and endpoints
come from the environment, as every S3 and GCS client reads them:
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` and ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) for S3 and S3-compatible servers such as MinIO;
``GOOGLE_APPLICATION_CREDENTIALS`` or the machine's identity for GCS.

Object stores have no directories and no rename: ``makedirs`` does nothing
there, a directory exists when a key lies under it, and the one atomic step is a
single object write (``write_bytes``), or its conditional form
(``create_exclusive``), which succeeds only if nothing is there yet.
"""

import contextlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

MINIO_SCHEME = "minio://"
TEMPORARY_PREFIX = ".tmp-"  # a local write in progress (renamed into place when whole)


def url(path: str) -> str:
    """The URL fsspec opens: KFP's ``minio://`` is the S3 API at the environment's
    endpoint (``AWS_ENDPOINT_URL``)."""
    path = os.fspath(path)
    return "s3://" + path[len(MINIO_SCHEME) :] if path.startswith(MINIO_SCHEME) else path


def is_local(path: str) -> bool:
    return "://" not in os.fspath(path) or os.fspath(path).startswith("file://")


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem that holds ``path`` and the path as that filesystem names it.
    Listings are never cached: other processes (a concurrent run, an operator's
    rollback) change the same roots."""
    if is_local(path):
        return fsspec.core.url_to_fs(os.fspath(path))
    return fsspec.core.url_to_fs(url(path), use_listings_cache=False)


def join(base: str, *parts: str) -> str:
    if is_local(base):
        return os.path.join(base, *parts)
    return posixpath.join(base.rstrip("/"), *parts)


def parent(path: str) -> str:
    return os.path.dirname(path) if is_local(path) else posixpath.dirname(path.rstrip("/"))


def basename(path: str) -> str:
    return os.path.basename(os.fspath(path).rstrip("/"))


def exists(path: str) -> bool:
    fs, name = filesystem(path)
    return fs.exists(name)


def isfile(path: str) -> bool:
    fs, name = filesystem(path)
    return fs.isfile(name)


def isdir(path: str) -> bool:
    fs, name = filesystem(path)
    return fs.isdir(name)


def listdir(path: str) -> list[str]:
    """Names (not paths) directly under ``path``, sorted; none if it does not exist."""
    fs, name = filesystem(path)
    if not fs.isdir(name):
        return []
    return sorted(basename(entry) for entry in fs.ls(name, detail=False) if entry != name)


def glob(pattern: str) -> list[str]:
    """Paths matching ``pattern``, sorted, spelled as the pattern is (local or URL)."""
    fs, name = filesystem(pattern)
    matches = sorted(fs.glob(name))
    if is_local(pattern):
        return matches
    scheme = os.fspath(pattern).split("://", 1)[0]
    return [f"{scheme}://{match}" for match in matches]


def find(path: str) -> list[str]:
    """Every file under directory ``path``, relative to it, sorted."""
    return sorted(sizes(path))


def open(path: str, mode: str = "rb", **kwargs):  # noqa: A001 - the module's file opener
    """A file object; writing a local file creates its directory first."""
    fs, name = filesystem(path)
    if "w" in mode or "a" in mode or "x" in mode:
        makedirs(parent(path))
    return fs.open(name, mode, **kwargs)


def sizes(path: str) -> dict[str, int]:
    """Every file under directory ``path`` (relative path -> size in bytes)."""
    fs, name = filesystem(path)
    if not fs.isdir(name):
        return {}
    root = name.rstrip("/") + "/"
    return {
        entry[len(root) :]: info["size"]
        for entry, info in fs.find(name, detail=True).items()
        if entry.startswith(root)
    }


def size(path: str) -> int:
    """A file's size in bytes."""
    fs, name = filesystem(path)
    return int(fs.size(name))


def read_bytes(path: str) -> bytes:
    """The whole object in one GET (a file object would pin the version it first saw
    and fail if another writer replaced it meanwhile)."""
    fs, name = filesystem(path)
    return fs.cat_file(name)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """One write: on an object store the object appears whole or not at all; a
    local file is written beside its final name and renamed, for the same promise."""
    if not is_local(path):
        fs, name = filesystem(path)
        fs.pipe_file(name, data)
        return
    directory = parent(path) or "."
    makedirs(directory)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=TEMPORARY_PREFIX)
    with os.fdopen(handle, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    _fsync_dir(directory)


def rename(source: str, destination: str) -> None:
    """Rename a local file or directory (atomic on one filesystem). Object stores have
    no rename: callers write in place there and commit another way."""
    if not (is_local(source) and is_local(destination)):
        raise ValueError(f"cannot rename {source} to {destination}: not a local filesystem")
    os.rename(source, destination)
    _fsync_dir(parent(destination) or ".")


def fsync_tree(top: str) -> None:
    """Flush every file and directory under a local ``top`` to disk, so a rename that
    makes it visible cannot outlive its content in a crash (nothing to do remotely)."""
    if not is_local(top):
        return
    for directory, _, names in os.walk(top):
        for name in names:
            descriptor = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def create_exclusive(path: str, data: bytes) -> bool:
    """Write ``path`` only if nothing is there (local O_EXCL, S3 ``If-None-Match: *``,
    GCS ``ifGenerationMatch=0``): True if this call created it, False if it existed."""
    if is_local(path):
        makedirs(parent(path))
        # Written aside, then hard-linked into place (link fails if the name exists): a
        # reader sees the whole file or none. O_EXCL then write showed it empty for a
        # moment, and the lease took an empty record for a free lease.
        descriptor, temporary = tempfile.mkstemp(dir=parent(path), suffix=".partial")
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.write(data)
            os.chmod(temporary, 0o644)
            os.link(temporary, path)
        except FileExistsError:
            return False
        finally:
            os.remove(temporary)
        return True
    fs, name = filesystem(path)
    try:
        fs.pipe_file(name, data, mode="create")
    except FileExistsError:
        return False
    return True


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, name = filesystem(path)
    return pq.read_table(name, columns=columns, filesystem=fs)


def parquet_schema(path: str) -> pa.Schema:
    with open(path) as handle:
        return pq.read_schema(handle)


def parquet_rows(path: str) -> int:
    with open(path) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def write_parquet(table: pa.Table, path: str, row_group_rows: int | None = None) -> None:
    makedirs(parent(path))
    fs, name = filesystem(path)
    pq.write_table(table, name, filesystem=fs, row_group_size=row_group_rows)


def iter_parquet(
    path: str, batch_rows: int, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """The rows of a Parquet file as record batches of at most ``batch_rows``, read
    one row group at a time: memory follows the batch size, not the file."""
    with open(path) as handle:
        yield from pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, columns=columns)


@contextlib.contextmanager
def parquet_file(path: str) -> Iterator[pq.ParquetFile]:
    """A Parquet file open for reading parts of it (row groups, columns) by index."""
    with open(path) as handle:
        yield pq.ParquetFile(handle)


@contextlib.contextmanager
def parquet_writer(path: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A Parquet file written batch by batch (``writer.write_table`` /
    ``write_batch``): each call adds row groups, nothing else is held."""
    makedirs(parent(path))
    fs, name = filesystem(path)
    with fs.open(name, "wb") as handle, pq.ParquetWriter(handle, schema) as writer:
        yield writer


def makedirs(path: str) -> None:
    if path and is_local(path):
        os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    """Delete a file or a whole directory; nothing there is not an error."""
    fs, name = filesystem(path)
    if fs.exists(name):
        fs.rm(name, recursive=fs.isdir(name))


def version_token(path: str) -> int:
    """Changes whenever ``path`` does (fsspec's checksum: mtime and size locally, the
    ETag on S3); 0 when it does not exist. A cache key."""
    fs, name = filesystem(path)
    try:
        return fs.checksum(name)
    except FileNotFoundError:
        return 0


def copy_dir(source: str, destination: str) -> None:
    """Copy every file under ``source`` to the same relative path under
    ``destination`` (either side local or remote)."""
    if is_local(source) and is_local(destination):
        shutil.copytree(source, destination, dirs_exist_ok=True)
        return
    for relative in find(source):
        copy_file(join(source, relative), join(destination, relative))


def copy_file(source: str, destination: str) -> None:
    if is_local(source) and not is_local(destination):
        fs, name = filesystem(destination)
        fs.put_file(source, name)
    elif not is_local(source) and is_local(destination):
        makedirs(parent(destination))
        fs, name = filesystem(source)
        fs.get_file(name, destination)
    else:
        write_bytes(destination, read_bytes(source))


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local path holding ``path``'s contents (file or directory), for libraries that
    read only local files (TensorFlow's SavedModel loader without an S3 filesystem,
    TFDV's statistics reader); the path itself when it is local."""
    if is_local(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="recsys-") as scratch:
        local = os.path.join(scratch, basename(path))
        if isdir(path):
            copy_dir(path, local)
        else:
            copy_file(path, local)
        yield local
