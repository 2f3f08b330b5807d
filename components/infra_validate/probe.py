"""SavedModels, probed the way TF Serving would use them, in a fresh process.

    python components/infra_validate/probe.py < specs.json > results.jsonl

This process imports TensorFlow and tensorflow-serving-api's protos and nothing of
the project's training stack (no tensorflow-transform, no TFRS, no Keras
settings), so an op, a library or a Python object the model needs only at
training time shows up here as it would in TF Serving's C++ model server:

1. every op in ``saved_model.pb`` is registered in plain TensorFlow;
2. the model loads, within ``max_load_seconds``;
3. ``serving_default`` takes exactly the expected inputs, with their dtypes and
   ranks, and returns the expected outputs;
4. every warmup request (TFRecord ``PredictionLog``) runs through the signature,
   one example at a time and all together as one batch; outputs have one row per
   example, are finite and within their ranges;
5. the p99 latency of a single-example request over ``repeats`` replays is within
   ``max_request_ms`` (the first call, which traces, is reported separately).
   Latency is the CPU time the request costs this process (all its threads), not
   the wall clock: on a busy build machine the wall clock measures the other
   processes (a model answering in 9 ms idle took 258 ms under load), and the
   gate must not flip with the load. The wall-clock p99 and the load average are
   reported beside it.

Each spec (a JSON list of them on stdin) names the model directory, the warmup
file, the expected ``inputs`` ({name: [dtype, rank]}) and ``outputs`` ({name:
{dtype, rank, min, max}}) and the budgets. The models are probed one after another
(loading a SavedModel registers no ops, so one model cannot hide another's unknown
op), and each result, listing every check, is printed as one JSON line when its
model is done: if the process dies, the caller knows which model it was on.
"""

import json
import os
import sys
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry
from tensorflow_serving.apis import prediction_log_pb2


