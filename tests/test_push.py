"""Push and the serving root: atomic integer versions, no-op re-push, records,
models.config, keeping the newest versions, rollback, SIGKILL at random points, and a
candidate never pushed over a version it was not compared with. The root is a local
directory and, where marked, a bucket on a real S3 API server (moto, started by the
suite)."""

import json
import multiprocessing
import os
import random
import signal
import threading
import time

import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from recsys.app.cli import main as recsys_main
from recsys.components.push.config import PushConfig
from recsys.components.push.push import push
from recsys.core import storage
from recsys.core.contracts import SNAPSHOT_DIR, WARMUP_FILE
from recsys.serving import serving_root as root_
from tests.conftest import push_stages
from tests.push_child import push_with_environment

RULES_A, RULES_B = '{"k": 10}', '{"k": 12}'
MODELS = ("retrieval", "ranking")


@pytest.fixture(params=["local", "s3"])
def serving_root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "serving")
    return request.getfixturevalue("s3_root") + "/serving"


def _leftovers(serving_root):
    if not storage.is_local(serving_root):  # nothing is staged in a bucket
        return []
    return [
        d
        for _, dirs, _ in os.walk(serving_root)
        for d in dirs
        if d.startswith((root_.STAGING_PREFIX, root_.TRASH_PREFIX))
    ]


def test_push_writes_a_version_its_record_and_the_tf_serving_config(stages, tmp_path):
    serving_root = str(tmp_path / "serving")
    report = push_stages(
        stages,
        serving_root,
        rerank=RULES_A,
        provenance={"data_window": {"as_of": 1}, "image": "img:1"},
    )
    assert report["pushed"] and report["version"] == 1
    for name in MODELS:
        version_dir = os.path.join(serving_root, name, "1")
        records = list(tf.data.TFRecordDataset(os.path.join(version_dir, WARMUP_FILE)))
        assert len(records) == 16  # Budgets.warmup_records, all replayed by infra validation
        request = prediction_log_pb2.PredictionLog.FromString(
            records[0].numpy()
        ).predict_log.request
        assert request.model_spec.name == name
        signature = tf.saved_model.load(version_dir).signatures["serving_default"]
        assert set(request.inputs) == set(signature.structured_input_signature[1])
    snapshot = os.path.join(serving_root, SNAPSHOT_DIR, "1")
    assert sorted(os.listdir(snapshot)) == [
        "candidate_sources",
        "item_embeddings",
        "items",
        "query_model",
        "rerank.json",
        "schemas",
        "snapshot.json",
        "users",
    ]
    with open(os.path.join(snapshot, "snapshot.json")) as handle:
        assert json.load(handle) == {
            "as_of": stages["counts"]["as_of"],
            "history_length": stages["join_counts"]["history_length"],
        }

    assert root_.served_versions(serving_root) == {"ranking": 1, "retrieval": 1}
    config = root_.read_config(serving_root).model_config_list.config
    assert [c.base_path for c in config] == [
        os.path.join(os.path.abspath(serving_root), n) for n in ("ranking", "retrieval")
    ]
    record = root_.read_record(serving_root, 1)
    assert record["content_hash"] == report["content_hash"]
    assert record["blessing"]["blessed"] and record["image"] == "img:1"
    assert record["data_window"] == {"as_of": 1}
    assert [e["kind"] for e in root_.events(serving_root)] == ["push"]
    assert _leftovers(serving_root) == []


def test_the_same_content_again_is_a_no_op_and_new_content_a_new_version(stages, serving_root):
    push_stages(stages, serving_root, rerank=RULES_A)
    again = push_stages(stages, serving_root, rerank=RULES_A)
    assert again["pushed"] is False and again["noop"] and again["version"] == 1
    assert "already serves this exact content" in again["reason"]
    assert root_.version_dirs(serving_root, "retrieval") == [1]
    changed = push_stages(stages, serving_root, rerank=RULES_B)
    assert changed["version"] == 2
    assert root_.served_versions(serving_root) == {"ranking": 2, "retrieval": 2}
    assert [e["kind"] for e in root_.events(serving_root)] == ["push", "noop", "push"]


def test_a_candidate_is_not_pushed_over_a_version_it_was_not_compared_with(stages, serving_root):
    """Two runs evaluated while nothing served: the first pushes; the second, whose
    blessing compared it with nothing, must not replace the first's version."""
    first = push_stages(stages, serving_root, blessing=stages["paths"]["blessing"])
    assert first["pushed"] and first["version"] == 1
    second = push_stages(stages, serving_root, blessing=stages["paths"]["blessing"], rerank=RULES_B)
    assert second["pushed"] is False
    assert "evaluated against nothing" in second["reason"]
    assert "another run pushed in between" in second["reason"]
    assert root_.served_versions(serving_root) == {"ranking": 1, "retrieval": 1}
    assert root_.committed_versions(serving_root) == [1]
    assert [e["kind"] for e in root_.events(serving_root)] == ["push", "refused"]


