"""The serving root TF Serving reads, and the only code that changes it.

Layout under ``<root>``::

    models.config                   TF Serving's ModelServerConfig (text proto): one entry per
                                    model, its version policy pinned to the served version
    retrieval/<version>/            a SavedModel with its warmup requests; immutable once visible
    ranking/<version>/
    feature_snapshot/<version>/     what the funnel looks up beside the models (users/, items/,
                                    item_embeddings/ as Parquet parts, rerank.json)
    records/<version>.json          the push record; a version is committed when it has one
    records/events/<time>-<kind>.json   every push, no-op, rollback and removal

Guarantees, and how:

- A version directory appears only complete: it is staged in a hidden sibling
  (``.staging-*``, non-numeric, so TF Serving never reads it), fsynced, then renamed
  into place (atomic on one filesystem). An existing version is never written to.
- Versions are integers, one above any version directory or record that exists,
  so they only increase, even after a killed push left an uncommitted directory.
- ``models.config`` is replaced atomically (write a temporary file, fsync, rename),
  and only after every directory and the record of the version it names exist.
  TF Serving started with ``--model_config_file`` therefore switches from one
  complete version to another; rollback is the same switch to an older version.
- Removal (keeping the newest ``keep`` versions) renames a version out of sight
  first, then deletes it, so no scanner sees a half-deleted version. Served
  versions are never removed.
- One writer at a time: an exclusive ``flock`` on ``<root>/.lock`` (released by the
  kernel if the writer is killed). While it is held, any ``.staging-*`` or
  ``.trash-*`` directory is a leftover of a killed writer and is removed.

File names come from ``recsys.core.contracts``. This module imports no TensorFlow:
a push is file operations, and the kill test starts it thousands of times.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from recsys.core.contracts import EVENTS_DIR, LOCK_FILE, MODELS, MODELS_CONFIG, RECORDS_DIR

STAGING_PREFIX, TRASH_PREFIX = ".staging-", ".trash-"
VERSION = re.compile(r"\d+")


class ServingRootError(ValueError):
    """A request the serving root cannot honour; the message says why and what exists."""


# --- reading ------------------------------------------------------------------------


def version_dirs(root: str, name: str) -> list[int]:
    """The version directories of model ``name`` (committed or not), ascending."""
    directory = os.path.join(root, name)
    if not os.path.isdir(directory):
        return []
    return sorted(int(entry) for entry in os.listdir(directory) if VERSION.fullmatch(entry))


def read_record(root: str, version: int) -> dict | None:
    path = os.path.join(root, RECORDS_DIR, f"{version}.json")
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def committed_versions(root: str) -> list[int]:
    """Versions with a push record (every directory of theirs is complete), ascending."""
    directory = os.path.join(root, RECORDS_DIR)
    if not os.path.isdir(directory):
        return []
    return sorted(
        int(name[:-5])
        for name in os.listdir(directory)
        if name.endswith(".json") and VERSION.fullmatch(name[:-5])
    )


class BrokenConfigError(ServingRootError):
    """models.config exists but is not a model config TF Serving could read."""


def read_config(root: str) -> model_server_config_pb2.ModelServerConfig | None:
    path = os.path.join(root, MODELS_CONFIG)
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        text = handle.read()
    try:
        return text_format.Parse(text.decode("utf-8"), model_server_config_pb2.ModelServerConfig())
    except (text_format.ParseError, UnicodeDecodeError) as error:
        committed = committed_versions(root)
        hint = (
            f"rewrite it by rolling back to a kept version ({committed}): "
            f"recsys rollback --serving-root {root} --model <name> --to {committed[-1]}"
            if committed
            else "no version is recorded under records/; push again"
        )
        raise BrokenConfigError(
            f"{path} is not a TF Serving model config ({str(error).splitlines()[0][:200]}); "
            f"TF Serving keeps serving what it loaded before it broke. To recover, {hint}"
        ) from None


def served_versions(root: str) -> dict[str, int]:
    """Model name -> the version ``models.config`` tells TF Serving to serve ({} before
    the first push)."""
    config = read_config(root)
    if config is None:
        return {}
    served = {}
    for entry in config.model_config_list.config:
        versions = list(entry.model_version_policy.specific.versions)
        if len(versions) != 1:
            raise ServingRootError(
                f"{os.path.join(root, MODELS_CONFIG)}: model '{entry.name}' "
                f"should pin exactly one version, found {versions}"
            )
        served[entry.name] = versions[0]
    return served


def served_version(root: str, name: str) -> int:
    """The served version of ``name``; without a models.config (a root filled by hand),
    the newest version directory, as TF Serving's default policy would pick."""
    served = served_versions(root)
    if name in served:
        return served[name]
    versions = version_dirs(root, name)
    if not versions:
        raise FileNotFoundError(
            f"no version of model '{name}' under {root}: has a model been pushed there?"
        )
    return versions[-1]