class Probe:
    def __init__(self, spec: dict):
        self.spec = spec
        self.checks = []

    def check(self, name: str, passed: bool, detail: str) -> bool:
        self.checks.append({"check": name, "passed": bool(passed), "detail": detail})
        return bool(passed)

    def unregistered_ops(self) -> list[str]:
        model = saved_model_pb2.SavedModel()
        with open(f"{self.spec['model_dir']}/saved_model.pb", "rb") as handle:
            model.ParseFromString(handle.read())
        graph = model.meta_graphs[0].graph_def
        ops = {node.op for node in graph.node}
        ops |= {node.op for function in graph.library.function for node in function.node_def}
        ops -= {function.signature.name for function in graph.library.function}
        return sorted(op for op in ops if op_def_registry.get(op) is None)

    def signature_matches(self, function) -> bool:
        inputs = function.structured_input_signature[1]
        expected = self.spec["inputs"]
        problems = [f"missing input '{n}'" for n in sorted(set(expected) - set(inputs))]
        problems += [f"unexpected input '{n}'" for n in sorted(set(inputs) - set(expected))]
        for name in sorted(set(expected) & set(inputs)):
            dtype, rank = expected[name]
            actual = inputs[name]
            if actual.dtype.name != dtype or actual.shape.rank != rank:
                problems.append(
                    f"input '{name}' is {actual.dtype.name} rank "
                    f"{actual.shape.rank}, the serving contract says {dtype} "
                    f"rank {rank}"
                )
        outputs = function.structured_outputs
        for name, want in sorted(self.spec["outputs"].items()):
            if name not in outputs:
                problems.append(f"missing output '{name}'")
            elif outputs[name].dtype.name != want["dtype"]:
                problems.append(
                    f"output '{name}' is {outputs[name].dtype.name}, expected {want['dtype']}"
                )
        return self.check(
            "signature",
            not problems,
            "; ".join(problems)
            or f"{len(inputs)} inputs and "
            f"{len(self.spec['outputs'])} outputs as the serving contract says",
        )

    def output_problems(self, outputs: dict, rows: int) -> list[str]:
        problems = []
        for name, want in self.spec["outputs"].items():
            value = outputs[name].numpy()
            if value.ndim != want["rank"] or value.shape[0] != rows:
                problems.append(
                    f"'{name}' has shape {value.shape}, expected rank "
                    f"{want['rank']} with {rows} row(s)"
                )
                continue
            if value.dtype.kind == "f":
                if not np.isfinite(value).all():
                    problems.append(
                        f"'{name}' has {int((~np.isfinite(value)).sum())} non-finite value(s)"
                    )
                    continue
                low, high = want.get("min"), want.get("max")
                if (low is not None and value.min() < low) or (
                    high is not None and value.max() > high
                ):
                    problems.append(
                        f"'{name}' ranges over [{value.min():.4g}, "
                        f"{value.max():.4g}], outside [{low}, {high}]"
                    )
        return problems

    def run(self) -> dict:
        spec = self.spec
        result = {"model_dir": spec["model_dir"], "checks": self.checks}
        try:
            unknown = self.unregistered_ops()
        except OSError as error:
            self.check("loads", False, f"cannot read saved_model.pb: {error}")
            return self.finish(result)
        self.check(
            "standard ops",
            not unknown,
            f"ops unknown to plain TensorFlow (stock TF Serving cannot run them): {unknown}"
            if unknown
            else "every op is registered in plain TensorFlow",
        )
        started = time.perf_counter()
        try:
            loaded = tf.saved_model.load(spec["model_dir"])
        except Exception as error:  # any load failure is the finding itself
            self.check("loads", False, f"{type(error).__name__}: {str(error)[:300]}")
            return self.finish(result)
        result["load_seconds"] = round(time.perf_counter() - started, 3)
        self.check(
            "load time",
            result["load_seconds"] <= spec["max_load_seconds"],
            f"loaded in {result['load_seconds']:.2f} s (budget {spec['max_load_seconds']:g} s)",
        )
        function = loaded.signatures.get("serving_default")
        if function is None:
            self.check(
                "signature",
                False,
                f"no 'serving_default' signature; found {sorted(loaded.signatures)}",
            )
            return self.finish(result)
        if not self.signature_matches(function):
            return self.finish(result)

        requests = self.warmup_requests()
        if not self.check(
            "warmup requests", requests, f"{len(requests)} request(s) in {spec['warmup_file']}"
        ):
            return self.finish(result)
        started = time.perf_counter()
        problems = self.output_problems(function(**requests[0]), 1)
        result["first_request_ms"] = round((time.perf_counter() - started) * 1000, 3)
        wall_ms, cpu_ms = [], []
        for _ in range(spec["repeats"]):
            for inputs in requests:
                wall, cpu = time.perf_counter(), time.process_time()
                outputs = function(**inputs)
                cpu_ms.append((time.process_time() - cpu) * 1000)
                wall_ms.append((time.perf_counter() - wall) * 1000)
                problems += self.output_problems(outputs, 1)
        batch = {name: _stack([r[name] for r in requests]) for name in requests[0]}
        problems += [
            f"batch of {len(requests)}: {p}"
            for p in self.output_problems(function(**batch), len(requests))
        ]
        self.check(
            "outputs",
            not problems,
            "; ".join(sorted(set(problems))[:5])
            or f"finite and in range for {len(requests)} single requests x "
            f"{spec['repeats']} and one batch of {len(requests)}",
        )
        result["latency_ms"] = _percentiles(cpu_ms)
        result["wall_clock_ms"] = _percentiles(wall_ms)
        result["load_average"] = round(os.getloadavg()[0], 2)
        result["cores"] = os.cpu_count()
        p99 = result["latency_ms"]["p99"]
        self.check(
            "latency",
            p99 <= spec["max_request_ms"],
            f"single-example p99 {p99:.2f} ms of CPU time over {len(cpu_ms)} requests "
            f"(budget {spec['max_request_ms']:g} ms; wall-clock p99 "
            f"{result['wall_clock_ms']['p99']:.2f} ms at load average "
            f"{result['load_average']:g} on {result['cores']} cores, which does not decide; "
            f"first call {result['first_request_ms']:.1f} ms)",
        )
        return self.finish(result)

    def warmup_requests(self) -> list[dict]:
        requests = []
        for record in tf.data.TFRecordDataset(self.spec["warmup_file"]):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            requests.append(
                {
                    name: tf.constant(tf.make_ndarray(proto))
                    for name, proto in log.predict_log.request.inputs.items()
                }
            )
        return requests

    def finish(self, result: dict) -> dict:
        result["passed"] = all(c["passed"] for c in self.checks)
        return result


def _percentiles(milliseconds: list[float]) -> dict:
    p50, p99 = np.percentile(milliseconds, [50, 99])
    return {
        "p50": round(float(p50), 3),
        "p99": round(float(p99), 3),
        "max": round(float(max(milliseconds)), 3),
        "requests": len(milliseconds),
    }


def _stack(tensors: list) -> tf.Tensor:
    """One batch from single-example tensors; lists padded to the longest with ""/0."""
    if tensors[0].shape.rank == 2:
        width = max(int(t.shape[1]) for t in tensors)
        padding = "" if tensors[0].dtype == tf.string else 0
        tensors = [
            tf.pad(t, [[0, 0], [0, width - int(t.shape[1])]], constant_values=padding)
            for t in tensors
        ]
    return tf.concat(tensors, axis=0)


def main() -> int:
    for spec in json.load(sys.stdin):
        print(json.dumps(Probe(spec).run()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