def test_not_blessed_pushes_nothing_and_says_why(stages, tmp_path):
    blessing = tmp_path / "blessing.json"
    blessing.write_text(json.dumps({"blessed": False, "reason": "NOT blessed: AUC 0.51"}))
    serving_root = str(tmp_path / "serving")
    report = push_stages(stages, serving_root, blessing=str(blessing))
    assert report == {"pushed": False, "reason": "not pushed: NOT blessed: AUC 0.51", "paths": {}}
    assert not os.path.exists(serving_root)


def test_a_failed_copy_leaves_no_version_and_no_staging(stages, tmp_path, serving_root):
    missing = str(tmp_path / "no_such_model")  # injected fault: the second model vanished
    with pytest.raises(OSError):
        push_stages(
            stages,
            serving_root,
            models={"retrieval": stages["paths"]["retrieval_model"], "ranking": missing},
        )
    for name in (*MODELS, SNAPSHOT_DIR):
        assert root_.version_dirs(serving_root, name) == []
    assert _leftovers(serving_root) == [] and root_.served_versions(serving_root) == {}


def test_keeps_the_newest_versions(stages, serving_root):
    for number in range(4):
        report = push_stages(
            stages, serving_root, rerank=json.dumps({"k": 10 + number}), keep_versions=2
        )
    assert report["version"] == 4 and report["removed_versions"] == [2]
    for name in (*MODELS, SNAPSHOT_DIR):
        assert root_.version_dirs(serving_root, name) == [3, 4]
    assert root_.committed_versions(serving_root) == [3, 4]


