"""Training over several workers on Kubeflow: a TFJob of the Kubeflow Training Operator.

With ``training_workers`` above 1 on a cluster, the training task does not train in
its own pod: it creates a TFJob whose worker replicas run the same image and the
same job function (``python -m recsys.core.distributed FUNCTION JOB``); the operator
starts the pods and gives each its ``TF_CONFIG``. The task then waits for the job,
prints its workers' logs, fails with the failing replica's message when the job
fails, and deletes the job. The workers read the datasets from the pipeline root
(bucket URIs); the chief writes its outputs under the job's own prefix there, which
the task copies into its KFP output artifacts.

The manifest is built with the Training Operator's typed models (kubeflow-training)
and Kubernetes' (kubernetes client); ``manifest`` is what a test checks against
those models and the TFJob CRD's schema. No cluster runs here (docs/scale.md).
"""

import os
import time

from recsys.core import storage
from recsys.core.progress import log

TFJOB_KIND, TFJOB_GROUP, TFJOB_VERSION = "TFJob", "kubeflow.org", "v1"
# The container name the Training Operator requires for a TFJob's replicas.
CONTAINER = "tensorflow"


# Where a pod finds its own namespace.
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def in_cluster() -> bool:
    """Whether this task runs in a Kubernetes pod (where TFJobs can be created)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def own_namespace() -> str:
    """The namespace of the pod this runs in ("default" when it cannot tell)."""
    path = NAMESPACE_FILE
    return storage.read_text(path).strip() if storage.isfile(path) else "default"


def manifest(
    name: str,
    namespace: str,
    image: str,
    workers: int,
    command: list[str],
    cpu: str = "2",
    memory: str = "8G",
    env: dict[str, str] | None = None,
    deadline_seconds: int = 6 * 3600,
):
    """The TFJob: ``workers`` worker replicas (no parameter servers: all-reduce),
    each running ``command`` (``distributed.worker_command``); pods never restart on
    their own (a failed worker fails the job, which the task reports) and are
    cleaned up when it ends."""
    from kubeflow.training import models
    from kubernetes import client

    container = client.V1Container(
        name=CONTAINER,
        image=image,
        command=command,
        env=[client.V1EnvVar(name=k, value=v) for k, v in sorted((env or {}).items())],
        resources=client.V1ResourceRequirements(
            requests={"cpu": cpu, "memory": memory}, limits={"cpu": cpu, "memory": memory}
        ),
    )
    worker = models.KubeflowOrgV1ReplicaSpec(
        replicas=workers,
        restart_policy="Never",
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(annotations={"sidecar.istio.io/inject": "false"}),
            spec=client.V1PodSpec(containers=[container]),
        ),
    )
    return models.KubeflowOrgV1TFJob(
        api_version=f"{TFJOB_GROUP}/{TFJOB_VERSION}",
        kind=TFJOB_KIND,
        metadata=client.V1ObjectMeta(name=name, namespace=namespace),
        spec=models.KubeflowOrgV1TFJobSpec(
            run_policy=models.KubeflowOrgV1RunPolicy(
                clean_pod_policy="All",
                backoff_limit=0,
                active_deadline_seconds=deadline_seconds,
            ),
            tf_replica_specs={"Worker": worker},
        ),
    )


def as_dict(tfjob) -> dict:
    """The manifest as the API server receives it (camelCase, no empty fields)."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(tfjob)


def run(
    tfjob,
    stage: str,
    timeout: float,
    client=None,
) -> None:
    """Create ``tfjob``, wait for it, relay its workers' logs; raise naming the failure
    when it does not succeed within ``timeout`` seconds; delete it either way."""
    from kubeflow.training import TrainingClient

    name, namespace = tfjob.metadata.name, tfjob.metadata.namespace
    client = client or TrainingClient(namespace=namespace, job_kind=TFJOB_KIND)
    workers = tfjob.spec.tf_replica_specs["Worker"].replicas
    log(stage, f"created TFJob {namespace}/{name} with {workers} workers; waiting for it")
    client.create_job(tfjob, namespace=namespace)
    started = time.monotonic()
    try:
        job = client.wait_for_job_conditions(
            name,
            namespace,
            job_kind=TFJOB_KIND,
            expected_conditions={"Succeeded", "Failed"},
            wait_timeout=int(timeout),
            polling_interval=15,
        )
        logs, _ = client.get_job_logs(name, namespace, job_kind=TFJOB_KIND, is_master=False)
        for pod, text in sorted(logs.items()):
            for line in text.splitlines()[-200:]:
                log(stage, f"[{pod}] {line}")
        failed = [c for c in job.status.conditions or [] if c.type == "Failed"]
        if failed:
            raise RuntimeError(
                f"{stage}: TFJob {namespace}/{name} failed after "
                f"{time.monotonic() - started:.0f}s: {failed[-1].reason}: {failed[-1].message} "
                "(the workers' logs are above)"
            )
    finally:
        client.delete_job(name, namespace, job_kind=TFJOB_KIND)


def remote_job(job: dict, inputs: dict[str, str], outputs: list[str], prefix: str) -> dict:
    """``job`` with its inputs at their bucket URIs (``inputs``: name -> URI) and each
    of ``outputs`` under ``prefix``, where the chief writes them."""
    remote = dict(job)
    remote.update(inputs)
    remote.update({name: storage.join(prefix, name) for name in outputs})
    return remote


def copy_outputs(job: dict, remote: dict, outputs: list[str]) -> None:
    """The chief's outputs from the job's prefix into the task's own output paths."""
    for name in outputs:
        if storage.isdir(remote[name]):
            storage.copy_dir(remote[name], job[name])
        else:
            storage.copy_file(remote[name], job[name])
