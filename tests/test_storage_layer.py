"""One filesystem layer: no code under recsys/core, components, serving or pipelines
touches files but through ``recsys.core.storage`` (fsspec), so every root may be a
bucket. The scan reads the code's syntax tree, and is shown to catch an injected
``open``; storage itself is checked against a real S3 API server."""

import ast
import contextlib
import os
import threading

import pyarrow as pa
import pytest

from recsys.core import storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("recsys/core", "components", "recsys/serving", "pipelines")
ALLOWED = {
    # The layer itself.
    "recsys/core/storage.py",
    # Run by path in a fresh process that must not import the project (it stands in
    # for TF Serving's loader); it reads the candidate SavedModel infra validation
    # hands it, a local artifact.
    "components/infra_validate/probe.py",
    # Hashes the installed package's own source files, never a data path.
    "recsys/core/provenance.py",
    # Reads and resets its own process's memory counters in /proc, never a data path.
    "recsys/core/memory.py",
}
# Calls that read, write or list files by path without the layer.
FORBIDDEN_MODULE_CALLS = {
    "os": {
        "listdir",
        "makedirs",
        "remove",
        "rename",
        "replace",
        "walk",
        "stat",
        "scandir",
        "unlink",
        "rmdir",
        "mkdir",
    },
    "os.path": {"exists", "isfile", "isdir", "getmtime", "getsize"},
    "glob": {"glob", "iglob"},
    "shutil": {"copy", "copyfile", "copytree", "rmtree", "move", "copy2"},
    "fcntl": {"flock", "lockf"},
    "pq": {"read_table", "write_table", "ParquetFile", "read_schema"},
    "tf.io.gfile": {"glob", "exists", "isdir", "listdir", "makedirs", "copy", "rename", "GFile"},
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def file_io_calls(source: str) -> list[tuple[int, str]]:
    """(line, call) of every direct file operation in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        module, _, function = name.rpartition(".")
        if name == "open" or function in FORBIDDEN_MODULE_CALLS.get(module, ()):
            found.append((node.lineno, name))
    return found


def scanned_files() -> list[str]:
    files = []
    for top in SCANNED:
        for directory, _, names in os.walk(os.path.join(ROOT, top)):
            files += [
                os.path.relpath(os.path.join(directory, n), ROOT)
                for n in names
                if n.endswith(".py")
            ]
    return sorted(files)


def test_no_file_io_outside_the_storage_layer():
    offences = []
    for path in scanned_files():
        if path in ALLOWED:
            continue
        with open(os.path.join(ROOT, path)) as handle:
            offences += [f"{path}:{line}: {call}" for line, call in file_io_calls(handle.read())]
    assert offences == [], "use recsys.core.storage instead:\n" + "\n".join(offences)
    assert len(scanned_files()) > 50  # the scan saw the code


@pytest.mark.parametrize(
    "line",
    [
        "with open(path) as handle: pass",
        "os.makedirs(path, exist_ok=True)",
        "os.path.exists(path)",
        "glob.glob(pattern)",
        "shutil.copytree(a, b)",
        "pq.read_table(path)",
        "tf.io.gfile.exists(path)",
    ],
)
def test_the_scan_catches_an_injected_file_operation(line):
    assert len(file_io_calls(f"def stage(path, pattern, a, b):\n    {line}\n")) == 1
    assert file_io_calls("def stage(path):\n    storage.exists(path)\n") == []


def test_storage_on_a_real_s3_server(s3_root):
    """What the stages rely on, against the S3 API: listing, parquet round trip, one
    write that replaces, conditional create, directories copied both ways, minio://."""
    table = pa.table({"user_id": ["a", "b"], "clicked": [1, 0]})
    storage.write_parquet(table, storage.join(s3_root, "data", "part-0.parquet"))
    assert storage.read_parquet(storage.join(s3_root, "data", "part-0.parquet")).equals(table)
    assert storage.glob(storage.join(s3_root, "data", "*.parquet")) == [
        f"{s3_root}/data/part-0.parquet"
    ]
    storage.write_text(storage.join(s3_root, "config"), "one")
    storage.write_text(storage.join(s3_root, "config"), "two")
    assert storage.read_text(storage.join(s3_root, "config")) == "two"
    assert storage.create_exclusive(storage.join(s3_root, "lease"), b"mine")
    assert not storage.create_exclusive(storage.join(s3_root, "lease"), b"theirs")
    assert storage.read_bytes(storage.join(s3_root, "lease")) == b"mine"
    assert storage.listdir(s3_root) == ["config", "data", "lease"]
    assert storage.isdir(storage.join(s3_root, "data")) and not storage.isdir(
        storage.join(s3_root, "nothing")
    )
    with storage.local_copy(storage.join(s3_root, "data")) as local:
        assert os.listdir(local) == ["part-0.parquet"]
        storage.copy_dir(local, storage.join(s3_root, "copy"))
    assert storage.sizes(storage.join(s3_root, "copy")) == storage.sizes(
        storage.join(s3_root, "data")
    )
    minio = s3_root.replace("s3://", "minio://")  # KFP's MinIO pipeline roots
    assert storage.read_text(storage.join(minio, "config")) == "two"
    storage.remove(storage.join(s3_root, "copy"))
    assert storage.listdir(s3_root) == ["config", "data", "lease"]


def test_a_conditional_create_is_seen_whole_or_not_at_all(tmp_path):
    """A reader polling the name while it is created sees nothing or every byte. The
    writer lease reads the newest record and took an empty one for a free lease: two
    writers held it at once on a busy machine."""
    payload = b"x" * 64 * 2**20
    path = str(tmp_path / "record")
    sizes, done = set(), threading.Event()

    def poll():
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                sizes.add(os.path.getsize(path))

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        assert storage.create_exclusive(path, payload)
    finally:
        done.set()
        reader.join()
    assert sizes <= {len(payload)}
    assert not storage.create_exclusive(path, b"theirs")
    assert os.listdir(tmp_path) == ["record"]  # nothing left aside
