"""Infra validation: would TF Serving load these SavedModels and answer in time?

TFX's InfraValidator starts a TF Serving container and sends it requests. No
model server can be installed where this project is built and tested, and CI has
no container engine, so each model is checked in a fresh Python process that
imports only TensorFlow and the serving protos (``probe.py``: ops, load time,
signature against the serving contract, warmup replay, outputs, latency). What
this cannot catch is a difference between TensorFlow's Python runtime and the
model server's C++ one; the README says so.

The serving contract is the registry's (``recsys.core.requests``), the outputs
``contracts.MODEL_OUTPUTS``. The warmup requests are built here, from eval
examples, with ``tensorflow-serving-api``'s ``PredictionLog`` protos and the same
``raw_arrays`` every client uses; push ships exactly these files in
``assets.extra/`` so TF Serving replays them before it serves a version.
"""

import json
import os
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pandas as pd
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from recsys.components.infra_validate.config import Budgets
from recsys.core import storage
from recsys.core.contracts import MODEL_OUTPUTS, SIGNATURE, warmup_path
from recsys.core.features import FeatureRegistry, load_registry
from recsys.core.requests import raw_arrays, serving_contract
from recsys.core.tables import dataset_rows, rows_at

# Run as a script by path: a module of this package would run ``recsys/__init__``,
# which sets the training stack's Keras flag that TF Serving never has.
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe.py")
# Time a probe process has beyond its models' load budgets (TensorFlow's import,
# the warmup replays) before it counts as hung: a hang detector, far above the need.
PROBE_GRACE_SECONDS = 300


def warmup_rows(eval_examples_dir: str, count: int) -> pd.DataFrame:
    """``count`` eval rows spread evenly over the split (varied users, histories,
    times), read as the split streams."""
    total = dataset_rows(eval_examples_dir)
    return rows_at(
        eval_examples_dir, np.unique(np.linspace(0, total - 1, min(count, total)).astype(int))
    )


def warmup_requests(
    model: str, contract: dict[str, tuple[str, int]], examples: pd.DataFrame
) -> list[prediction_log_pb2.PredictionLog]:
    """One single-example PredictRequest per row, as TF Serving's warmup file holds them."""
    signature = {
        name: tf.TensorSpec([None] * rank, tf.as_dtype(dtype), name=name)
        for name, (dtype, rank) in contract.items()
    }
    logs = []
    for row in range(len(examples)):
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model, signature_name=SIGNATURE)
        )
        for name, values in raw_arrays(examples.iloc[row : row + 1], signature).items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(values, signature[name].dtype))
        logs.append(
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
        )
    return logs


def write_warmup(path: str, logs: list) -> str:
    storage.makedirs(storage.parent(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString(deterministic=True))
    return path


def probe_spec(
    model_dir: str, warmup_file: str, contract: dict, outputs: dict, budgets: Budgets
) -> dict:
    """What probe.py needs to check one model."""
    return {
        "model_dir": model_dir,
        "warmup_file": warmup_file,
        "inputs": {name: list(value) for name, value in contract.items()},
        "outputs": outputs,
        **asdict(budgets),
    }


def probe_models(specs: list[dict]) -> list[dict]:
    """Probe every model (``probe_spec``) in one fresh process, one after another: one
    TensorFlow import, not one per model. A model that crashes or hangs the process
    fails the "responds" check, and the models after it are probed in a new one."""
    results = []
    while len(results) < len(specs):
        results += _probe_process(specs[len(results) :])
    return results


def _probe_process(specs: list[dict]) -> list[dict]:
    """Results of the models the process finished, in order, and the failure of the
    one it was probing when it died or ran out of time."""
    environment = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    timeout = sum(spec["max_load_seconds"] for spec in specs) + PROBE_GRACE_SECONDS
    try:
        done = subprocess.run(
            [sys.executable, PROBE],
            input=json.dumps(specs),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
        )
    except subprocess.TimeoutExpired as expired:
        finished = _reported(expired.stdout)
        return finished + [
            _did_not_respond(specs[len(finished)], f"the probe did not finish within {timeout:g} s")
        ]
    finished = _reported(done.stdout)
    if len(finished) < len(specs):
        tail = done.stderr.strip().splitlines()[-3:]
        return finished + [
            _did_not_respond(
                specs[len(finished)],
                f"the probe process exited with {done.returncode}: {' | '.join(tail)}",
            )
        ]
    # Every model reported: an exit status after the last report (a crash in the
    # interpreter's teardown) says nothing about the models.
    return finished


def _reported(stdout: str | bytes | None) -> list[dict]:
    """The complete result lines: probe.py prints one per model as it finishes."""
    if isinstance(stdout, bytes):  # what a timeout captured, undecoded
        stdout = stdout.decode(errors="replace")
    return [
        json.loads(line) for line in (stdout or "").splitlines(keepends=True) if line.endswith("\n")
    ]


def _did_not_respond(spec: dict, detail: str) -> dict:
    return {
        "model_dir": spec["model_dir"],
        "passed": False,
        "checks": [{"check": "responds", "passed": False, "detail": detail}],
    }


def summary(result: dict) -> str:
    if not result.get("passed"):
        return "; ".join(c["detail"] for c in result["checks"] if not c["passed"])
    cpu, wall = result["latency_ms"], result["wall_clock_ms"]
    return (
        f"loads in {result['load_seconds']:.2f} s, warmup p50 {cpu['p50']:.1f} ms, "
        f"p99 {cpu['p99']:.1f} ms of CPU time (wall clock p99 {wall['p99']:.1f} ms "
        f"at load average {result['load_average']:g})"
    )


def infra_validate(
    models: dict[str, str],
    eval_examples_dir: str,
    warmup_dir: str,
    result_path: str,
    budgets: Budgets = Budgets(),
    registry: FeatureRegistry | None = None,
) -> dict:
    """Probe each model (name -> SavedModel dir) with warmup requests built from the
    eval examples; write them to ``warmup_dir/<name>/tf_serving_warmup_requests`` and
    the result to ``result_path``. The serving contract (inputs) comes from the
    feature registry (default: the packaged one). Does not raise on a failed check:
    the result goes into the blessing, where a failure blocks the push."""
    registry = registry or load_registry()
    rows = warmup_rows(eval_examples_dir, budgets.warmup_records)
    specs = []
    for name, model_dir in models.items():
        contract = serving_contract(name, registry)
        warmup = write_warmup(warmup_path(warmup_dir, name), warmup_requests(name, contract, rows))
        specs.append(probe_spec(model_dir, warmup, contract, MODEL_OUTPUTS[name], budgets))
    results = dict(zip(models, probe_models(specs), strict=True))
    for result in results.values():
        result["summary"] = summary(result)
    outcome = {
        "passed": all(r["passed"] for r in results.values()),
        "models": results,
        "budgets": asdict(budgets),
    }
    storage.write_text(result_path, json.dumps(outcome, indent=2))
    return outcome
