"""Push: publish blessed models to the TF Serving serving root as one new version.

Each model is copied with the warmup requests infra validation replayed
(``assets.extra/tf_serving_warmup_requests``), beside a feature snapshot, the
re-ranking rules the evaluation measured, and the curated schemas and feature
registry the models were trained with; then a push record is written and
``models.config`` switched to the new version. ``recsys.serving.serving_root``
explains why a reader never sees a partial version, even if the push is killed.

Pushing content that is already served (same content hash) is a no-op. This
module imports no TensorFlow: it is file operations only.
"""

import dataclasses
import hashlib
import json

from recsys.components.push.config import PushConfig
from recsys.core import storage
from recsys.core.contracts import (
    BLESSING_CHAMPION,
    COMPARED_WITH_CHAMPION,
    FEATURES_FILE,
    RERANK_FILE,
    SERVED_WHEN_EVALUATED,
    SNAPSHOT_DIR,
    SNAPSHOT_META,
    SNAPSHOT_SCHEMAS,
    WARMUP_FILE,
    warmup_path,
)
from recsys.core.features import registry_path
from recsys.core.schemas import SCHEMA_DIR
from recsys.serving import serving_root as root_
from recsys.serving.rerank import parse_rerank_config


def schema_files(schema_dir: str = "") -> dict[str, str]:
    """The curated schemas and the feature registry the models were trained with:
    file name -> path."""
    directory = schema_dir or SCHEMA_DIR
    files = {
        name: storage.join(directory, name)
        for name in storage.listdir(directory)
        if name.endswith(".schema.pbtxt")
    }
    files[FEATURES_FILE] = registry_path(schema_dir)
    return files


def release_hash(
    models: dict[str, str],
    warmup_dir: str,
    snapshots: dict[str, str],
    rules: dict,
    schema_dir: str = "",
    meta: dict | None = None,
) -> str:
    """What a version holds, hashed: the models, their warmup requests, the snapshot
    tables and their meta, the schemas and registry, and the re-ranking rules."""
    files = {f"model/{name}": path for name, path in models.items()}
    files.update({f"warmup/{name}": warmup_path(warmup_dir, name) for name in models})
    files.update({f"snapshot/{name}": path for name, path in snapshots.items()})
    files.update({f"schemas/{name}": path for name, path in schema_files(schema_dir).items()})
    digest = hashlib.sha256(root_.content_hash(files).encode())
    digest.update(json.dumps(rules, sort_keys=True, default=sorted).encode())
    if meta:
        digest.update(json.dumps(meta, sort_keys=True).encode())
    return digest.hexdigest()


def _stage_model(serving_root: str, name: str, version: int, source: str, warmup_file: str) -> str:
    staged = root_.staging_dir(serving_root, name, version)
    try:
        storage.copy_dir(source, staged)
        storage.copy_file(warmup_file, storage.join(staged, WARMUP_FILE))
    except BaseException:
        storage.remove(staged)
        raise
    return staged


def _stage_snapshot(
    serving_root: str,
    version: int,
    snapshots: dict[str, str],
    rules: dict,
    schema_dir: str,
    meta: dict,
) -> str:
    staged = root_.staging_dir(serving_root, SNAPSHOT_DIR, version)
    storage.makedirs(staged)
    for name, source in snapshots.items():
        storage.copy_dir(source, storage.join(staged, name))
    storage.write_text(
        storage.join(staged, RERANK_FILE), json.dumps(rules, indent=2, default=sorted)
    )
    if meta:
        storage.write_text(storage.join(staged, SNAPSHOT_META), json.dumps(meta, indent=2))
    for name, source in schema_files(schema_dir).items():
        storage.copy_file(source, storage.join(staged, SNAPSHOT_SCHEMAS, name))
    return staged


def champion_changed(blessing: dict, served: dict[str, int]) -> str:
    """Why the blessing no longer holds for what serves now ("" if it does): another
    run pushed after this candidate was compared with the serving version. Checked
    under the writer lease, so no version replaces one it was not compared with."""
    champion = blessing.get(BLESSING_CHAMPION, {})
    if not champion.get(COMPARED_WITH_CHAMPION, True):
        return ""  # compare_with_champion was off: the blessing does not depend on it
    evaluated = champion.get(SERVED_WHEN_EVALUATED, {})
    if evaluated == served:
        return ""
    if SERVED_WHEN_EVALUATED not in champion:
        return (
            f"models.config serves {served}, and the blessing does not record which "
            "version the candidate was compared with (it predates that record, or was "
            "not written by evaluate); run the pipeline again to evaluate against it"
        )
    return (
        f"models.config serves {served or 'nothing'} now, but this candidate was "
        f"evaluated against {evaluated or 'nothing'}: another run pushed in between, "
        "and the candidate was never compared with its version. Run again, so that "
        "evaluate compares with what serves now."
    )


