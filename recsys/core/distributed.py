"""Training over several workers: ``tf.distribute.MultiWorkerMirroredStrategy``.

A trainer's work is a *job*: a JSON-able dict of paths and settings, and a function
``run(job, worker, workers) -> metrics`` (``"module:function"``) that trains this
worker's share and, on the chief (worker 0) alone, writes the outputs. With one
worker the function runs in this process. With more:

- locally (``run_local``): one process per worker on this machine, each told the
  cluster (free loopback ports) and its place in it by ``TF_CONFIG``, as every
  TensorFlow cluster is; each reads its own share of the data
  (``modeling.ExampleStream.shard``) and the gradients are all-reduced every step;
- on Kubernetes (``recsys.core.tfjob``): the same command as the replicas of a
  Kubeflow Training Operator TFJob, which sets ``TF_CONFIG`` itself.

Each worker logs with its index; when one fails the others are stopped and the
failure is raised with the worker's last lines.
"""

import contextlib
import importlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from recsys.core import storage, tfjob
from recsys.core.progress import log

WORKER_MODULE = "recsys.core.distributed"
# A hang detector for a training job, far above any expected training time.
TRAINING_TIMEOUT_SECONDS = 12 * 3600


def tf_config(addresses: list[str], index: int) -> str:
    """TensorFlow's cluster description for worker ``index`` of ``addresses``."""
    return json.dumps(
        {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}
    )


def cluster_size() -> tuple[int, int]:
    """(this worker's index, the number of workers) from ``TF_CONFIG``; (0, 1) without."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    workers = len(config.get("cluster", {}).get("worker", [])) or 1
    return int(config.get("task", {}).get("index", 0)), workers


def free_ports(count: int) -> list[int]:
    """Ports free on loopback now (bound and released; the workers bind them next)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def strategy(workers: int):
    """The distribution strategy for ``workers`` (created before any other
    TensorFlow work of the process, as MultiWorkerMirroredStrategy requires)."""
    import tensorflow as tf

    if workers == 1:
        return tf.distribute.get_strategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def plain_copy(model, build, sample_call):
    """``model`` (trained under a distribution strategy) as a model of this process
    alone: ``build()`` makes the same architecture outside the strategy,
    ``sample_call(copy)`` creates its variables, then the weights are copied. What
    the chief exports, so the SavedModel holds plain variables."""
    copy = build()
    sample_call(copy)
    copy.set_weights(model.get_weights())
    return copy


def call(function: str, job: dict, worker: int = 0, workers: int = 1) -> dict:
    module, name = function.split(":")
    return getattr(importlib.import_module(module), name)(job, worker, workers)


def worker_command(function: str, job: dict, python: str = "python") -> list[str]:
    """The command a worker runs: ``function`` on ``job``, its place from TF_CONFIG."""
    return [python, "-m", WORKER_MODULE, function, json.dumps(job)]


@dataclass
class Cluster:
    """Where a task's TFJob runs and what it may read (``run_stage`` on Kubernetes):
    the image, the pipeline root (the job's outputs go under it), the inputs' bucket
    URIs by job key, and the job keys of the outputs the chief writes."""

    image: str
    pipeline_root: str
    inputs: dict[str, str]
    outputs: list[str]
    cpu: str = "2"
    memory: str = "8G"


def run_stage(
    function: str, job: dict, workers: int, stage: str, timeout: float, cluster: Cluster
) -> dict:
    """``function`` (a trainer's ``run``) over ``workers``: in this process when 1;
    as a TFJob when this task runs in a Kubernetes pod; else as local worker
    processes. Returns the chief's metrics."""
    if workers == 1:
        return call(function, job)
    if not tfjob.in_cluster():
        return run_local(function, job, workers, stage, timeout)
    name = f"{stage.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    prefix = storage.join(cluster.pipeline_root, "tfjobs", name)
    outputs = [*cluster.outputs, "metrics_path"]
    remote = tfjob.remote_job(job, cluster.inputs, outputs, prefix)
    manifest = tfjob.manifest(
        name,
        tfjob.own_namespace(),
        cluster.image,
        workers,
        worker_command(function, remote),
        cluster.cpu,
        cluster.memory,
    )
    tfjob.run(manifest, stage, timeout)
    tfjob.copy_outputs(job, remote, cluster.outputs)
    return json.loads(storage.read_text(remote["metrics_path"]))


def run_local(function: str, job: dict, workers: int, stage: str, timeout: float) -> dict:
    """``workers`` processes on this machine, one cluster on loopback ports; the
    chief's metrics. ``timeout`` (seconds) is a hang detector, far above the
    expected time."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    log(stage, f"training on {workers} local workers ({', '.join(addresses)})")
    processes, tails, threads = [], [], []
    metrics_path = job["metrics_path"]
    for index in range(workers):
        env = dict(os.environ, TF_CONFIG=tf_config(addresses, index))
        command = worker_command(function, job, sys.executable)
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        tail: list[str] = []
        thread = threading.Thread(target=_relay, args=(process, index, tail), daemon=True)
        thread.start()
        processes.append(process)
        tails.append(tail)
        threads.append(thread)
    deadline = time.monotonic() + timeout
    failed = None
    while failed is None and any(p.poll() is None for p in processes):
        failed = next((i for i, p in enumerate(processes) if p.poll() not in (None, 0)), None)
        if time.monotonic() > deadline:
            failed = -1
        time.sleep(0.2)
    if failed is None:
        failed = next((i for i, p in enumerate(processes) if p.returncode != 0), None)
    if failed is not None:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, thread in zip(processes, threads, strict=True):
        process.wait()
        thread.join(timeout=10)
    if failed == -1:
        raise RuntimeError(
            f"{stage}: the {workers} training workers did not finish within {timeout:.0f}s "
            "(a hang: a worker waiting for another that never joined); they were stopped"
        )
    if failed is not None:
        raise RuntimeError(
            f"{stage}: training worker {failed} of {workers} failed (exit "
            f"{processes[failed].returncode}); its last lines:\n" + "".join(tails[failed][-15:])
        )
    return json.loads(storage.read_text(metrics_path))


def _relay(process: subprocess.Popen, index: int, tail: list[str]) -> None:
    """A worker's output on this process's stderr, each line marked with its index."""
    for line in process.stdout:
        tail.append(line)
        del tail[:-50]
        print(f"[worker {index}] {line}", end="", file=sys.stderr, flush=True)


def _worker_main(argv: list[str]) -> int:
    function, job = argv[0], json.loads(argv[1])
    index, workers = cluster_size()
    metrics = call(function, job, index, workers)
    if index == 0:
        storage.write_text(job["metrics_path"], json.dumps(metrics))
        return 0
    # The others stay until the chief has exported: a worker leaving the cluster early
    # is reported by the chief's coordination service as a failure.
    deadline = time.monotonic() + TRAINING_TIMEOUT_SECONDS
    while not storage.exists(job["metrics_path"]) and time.monotonic() < deadline:
        time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
