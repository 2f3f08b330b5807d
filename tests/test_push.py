import json
import os
import shutil

import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from components.push.push import SNAPSHOT_DIR, WARMUP_FILE, push


def _push(stages, serving_root, blessing=None, models=None):
    paths = stages["paths"]
    return push(blessing or paths["blessing"],
                models or {"retrieval": paths["retrieval_model"], "ranking": paths["ranking_model"]},
                paths["eval_examples"],
                {"users": paths["user_snapshot"], "items": paths["item_snapshot"]},
                serving_root)


def _leftovers(serving_root):
    return [d for _, dirs, _ in os.walk(serving_root) for d in dirs if d.startswith(".staging")]


def test_blessed_push_writes_integer_versions_with_warmup(stages, tmp_path):
    serving_root = str(tmp_path / "serving")
    first = _push(stages, serving_root)
    second = _push(stages, serving_root)
    assert first["pushed"] and first["version"] == 1 and second["version"] == 2
    for name in ("retrieval", "ranking"):
        version_dir = os.path.join(serving_root, name, "2")
        assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
        records = list(tf.data.TFRecordDataset(os.path.join(version_dir, WARMUP_FILE)))
        assert 1 <= len(records) <= 100  # TF Serving reads at most 1000
        request = prediction_log_pb2.PredictionLog.FromString(records[0].numpy()).predict_log.request
        assert request.model_spec.name == name
        signature = tf.saved_model.load(version_dir).signatures["serving_default"]
        assert set(request.inputs) == set(signature.structured_input_signature[1])
    assert os.path.isfile(os.path.join(serving_root, SNAPSHOT_DIR, "2", "users.parquet"))
    assert _leftovers(serving_root) == []


def test_not_blessed_pushes_nothing_and_says_why(stages, tmp_path):
    blessing = tmp_path / "blessing.json"
    blessing.write_text(json.dumps({"blessed": False, "reason": "NOT blessed: AUC 0.51"}))
    serving_root = str(tmp_path / "serving")
    report = _push(stages, serving_root, blessing=str(blessing))
    assert report == {"pushed": False, "reason": "not pushed: NOT blessed: AUC 0.51", "paths": {}}
    assert not os.path.exists(serving_root)


def test_a_broken_model_leaves_no_version_and_no_staging(stages, tmp_path):
    broken = tmp_path / "broken_ranking"
    shutil.copytree(stages["paths"]["ranking_model"], broken)
    os.remove(broken / "saved_model.pb")  # injected fault: truncated export
    serving_root = str(tmp_path / "serving")
    with pytest.raises(OSError):
        _push(stages, serving_root,
              models={"retrieval": stages["paths"]["retrieval_model"], "ranking": str(broken)})
    for name in ("retrieval", "ranking", SNAPSHOT_DIR):
        directory = os.path.join(serving_root, name)
        assert not os.path.isdir(directory) or os.listdir(directory) == []
    assert _leftovers(serving_root) == []