def test_rollback_round_trip(stages, serving_root, capsys):
    from recsys.serving import InProcessBackend
    from tests.tf_serving_double import ServedModels

    push_stages(stages, serving_root, rerank=RULES_A)
    push_stages(stages, serving_root, rerank=RULES_B)

    assert (
        recsys_main(
            [
                "rollback",
                "--serving-root",
                serving_root,
                "--model",
                "ranking",
                "--reason",
                "CTR dropped",
            ]
        )
        == 0
    )
    assert "ranking: now serving version 1 (was 2)" in capsys.readouterr().out
    assert root_.served_versions(serving_root) == {"ranking": 1, "retrieval": 2}
    if storage.is_local(serving_root):  # TF Serving cannot read s3:// (README)
        assert ServedModels(serving_root, list(MODELS)).versions == {"ranking": 1, "retrieval": 2}
    assert InProcessBackend.from_serving_root(serving_root).versions == {
        "ranking": 1,
        "retrieval": 2,
    }
    rollback = root_.events(serving_root)[-1]
    assert rollback["kind"] == "rollback" and rollback["reason"] == "CTR dropped"
    assert (rollback["from_version"], rollback["to_version"]) == (2, 1)

    # Nothing older than 1 to go back to; version 9 does not exist: clear errors.
    assert recsys_main(["rollback", "--serving-root", serving_root, "--model", "ranking"]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err
    assert (
        recsys_main(["rollback", "--serving-root", serving_root, "--model", "ranking", "--to", "9"])
        == 2
    )
    assert "no complete version 9" in capsys.readouterr().err

    root_.rollback(serving_root, "ranking", to=2)
    assert root_.served_versions(serving_root) == {"ranking": 2, "retrieval": 2}
    assert recsys_main(["versions", "--serving-root", serving_root]) == 0
    listing = capsys.readouterr().out
    assert "ranking, retrieval" in listing and "rollback: from_version=2" in listing

    # A push after a rollback makes a new, higher version and serves it.
    report = push_stages(stages, serving_root, rerank='{"k": 14}')
    assert report["version"] == 3
    assert root_.served_versions(serving_root) == {"ranking": 3, "retrieval": 3}


# --- SIGKILL at random points ------------------------------------------------------


def _scan(serving_root: str, expected: dict[str, set]) -> list[str]:
    """Read the root as TF Serving does; return every version seen incomplete. Locally
    that is every numeric directory under each base path; in a bucket, where versions
    are written in place and only models.config's pinned versions are loaded, every
    committed version. A version that vanishes mid-read (removed as old) is not a
    finding."""
    problems = []
    local = storage.is_local(serving_root)
    committed = root_.committed_versions(serving_root)
    for name, hashes in expected.items():
        for version in root_.version_dirs(serving_root, name):
            if not local and version not in committed:
                continue
            path = storage.join(serving_root, name, str(version))
            try:
                digest = root_.content_hash({"": path})
            except FileNotFoundError:
                continue
            # Locally, removal renames the directory away in one step; a directory
            # walk that races the rename lists part of it without an error, so a
            # directory gone after hashing was removed, not exposed incomplete.
            # In a bucket, removal deletes the record before the files: a record still
            # there after hashing means no file was deleted while it was read.
            if local:
                still_there = storage.isdir(path)
            else:
                still_there = root_.read_record(serving_root, version) is not None
            if digest not in hashes and still_there:
                problems.append(f"{name}/{version} is visible but incomplete")
    for name, version in root_.served_versions(serving_root).items():
        if root_.read_record(serving_root, version) is None:
            problems.append(f"models.config serves {name} {version}, which has no record")
    return problems


def test_sigkill_at_random_points_never_exposes_a_partial_version(stages, serving_root):
    paths = stages["paths"]
    arguments = {
        "blessing_path": stages["repeatable_blessing"],
        "models": {"retrieval": paths["retrieval_model"], "ranking": paths["ranking_model"]},
        "warmup_dir": paths["warmup_requests"],
        "snapshots": {"users": paths["user_snapshot"], "items": paths["item_snapshot"]},
        "serving_root": serving_root,
        "config": PushConfig(keep_versions=3),
    }
    contents = ['{"k": 10}', '{"k": 12}', '{"k": 14}']
    # Complete versions of each content, to know what every complete directory hashes to.
    for rules in contents:
        push(**arguments, rerank=rules)
    expected = {
        name: {
            root_.content_hash({"": storage.join(serving_root, name, str(v))}) for v in (1, 2, 3)
        }
        for name in (*MODELS, SNAPSHOT_DIR)
    }
    assert len(expected[SNAPSHOT_DIR]) == 3 and len(expected["retrieval"]) == 1
    environment = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}

    # Children fork from a server that has imported push but not TensorFlow, so each
    # starts in milliseconds and dies wherever the random delay lands.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.push_child"])

    def start_child(rules):
        # The target imports only push: unpickling it imports nothing the server lacks.
        child = context.Process(
            target=push_with_environment,
            args=(environment,),
            kwargs={**arguments, "rerank": rules},
        )
        child.start()
        return child

    for rules in contents[:2]:  # the first also starts the fork server: time the second
        started = time.monotonic()
        child = start_child(rules)
        child.join()
        assert child.exitcode == 0
    duration, served_content = time.monotonic() - started, 1

    problems, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            problems.extend(_scan(serving_root, expected))

    scanner = threading.Thread(target=reader, daemon=True)
    scanner.start()
    generator = random.Random(1234)
    killed_mid_push, attempts = 0, 0
    # Kill until this many kills landed during a push: how busy the machine is moves
    # where a random delay lands, not how many kills the test makes count. The bound
    # on attempts is a hang detector.
    wanted = 25 if storage.is_local(serving_root) else 4  # a bucket is slower
    try:
        while killed_mid_push < wanted:
            attempts += 1
            assert attempts <= 20 * wanted, (
                f"only {killed_mid_push} of {attempts - 1} kills landed during a push"
            )
            served_before = root_.served_versions(serving_root)
            # The child pushes content other than what is served; the parent then a third.
            child = start_child(contents[(served_content + 1) % 3])
            time.sleep(generator.uniform(0, 1.2 * duration))
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it finished first (the fork server reaped it)
            child.join()
            killed_mid_push += child.exitcode == -signal.SIGKILL
            problems.extend(_scan(serving_root, expected))
            served = root_.served_versions(serving_root)
            # models.config switched completely or not at all.
            assert len(set(served.values())) == 1, served
            assert served == served_before or max(served.values()) > max(served_before.values())
            # The next push succeeds, with a version above anything a killed one left.
            above = root_.next_version(serving_root, [*MODELS, SNAPSHOT_DIR])
            served_content = (served_content + 2) % 3
            report = push(**arguments, rerank=contents[served_content])
            assert report["pushed"] and report["version"] == above
            assert root_.served_versions(serving_root) == {n: above for n in MODELS}
            assert _leftovers(serving_root) == []
    finally:
        stop.set()
        scanner.join()
    assert problems == []
    versions = root_.committed_versions(serving_root)
    assert len(versions) == 3 and root_.served_versions(serving_root)["retrieval"] == versions[-1]
