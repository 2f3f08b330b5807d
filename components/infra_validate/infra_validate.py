"""Infra validation: would TF Serving load these SavedModels and answer in time?

TFX's InfraValidator starts a TF Serving container and sends it requests. No
model server can be installed where this project is built and tested, and CI has
no container engine, so each model is checked in a fresh Python process that
imports only TensorFlow and the serving protos (``probe.py``: ops, load time,
signature against the serving contract, warmup replay, outputs, latency). What
this cannot catch is a difference between TensorFlow's Python runtime and the
model server's C++ one; the README says so.

The warmup requests are built here, from eval examples, with
``tensorflow-serving-api``'s ``PredictionLog`` protos and the same
``modeling.raw_arrays`` every client uses; push ships exactly these files in
``assets.extra/`` so TF Serving replays them before it serves a version.
"""

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

import recsys  # noqa: F401

import numpy as np
import pandas as pd
import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from components.features import preprocessing
from components.push.push import warmup_path
from components.train_ranking.train_ranking import (PROBABILITY_OUTPUT, RANKING_FEATURES,
                                                    SCORE_OUTPUT, WATCH_OUTPUT)
from recsys import modeling
from recsys.tables import read_dataset
from schemas import load_schema

MODEL_INPUTS = {"retrieval": preprocessing.QUERY_TOWER_FEATURES, "ranking": RANKING_FEATURES}
MODEL_OUTPUTS = {
    "retrieval": {"item_ids": {"dtype": "string", "rank": 2},
                  "scores": {"dtype": "float32", "rank": 2}},
    "ranking": {PROBABILITY_OUTPUT: {"dtype": "float32", "rank": 1, "min": 0.0, "max": 1.0},
                WATCH_OUTPUT: {"dtype": "float32", "rank": 1, "min": 0.0},
                SCORE_OUTPUT: {"dtype": "float32", "rank": 1, "min": 0.0}},
}
SCHEMA_DTYPES = {schema_pb2.BYTES: "string", schema_pb2.INT: "int64", schema_pb2.FLOAT: "float32"}


@dataclass
class Budgets:
    max_load_seconds: float = 60.0
    max_request_ms: float = 100.0  # p99 of single-example requests
    warmup_records: int = 16
    repeats: int = 10  # replays of each warmup request for the latency figure

    def __post_init__(self):
        if self.max_load_seconds <= 0 or self.max_request_ms <= 0:
            raise ValueError("infra budgets must be positive")
        if not 1 <= self.warmup_records <= 1000:  # TF Serving replays at most 1000
            raise ValueError(f"warmup_records must be in [1, 1000], got {self.warmup_records}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")


def serving_contract(model: str, schema_dir: str = "") -> dict[str, tuple[str, int]]:
    """The inputs serving sends ``model``: name -> (dtype, rank), from the examples
    schema (lists, the engagement history, are [batch, length])."""
    types = {feature.name: feature.type for feature in load_schema("examples", schema_dir).feature}
    return {name: (SCHEMA_DTYPES[types[name]],
                   2 if name in preprocessing.SEQUENCE_FEATURES else 1)
            for name in MODEL_INPUTS[model]}


def warmup_rows(examples: pd.DataFrame, count: int) -> pd.DataFrame:
    """``count`` eval rows spread evenly over the split (varied users, histories, times)."""
    positions = np.unique(np.linspace(0, len(examples) - 1, min(count, len(examples)))
                          .astype(int))
    return examples.iloc[positions]


def warmup_requests(model: str, contract: dict[str, tuple[str, int]],
                    examples: pd.DataFrame) -> list[prediction_log_pb2.PredictionLog]:
    """One single-example PredictRequest per row, as TF Serving's warmup file holds them."""
    signature = {name: tf.TensorSpec([None] * rank, tf.as_dtype(dtype), name=name)
                 for name, (dtype, rank) in contract.items()}
    logs = []
    for row in range(len(examples)):
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model, signature_name="serving_default"))
        for name, values in modeling.raw_arrays(examples.iloc[row:row + 1], signature).items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(values, signature[name].dtype))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup(path: str, logs: list) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString(deterministic=True))
    return path


def probe(model_dir: str, warmup_file: str, contract: dict, outputs: dict,
          budgets: Budgets) -> dict:
    """Run probe.py on one model in a fresh process; a crash or hang is a failed check."""
    spec = {"model_dir": model_dir, "warmup_file": warmup_file,
            "inputs": {name: list(value) for name, value in contract.items()},
            "outputs": outputs, **asdict(budgets)}
    environment = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    timeout = budgets.max_load_seconds + 300
    try:
        done = subprocess.run([sys.executable, "-m", "components.infra_validate.probe"],
                              input=json.dumps(spec), capture_output=True, text=True,
                              timeout=timeout, env=environment)
    except subprocess.TimeoutExpired:
        return {"model_dir": model_dir, "passed": False, "checks": [
            {"check": "responds", "passed": False,
             "detail": f"the probe did not finish within {timeout:g} s"}]}
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        return {"model_dir": model_dir, "passed": False, "checks": [
            {"check": "responds", "passed": False,
             "detail": f"the probe process exited with {done.returncode}: {' | '.join(tail)}"}]}
    return json.loads(done.stdout)


def summary(result: dict) -> str:
    if not result.get("passed"):
        return "; ".join(c["detail"] for c in result["checks"] if not c["passed"])
    latency = result["latency_ms"]
    return (f"loads in {result['load_seconds']:.2f} s, warmup p50 {latency['p50']:.1f} ms, "
            f"p99 {latency['p99']:.1f} ms")


def infra_validate(models: dict[str, str], eval_examples_dir: str, warmup_dir: str,
                   result_path: str, budgets: Budgets = Budgets(), schema_dir: str = "") -> dict:
    """Probe each model (name -> SavedModel dir) with warmup requests built from the
    eval examples; write them to ``warmup_dir/<name>/tf_serving_warmup_requests`` and
    the result to ``result_path``. Does not raise on a failed check: the result goes
    into the blessing, where a failure blocks the push."""
    rows = warmup_rows(read_dataset(eval_examples_dir), budgets.warmup_records)
    results = {}
    for name, model_dir in models.items():
        contract = serving_contract(name, schema_dir)
        warmup = write_warmup(warmup_path(warmup_dir, name),
                              warmup_requests(name, contract, rows))
        results[name] = probe(model_dir, warmup, contract, MODEL_OUTPUTS[name], budgets)
        results[name]["summary"] = summary(results[name])
    outcome = {"passed": all(r["passed"] for r in results.values()), "models": results,
               "budgets": asdict(budgets)}
    with open(result_path, "w") as handle:
        json.dump(outcome, handle, indent=2)
    return outcome