def push(
    blessing_path: str,
    models: dict[str, str],
    warmup_dir: str,
    snapshots: dict[str, str],
    serving_root: str,
    rerank: str = "",
    config: PushConfig = PushConfig(),
    provenance: dict | None = None,
    schema_dir: str = "",
    snapshot_meta: dict | None = None,
) -> dict:
    """Push every model in ``models`` (name -> SavedModel dir) as one new version.

    ``warmup_dir`` holds ``<name>/tf_serving_warmup_requests`` per model (infra
    validation's output); ``snapshots`` maps a table name to a dataset directory;
    ``rerank`` is the JSON of ``parse_rerank_config``; ``snapshot_meta`` (the
    snapshot's as_of and history length) goes with it as ``SNAPSHOT_META``; the
    schemas and registry of
    ``schema_dir`` go with the snapshot; ``provenance`` (data window, code and image
    version, run) goes into the push record. Keeps the newest ``config.keep_versions``
    versions (and every served one). Returns a report; when the blessing says no,
    nothing is written and the report says why.
    """
    blessing = json.loads(storage.read_text(blessing_path))
    if not blessing.get("blessed"):
        return {
            "pushed": False,
            "reason": f"not pushed: {blessing.get('reason', 'no reason')}",
            "paths": {},
        }
    for name in models:
        warmup = warmup_path(warmup_dir, name)
        if not storage.isfile(warmup):
            raise FileNotFoundError(
                f"push: no warmup requests for '{name}' at {warmup}; infra validation writes them"
            )
    rules = dataclasses.asdict(parse_rerank_config(rerank))
    digest = release_hash(models, warmup_dir, snapshots, rules, schema_dir, snapshot_meta)

    with root_.lock(serving_root, "push") as held:
        served = root_.served_versions(serving_root)
        changed = champion_changed(blessing, served)
        if changed:
            root_.record_event(serving_root, "refused", reason=changed, served=served)
            return {"pushed": False, "paths": {}, "reason": f"not pushed: {changed}"}
        current = served.get(next(iter(models)))
        record = root_.read_record(serving_root, current) if current else None
        if (
            record
            and record["content_hash"] == digest
            and all(served.get(name) == current for name in models)
        ):
            root_.record_event(serving_root, "noop", version=current, content_hash=digest)
            return {
                "pushed": False,
                "noop": True,
                "version": current,
                "paths": {},
                "reason": f"not pushed: version {current} already serves this exact "
                f"content (hash {digest[:12]})",
            }

        version = root_.next_version(serving_root, list(models) + [SNAPSHOT_DIR])
        staged = {}
        try:
            for name, source in models.items():
                staged[name] = _stage_model(
                    serving_root, name, version, source, warmup_path(warmup_dir, name)
                )
            staged[SNAPSHOT_DIR] = _stage_snapshot(
                serving_root, version, snapshots, rules, schema_dir, snapshot_meta or {}
            )
            for directory in staged.values():
                storage.fsync_tree(directory)
            held.check(f"publishing version {version}")
            paths = {
                name: root_.publish(directory, serving_root, name, version)
                for name, directory in staged.items()
            }
        finally:
            for directory in staged.values():
                storage.remove(directory)  # what was not published
        held.check(f"committing version {version}")
        root_.write_record(
            serving_root,
            version,
            {
                "version": version,
                "content_hash": digest,
                "models": sorted(models),
                "previously_served": served,
                "blessing": blessing,
                **(provenance or {}),
            },
        )
        models_config = root_.write_config(
            serving_root,
            {**served, **{n: version for n in models}},
            config.tf_serving_root or root_.config_base(serving_root),
        )
        root_.record_event(
            serving_root, "push", version=version, content_hash=digest, previously_served=served
        )
        removed = root_.remove_old_versions(
            serving_root, list(models) + [SNAPSHOT_DIR], config.keep_versions
        )
        if removed:
            root_.record_event(serving_root, "remove", versions=removed)
    return {
        "pushed": True,
        "version": version,
        "paths": paths,
        "models_config": models_config,
        "content_hash": digest,
        "removed_versions": removed,
        "reason": f"pushed version {version}: {blessing['reason']}",
    }
