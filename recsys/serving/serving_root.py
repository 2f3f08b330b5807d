"""The serving root TF Serving reads, and the only code that changes it.

Layout under ``<root>``::

    models.config                   TF Serving's ModelServerConfig (text proto): one entry per
                                    model, its version policy pinned to the served version
    retrieval/<version>/            a SavedModel with its warmup requests; immutable once visible
    ranking/<version>/
    feature_snapshot/<version>/     what the funnel looks up beside the models (users/, items/,
                                    item_embeddings/ as Parquet parts, candidate_sources/,
                                    rerank.json)
    records/<version>.json          the push record; a version is committed when it has one
    records/events/<time>-<kind>.json   every push, no-op, rollback and removal

Guarantees, and how (the root may be a local directory or an object store,
``gs://`` / ``s3://`` / ``minio://``, through ``recsys.core.storage``):

- A version is *committed* when its push record exists, and the record is written
  only after every directory of the version is complete. ``models.config`` names
  only committed versions, pinned (``model_version_policy { specific }``), so TF
  Serving never loads anything else, whatever lies under the base paths.
- On a local filesystem a version directory is also never visible incomplete: it
  is staged in a hidden sibling (``.staging-*``, non-numeric, so TF Serving never
  reads it), fsynced, then renamed into place. An object store has no rename: the
  version is written in place, then verified (every file present with its size;
  each object appears whole or not at all), before its record is written.
- Versions are integers, one above any version directory or record that exists,
  so they only increase, even after a killed push left an uncommitted directory.
  An existing version is never written to.
- ``models.config`` is switched with one write (an object put, or a local
  temporary file renamed), and only after the record of the version it names.
  TF Serving started with ``--model_config_file`` therefore switches from one
  complete version to another; rollback is the same switch to an older version.
- Removal (keeping the newest ``keep`` versions) deletes the record first (the
  version is no longer committed), then the directories (locally renamed out of
  sight first). Served versions are never removed.
- One writer at a time: a writer lease (``recsys.core.lease``: a conditional
  create, with expiry) instead of ``flock``, which object stores lack. The writer
  checks it still holds the lease before it commits. While it is held, any
  ``.staging-*`` or ``.trash-*`` directory is a leftover of a killed writer and
  is removed.

File names come from ``recsys.core.contracts``. This module imports no TensorFlow:
a push is file operations, and the kill test starts it thousands of times.
"""

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
import uuid

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from recsys.core import storage
from recsys.core.contracts import EVENTS_DIR, MODELS, MODELS_CONFIG, RECORDS_DIR
from recsys.core.lease import lease

STAGING_PREFIX, TRASH_PREFIX = ".staging-", ".trash-"
VERSION = re.compile(r"\d+")


class ServingRootError(ValueError):
    """A request the serving root cannot honour; the message says why and what exists."""


# --- reading ------------------------------------------------------------------------


def version_dirs(root: str, name: str) -> list[int]:
    """The version directories of model ``name`` (committed or not), ascending."""
    names = storage.listdir(storage.join(root, name))
    return sorted(int(entry) for entry in names if VERSION.fullmatch(entry))


def read_record(root: str, version: int) -> dict | None:
    try:
        return json.loads(storage.read_text(storage.join(root, RECORDS_DIR, f"{version}.json")))
    except FileNotFoundError:
        return None


def committed_versions(root: str) -> list[int]:
    """Versions with a push record (every directory of theirs is complete), ascending."""
    return sorted(
        int(name[:-5])
        for name in storage.listdir(storage.join(root, RECORDS_DIR))
        if name.endswith(".json") and VERSION.fullmatch(name[:-5])
    )


class BrokenConfigError(ServingRootError):
    """models.config exists but is not a model config TF Serving could read."""


def read_config(root: str) -> model_server_config_pb2.ModelServerConfig | None:
    path = storage.join(root, MODELS_CONFIG)
    try:
        text = storage.read_bytes(path)
    except FileNotFoundError:
        return None
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
                f"{storage.join(root, MODELS_CONFIG)}: model '{entry.name}' "
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
    directory = storage.join(root, EVENTS_DIR)
    return [
        json.loads(storage.read_text(storage.join(directory, name)))
        for name in storage.listdir(directory)
        if name.endswith(".json")
    ]


def content_hash(paths: dict[str, str]) -> str:
    """sha256 over the named files and directory trees: relative paths and bytes, in
    sorted order, so equal content hashes equal wherever it lies."""
    digest = hashlib.sha256()
    for label in sorted(paths):
        top = paths[label]
        if storage.isfile(top):
            files = {"": top}
        elif storage.isdir(top):
            files = {relative: storage.join(top, relative) for relative in storage.find(top)}
        else:
            raise FileNotFoundError(f"{top}: nothing to hash")
        for relative, path in files.items():
            digest.update(f"{label}/{relative}\0".encode())
            with storage.open(path) as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\0")
    return digest.hexdigest()


# --- writing (callers hold ``lock``) --------------------------------------------------


@contextlib.contextmanager
def lock(root: str, owner: str = "a writer", wait_seconds: float = 600):
    """The writer lease on the root (yields it, for ``check`` before a commit); stale
    staging and trash directories of a killed writer are removed once it is held."""
    storage.makedirs(root)
    with lease(root, owner, wait_seconds) as held:
        _remove_leftovers(root)
        yield held