def events(root: str) -> list[dict]:
    """Every recorded event, oldest first."""
    directory = os.path.join(root, EVENTS_DIR)
    if not os.path.isdir(directory):
        return []
    result = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as handle:
                result.append(json.load(handle))
    return result


def content_hash(paths: dict[str, str]) -> str:
    """sha256 over the named files and directory trees: relative paths and bytes, in
    sorted order, so equal content hashes equal wherever it lies."""
    digest = hashlib.sha256()
    for label in sorted(paths):
        top = paths[label]
        files = (
            [top]
            if os.path.isfile(top)
            else sorted(
                os.path.join(d, f) for d, _, names in os.walk(top, onerror=_raise) for f in names
            )
        )
        for path in files:
            relative = os.path.relpath(path, top) if path != top else ""
            digest.update(f"{label}/{relative}\0".encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\0")
    return digest.hexdigest()


def _raise(error: OSError):
    raise error  # os.walk would otherwise skip what it cannot list


# --- writing (callers hold ``lock``) --------------------------------------------------


@contextlib.contextmanager
def lock(root: str):
    """Exclusive writer lock on the root; stale staging and trash directories of a
    killed writer are removed once it is held."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, LOCK_FILE), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            _remove_leftovers(root)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(root: str) -> None:
    for directory in [root] + [os.path.join(root, d) for d in os.listdir(root)]:
        if not os.path.isdir(directory):
            continue
        for entry in os.listdir(directory):
            if entry.startswith((STAGING_PREFIX, TRASH_PREFIX)):
                path = os.path.join(directory, entry)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def next_version(root: str, names: list[str]) -> int:
    existing = committed_versions(root)
    for name in names:
        existing += version_dirs(root, name)
    return max(existing, default=0) + 1


def staging_dir(root: str, name: str, version: int) -> str:
    directory = os.path.join(root, name)
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex}")


def fsync_tree(top: str) -> None:
    """Flush every file and directory under ``top`` to disk, so a rename that makes it
    visible cannot outlive its content in a crash."""
    for directory, _, names in os.walk(top):
        for name in names:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staged: str, root: str, name: str, version: int) -> str:
    """Rename a complete, fsynced staging directory to ``<root>/<name>/<version>``."""
    final = os.path.join(root, name, str(version))
    if os.path.exists(final):  # the lock excludes other writers, so this cannot race
        raise ServingRootError(f"{final} already exists; versions are never overwritten")
    os.rename(staged, final)
    _fsync_dir(os.path.dirname(final))
    return final


def write_atomically(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = os.path.join(os.path.dirname(path), f"{STAGING_PREFIX}{uuid.uuid4().hex}")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(os.path.dirname(path))


def write_record(root: str, version: int, record: dict) -> None:
    write_atomically(
        os.path.join(root, RECORDS_DIR, f"{version}.json"),
        json.dumps(record, indent=2, sort_keys=True, default=str),
    )


def record_event(root: str, kind: str, **details) -> dict:
    event = {"kind": kind, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **details}
    name = f"{time.time_ns():020d}-{kind}.json"
    write_atomically(os.path.join(root, EVENTS_DIR, name), json.dumps(event, sort_keys=True))
    return event


def write_config(root: str, served: dict[str, int], tf_serving_root: str = "") -> str:
    """``models.config`` serving ``served`` (name -> version). ``tf_serving_root`` is
    where TF Serving sees this root (e.g. a container mount); default: ``root``."""
    base = tf_serving_root or os.path.abspath(root)
    config = model_server_config_pb2.ModelServerConfig()
    for name in sorted(served):
        entry = config.model_config_list.config.add(
            name=name, base_path=os.path.join(base, name), model_platform="tensorflow"
        )
        entry.model_version_policy.specific.versions.append(served[name])
    path = os.path.join(root, MODELS_CONFIG)
    write_atomically(path, text_format.MessageToString(config))
    return path


def config_base(root: str) -> str:
    """The base directory the current models.config points TF Serving at ('' if none)."""
    config = read_config(root)
    if config is None or not config.model_config_list.config:
        return ""
    return os.path.dirname(config.model_config_list.config[0].base_path)


def remove_old_versions(root: str, names: list[str], keep: int) -> list[int]:
    """Keep the newest ``keep`` committed versions and every served one; remove the
    rest, and version directories that were never committed, older than the newest
    committed version (left by killed pushes). Returns the removed versions."""
    committed = committed_versions(root)
    protected = set(committed[-keep:]) | set(served_versions(root).values())
    newest = committed[-1] if committed else 0
    removed = set()
    for name in names:
        for version in version_dirs(root, name):
            stale = version in committed and version not in protected
            orphan = version not in committed and version < newest
            if stale or orphan:
                _remove_version(root, name, version)
                removed.add(version)
    for version in committed:
        if version not in protected:
            os.remove(os.path.join(root, RECORDS_DIR, f"{version}.json"))
    return sorted(removed)


def _remove_version(root: str, name: str, version: int) -> None:
    # Out of sight in one rename, then deleted: a scanner never sees it half gone.
    trash = os.path.join(root, name, f"{TRASH_PREFIX}{version}-{uuid.uuid4().hex}")
    os.rename(os.path.join(root, name, str(version)), trash)
    shutil.rmtree(trash)


def rollback(root: str, name: str, to: int | None = None, reason: str = "") -> dict:
    """Serve an earlier committed version of model ``name`` (default: the newest one
    below the served version). Same atomicity as a push: one rename of models.config.
    Returns the event recorded.

    With a models.config that cannot be read (``BrokenConfigError``), ``to`` must be
    given, and the rewritten config serves version ``to`` of every model that has
    it: the recovery path, so an operator never edits the file by hand."""
    with lock(root):
        try:
            served = served_versions(root)
        except BrokenConfigError as error:
            if to is None:
                raise
            return _recover(root, name, to, reason, str(error))
        if name not in served:
            raise ServingRootError(
                f"model '{name}' is not served from {root} (models.config "
                f"serves {sorted(served) or 'nothing'})"
            )
        available = [v for v in committed_versions(root) if v in version_dirs(root, name)]
        current = served[name]
        if to is None:
            older = [v for v in available if v < current]
            if not older:
                raise ServingRootError(
                    f"'{name}' serves version {current}, the oldest kept "
                    f"(available: {available}); nothing to roll back to"
                )
            to = older[-1]
        if to not in available:
            raise ServingRootError(
                f"'{name}' has no complete version {to} under {root}; available: {available}"
            )
        if to == current:
            raise ServingRootError(f"'{name}' already serves version {to}")
        write_config(root, {**served, name: to}, config_base(root))
        return record_event(
            root, "rollback", model=name, from_version=current, to_version=to, reason=reason
        )


def _recover(root: str, name: str, to: int, reason: str, broken: str) -> dict:
    """Rewrite a broken models.config to serve version ``to`` of every model that has
    it (``name`` must be one). The base path is the root as this process sees it."""
    committed = committed_versions(root)
    models = sorted(
        model for model in MODELS if to in committed and to in version_dirs(root, model)
    )
    if name not in models:
        raise ServingRootError(
            f"{broken}\n'{name}' has no complete version {to} to recover with; committed "
            f"versions: {committed}"
        )
    write_config(root, {model: to for model in models})
    return record_event(
        root,
        "rollback",
        model=name,
        from_version=None,
        to_version=to,
        recovered_models=models,
        reason=reason or "models.config was unreadable",
    )
