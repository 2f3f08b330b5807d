"""Push: copy blessed models to ``<serving_root>/<model>/<version>/`` atomically,
with TF Serving warmup requests, plus the feature snapshot serving looks up.

TF Serving picks a version up as soon as its directory appears, so each version
is staged in a hidden sibling directory on the same filesystem, checked by
loading it and replaying its warmup requests, and only then renamed into place
(rename is atomic there). Versions are integers, one more than any existing.
"""

import dataclasses
import json
import os
import re
import shutil
import uuid

import recsys  # noqa: F401

import pandas as pd
import pyarrow.parquet as pq
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from components.rerank.rerank import parse_rerank_config
from recsys import modeling
from recsys.tables import read_dataset, read_dataset_table

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
SNAPSHOT_DIR = "feature_snapshot"
RERANK_FILE = "rerank.json"
WARMUP_RECORDS = 8


def existing_versions(serving_root: str, names: list[str]) -> list[int]:
    versions = []
    for name in names:
        directory = os.path.join(serving_root, name)
        if os.path.isdir(directory):
            versions += [int(d) for d in os.listdir(directory) if re.fullmatch(r"\d+", d)]
    return versions


def next_version(serving_root: str, names: list[str]) -> int:
    return max(existing_versions(serving_root, names), default=0) + 1


def latest_version(serving_root: str, name: str) -> int:
    versions = existing_versions(serving_root, [name])
    if not versions:
        raise FileNotFoundError(f"no pushed versions of '{name}' under {serving_root}")
    return max(versions)


def warmup_requests(model_name: str, signature: dict[str, tf.TensorSpec],
                    examples: pd.DataFrame) -> list[prediction_log_pb2.PredictionLog]:
    """One single-example PredictRequest per warmup record, from real eval rows, with
    the tensors built by the same code as every other caller of the model."""
    logs = []
    for row in range(min(WARMUP_RECORDS, len(examples))):
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default"))
        for name, tensor in modeling.raw_tensors(examples.iloc[row:row + 1], signature).items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup(saved_model_dir: str, logs: list) -> str:
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def replay_warmup(saved_model_dir: str, serve) -> int:
    """Run every warmup request written under ``saved_model_dir`` through ``serve``,
    the serving signature loaded from that same staged copy."""
    replayed = 0
    for record in tf.data.TFRecordDataset(os.path.join(saved_model_dir, WARMUP_FILE)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        inputs = {name: tf.constant(tf.make_ndarray(proto))
                  for name, proto in log.predict_log.request.inputs.items()}
        outputs = serve(**inputs)
        if not outputs or any(v.shape[0] != 1 for v in outputs.values()):
            raise AssertionError(f"{saved_model_dir}: warmup request gave {outputs}")
        replayed += 1
    return replayed


def _staging_dir(serving_root: str, name: str, version: int) -> str:
    # Hidden and non-numeric, so TF Serving never mistakes it for a version.
    return os.path.join(serving_root, name, f".staging-{version}-{uuid.uuid4().hex}")


def push(blessing_path: str, models: dict[str, str], warmup_examples_dir: str,
         snapshots: dict[str, str], serving_root: str, rerank: str = "") -> dict:
    """Push every model in ``models`` (name -> SavedModel dir) under one new version,
    with the feature snapshot (``snapshots``: name -> dataset dir) and the re-ranking
    rules the evaluation used (``rerank``, the JSON of ``parse_rerank_config``), which
    the online funnel applies by default.

    Returns a report; when the blessing says no, nothing is written and the
    report says why.
    """
    with open(blessing_path) as handle:
        blessing = json.load(handle)
    if not blessing["blessed"]:
        return {"pushed": False, "reason": f"not pushed: {blessing['reason']}", "paths": {}}

    os.makedirs(serving_root, exist_ok=True)
    version = next_version(serving_root, list(models) + [SNAPSHOT_DIR])
    examples = read_dataset(warmup_examples_dir)
    staged = {}
    try:
        for name, source in models.items():
            stage_dir = staged[name] = _staging_dir(serving_root, name, version)
            shutil.copytree(source, stage_dir)
            # Loaded once from the staged copy: the signature shapes the warmup
            # requests, then replays them (warmup files are not part of the graph).
            serve = tf.saved_model.load(stage_dir).signatures["serving_default"]
            write_warmup(stage_dir, warmup_requests(
                name, serve.structured_input_signature[1], examples))
            replay_warmup(stage_dir, serve)
        stage_dir = staged[SNAPSHOT_DIR] = _staging_dir(serving_root, SNAPSHOT_DIR, version)
        os.makedirs(stage_dir)
        for name, source in snapshots.items():
            pq.write_table(read_dataset_table(source), os.path.join(stage_dir, f"{name}.parquet"))
        with open(os.path.join(stage_dir, RERANK_FILE), "w") as handle:
            json.dump(dataclasses.asdict(parse_rerank_config(rerank)), handle, indent=2,
                      default=sorted)
    except BaseException:
        for stage_dir in staged.values():
            shutil.rmtree(stage_dir, ignore_errors=True)
        raise
    paths = {}
    for name, stage_dir in staged.items():
        final = os.path.join(serving_root, name, str(version))
        os.rename(stage_dir, final)  # atomic on one filesystem; fails if `final` exists
        paths[name] = final
    return {"pushed": True, "version": version, "paths": paths,
            "reason": f"pushed version {version}: {blessing['reason']}"}