def _remove_leftovers(root: str) -> None:
    if not storage.is_local(root):
        return  # nothing is staged or trashed on an object store
    directories = [root, storage.join(root, EVENTS_DIR)]
    directories += [storage.join(root, d) for d in storage.listdir(root)]
    for directory in directories:
        for entry in storage.listdir(directory):
            if entry.startswith((STAGING_PREFIX, TRASH_PREFIX, storage.TEMPORARY_PREFIX)):
                storage.remove(storage.join(directory, entry))


def next_version(root: str, names: list[str]) -> int:
    existing = committed_versions(root)
    for name in names:
        existing += version_dirs(root, name)
    return max(existing, default=0) + 1


def staging_dir(root: str, name: str, version: int) -> str:
    """Where a version is put together before ``publish``: a hidden sibling of its
    final place on a local root; a local temporary directory for an object store."""
    if not storage.is_local(root):
        return tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}-{version}-")
    storage.makedirs(storage.join(root, name))
    return storage.join(root, name, f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex}")


def publish(staged: str, root: str, name: str, version: int) -> str:
    """Make the complete, staged version ``<root>/<name>/<version>``. Locally the
    fsynced staging directory is renamed into place. On an object store it is
    uploaded, then verified: every file present with its size (each object appears
    whole or not at all); a version that is not stays uncommitted, and a later push
    removes it."""
    final = storage.join(root, name, str(version))
    if storage.exists(final):  # the lease excludes other writers, so this cannot race
        raise ServingRootError(f"{final} already exists; versions are never overwritten")
    if storage.is_local(root):
        storage.rename(staged, final)
        return final
    storage.copy_dir(staged, final)
    written, expected = storage.sizes(final), storage.sizes(staged)
    if written != expected:
        missing = sorted(set(expected) - set(written))
        raise ServingRootError(
            f"{final} is not what was uploaded (missing {missing[:5]}, sizes differ for "
            f"{sorted(f for f in expected if written.get(f, expected[f]) != expected[f])[:5]})"
        )
    storage.remove(staged)
    return final


def write_record(root: str, version: int, record: dict) -> None:
    storage.write_text(
        storage.join(root, RECORDS_DIR, f"{version}.json"),
        json.dumps(record, indent=2, sort_keys=True, default=str),
    )


def record_event(root: str, kind: str, **details) -> dict:
    event = {"kind": kind, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **details}
    name = f"{time.time_ns():020d}-{kind}.json"
    storage.write_text(storage.join(root, EVENTS_DIR, name), json.dumps(event, sort_keys=True))
    return event


def write_config(root: str, served: dict[str, int], tf_serving_root: str = "") -> str:
    """``models.config`` serving ``served`` (name -> version). ``tf_serving_root`` is
    where TF Serving sees this root (e.g. a container mount); default: ``root``
    (absolute, if local)."""
    base = tf_serving_root or (os.path.abspath(root) if storage.is_local(root) else root)
    config = model_server_config_pb2.ModelServerConfig()
    for name in sorted(served):
        entry = config.model_config_list.config.add(
            name=name, base_path=storage.join(base, name), model_platform="tensorflow"
        )
        entry.model_version_policy.specific.versions.append(served[name])
    path = storage.join(root, MODELS_CONFIG)
    storage.write_text(path, text_format.MessageToString(config))
    return path


def config_base(root: str) -> str:
    """The base directory the current models.config points TF Serving at ('' if none)."""
    config = read_config(root)
    if config is None or not config.model_config_list.config:
        return ""
    return storage.parent(config.model_config_list.config[0].base_path)


def remove_old_versions(root: str, names: list[str], keep: int) -> list[int]:
    """Keep the newest ``keep`` committed versions and every served one; remove the
    rest, and version directories that were never committed, older than the newest
    committed version (left by killed pushes). Returns the removed versions."""
    committed = committed_versions(root)
    protected = set(committed[-keep:]) | set(served_versions(root).values())
    newest = committed[-1] if committed else 0
    # Uncommit first: a version half deleted is never one with a record.
    for version in committed:
        if version not in protected:
            storage.remove(storage.join(root, RECORDS_DIR, f"{version}.json"))
    removed = set()
    for name in names:
        for version in version_dirs(root, name):
            stale = version in committed and version not in protected
            orphan = version not in committed and version < newest
            if stale or orphan:
                _remove_version(root, name, version)
                removed.add(version)
    return sorted(removed)


def _remove_version(root: str, name: str, version: int) -> None:
    path = storage.join(root, name, str(version))
    if storage.is_local(root):
        # Out of sight in one rename, then deleted: a scanner never sees it half gone.
        trash = storage.join(root, name, f"{TRASH_PREFIX}{version}-{uuid.uuid4().hex}")
        storage.rename(path, trash)
        path = trash
    storage.remove(path)


def rollback(root: str, name: str, to: int | None = None, reason: str = "") -> dict:
    """Serve an earlier committed version of model ``name`` (default: the newest one
    below the served version). Same atomicity as a push: one rename of models.config.
    Returns the event recorded.

    With a models.config that cannot be read (``BrokenConfigError``), ``to`` must be
    given, and the rewritten config serves version ``to`` of every model that has
    it: the recovery path, so an operator never edits the file by hand."""
    with lock(root, f"rollback of {name}", wait_seconds=60) as held:
        try:
            served = served_versions(root)
        except BrokenConfigError as error:
            if to is None:
                raise
            held.check("recovering models.config")
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
        held.check("switching models.config")
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
