"""``recsys deploy kserve``: the manifests that serve a pushed version on KServe.

Written for a cluster with KServe (Kubeflow's serving layer) from a serving root
that push writes (a bucket the cluster can read):

- an ``InferenceService`` per model (``<name>-retrieval``, ``<name>-ranking``) on
  KServe's TensorFlow runtime (TF Serving), its ``storageUri`` the model's folder
  in the serving root: TF Serving serves the newest version under it, which is the
  version push made current. The version is written as an annotation, so every
  push changes the spec and KServe rolls out a new revision; with
  ``canary_percent`` the new revision takes that share of the traffic and the
  previous one keeps the rest (KServe's ``canaryTrafficPercent``, Serverless mode);
- the recommendation service (``recsys serve``) as a ``Deployment`` calling those
  InferenceServices over KServe's v1 protocol (TF Serving's REST API), with its
  ``Service``, readiness (``/readyz``) and liveness (``/healthz``) probes,
  resources, a ``HorizontalPodAutoscaler`` on CPU, a ``PodDisruptionBudget``,
  Prometheus scrape annotations, and the bearer token and Redis URL from a
  ``Secret`` the operator creates (keys ``token`` and ``redis-url``);
- a ``kustomization.yaml`` listing them, for ``kubectl apply -k DIR``.

The Kubernetes objects are built with the official client's typed models
(``kubernetes.client``); the InferenceService is KServe's v1beta1 resource, built
as a mapping because the kserve package cannot be installed beside this stack (its
releases that accept protobuf 4 need pandas 2, which the TFX libraries exclude);
tests/test_kserve.py checks it against kserve's own typed models in a separate
environment. No cluster runs here: nothing of this was applied (README, "Serving
on KServe").
"""

import os
import re
from dataclasses import dataclass

import yaml
from kubernetes import client as k8s

from recsys.core import storage
from recsys.core.contracts import RANKING, RETRIEVAL
from recsys.pipelines.parameters import DEFAULT_IMAGE
from recsys.serving import serving_root as roots

MODELS = (RETRIEVAL, RANKING)
SERVE_PORT = 8080
MODES = ("Serverless", "RawDeployment")
# The Secret's keys, which the service reads as environment variables.
SECRET_KEYS = {"token": "RECSYS_TOKEN", "redis-url": "REDIS_URL"}
VERSION_ANNOTATION = "recsys.io/model-version"
# Kubernetes names: a DNS-1035 label for the objects (KServe's rule for an
# InferenceService; its longest suffix here is "-retrieval-predictor"), DNS-1123
# for the namespace.
NAME = re.compile(r"[a-z]([-a-z0-9]{0,30}[a-z0-9])?")
NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class KServeDeployment:
    """What the manifests say besides the serving root; the defaults are a start for
    a small cluster, sized by docs/scale.md's measurements."""

    serving_root: str
    namespace: str = "recsys"
    name: str = "recsys"
    image: str = DEFAULT_IMAGE
    secret: str = "recsys-serve"
    service_account: str = ""  # one with the bucket's credentials; "" = the default
    deployment_mode: str = "Serverless"
    canary_percent: int = 0  # 0: the new revision takes all the traffic at once
    min_replicas: int = 2
    max_replicas: int = 10
    target_cpu_percent: int = 70
    cpu: str = "1"
    memory: str = "4Gi"
    model_cpu: str = "1"
    model_memory: str = "2Gi"

    def __post_init__(self):
        if not NAME.fullmatch(self.name):
            raise ValueError(
                f"name {self.name!r}: lower-case letters, digits and '-', starting with a "
                "letter, at most 32 characters (the InferenceServices' names start with it)"
            )
        if not NAMESPACE.fullmatch(self.namespace):
            raise ValueError(f"namespace {self.namespace!r} is not a Kubernetes namespace name")
        if self.deployment_mode not in MODES:
            raise ValueError(f"deployment mode must be one of {MODES}, got {self.deployment_mode}")
        if not 0 <= self.canary_percent <= 100:
            raise ValueError(f"canary percent must be in [0, 100], got {self.canary_percent}")
        if self.canary_percent and self.deployment_mode != "Serverless":
            raise ValueError(
                "a canary needs KServe's Serverless mode (Knative splits the traffic "
                "between revisions); RawDeployment rolls out like a Deployment"
            )
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"replicas: need 1 <= min ({self.min_replicas}) <= max ({self.max_replicas})"
            )

    def model_name(self, model: str) -> str:
        return f"{self.name}-{model}"

    def model_url(self, model: str) -> str:
        """The in-cluster URL of a model on KServe's v1 protocol (TF Serving's REST
        paths under it): the InferenceService's address (Serverless), or its
        predictor's Service (RawDeployment)."""
        host = self.model_name(model) + (
            "-predictor" if self.deployment_mode != "Serverless" else ""
        )
        return (
            f"http://{host}.{self.namespace}.svc.cluster.local/v1/models/{self.model_name(model)}"
        )


def served_version(serving_root: str) -> int:
    """The version models.config serves, which must be the newest committed one:
    KServe's TensorFlow runtime serves the newest version under the storage URI."""
    served = roots.served_versions(serving_root)
    if not served:
        raise ValueError(f"{serving_root}: no models.config; push a blessed version first")
    versions = set(served.values())
    if len(versions) != 1:
        raise ValueError(f"{serving_root}: the models serve different versions {served}")
    (version,) = versions
    newest = max(roots.committed_versions(serving_root))
    if version != newest:
        raise ValueError(
            f"{serving_root}: models.config serves version {version} (a rollback) but "
            f"version {newest} is newer; KServe's TensorFlow runtime serves the newest "
            "version under the storage URI. Roll back on KServe instead (set the "
            "InferenceServices' canaryTrafficPercent to 0 to send all traffic to the "
            "previous revision), or remove the newer version from the root"
        )
    return version


def inference_service(deployment: KServeDeployment, model: str, version: int) -> dict:
    """KServe's v1beta1 InferenceService of one model."""
    predictor = {
        "minReplicas": 1,
        "model": {
            "modelFormat": {"name": "tensorflow"},
            "storageUri": storage.join(deployment.serving_root, model),
            "resources": {
                "requests": {"cpu": deployment.model_cpu, "memory": deployment.model_memory},
                "limits": {"memory": deployment.model_memory},
            },
        },
    }
    if deployment.service_account:
        predictor["serviceAccountName"] = deployment.service_account
    if deployment.canary_percent:
        predictor["canaryTrafficPercent"] = deployment.canary_percent
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": deployment.model_name(model),
            "namespace": deployment.namespace,
            "labels": {"app.kubernetes.io/part-of": deployment.name},
            "annotations": {
                VERSION_ANNOTATION: str(version),
                "serving.kserve.io/deploymentMode": deployment.deployment_mode,
            },
        },
        "spec": {"predictor": predictor},
    }


def service_objects(deployment: KServeDeployment, version: int) -> list:
    """The recommendation service: Deployment, Service, HorizontalPodAutoscaler and
    PodDisruptionBudget (typed models of the Kubernetes client)."""
    name, labels = (
        f"{deployment.name}-serve",
        {"app.kubernetes.io/name": f"{deployment.name}-serve"},
    )
    metadata = k8s.V1ObjectMeta(
        name=name,
        namespace=deployment.namespace,
        labels={**labels, "app.kubernetes.io/part-of": deployment.name},
    )
    backend = "kserve-v1:" + ",".join(f"{model}={deployment.model_url(model)}" for model in MODELS)
    container = k8s.V1Container(
        name="serve",
        image=deployment.image,
        args=[
            "serve",
            "--serving-root",
            deployment.serving_root,
            "--host",
            "0.0.0.0",
            "--port",
            str(SERVE_PORT),
            "--backend",
            backend,
            "--feature-store",
            "$(REDIS_URL)",  # expanded by Kubernetes from the environment below
            "--token-env",
            SECRET_KEYS["token"],
        ],
        ports=[k8s.V1ContainerPort(name="http", container_port=SERVE_PORT)],
        env=[
            k8s.V1EnvVar(
                name=variable,
                value_from=k8s.V1EnvVarSource(
                    secret_key_ref=k8s.V1SecretKeySelector(name=deployment.secret, key=key)
                ),
            )
            for key, variable in SECRET_KEYS.items()
        ],
        # Ready once a version is loaded and warmed; alive while it loads.
        readiness_probe=k8s.V1Probe(
            http_get=k8s.V1HTTPGetAction(path="/readyz", port="http"),
            period_seconds=5,
            timeout_seconds=2,
            failure_threshold=3,
        ),
        liveness_probe=k8s.V1Probe(
            http_get=k8s.V1HTTPGetAction(path="/healthz", port="http"),
            initial_delay_seconds=10,
            period_seconds=10,
            timeout_seconds=2,
            failure_threshold=6,
        ),
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": deployment.cpu, "memory": deployment.memory},
            limits={"memory": deployment.memory},
        ),
    )
    pod = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(
            labels=labels,
            annotations={
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(SERVE_PORT),
                "prometheus.io/path": "/metrics",
                VERSION_ANNOTATION: str(version),
            },
        ),
        spec=k8s.V1PodSpec(
            containers=[container],
            service_account_name=deployment.service_account or None,
        ),
    )
    selector = k8s.V1LabelSelector(match_labels=labels)
    return [
        k8s.V1Deployment(
            api_version="apps/v1",
            kind="Deployment",
            metadata=metadata,
            spec=k8s.V1DeploymentSpec(
                replicas=deployment.min_replicas, selector=selector, template=pod
            ),
        ),
        k8s.V1Service(
            api_version="v1",
            kind="Service",
            metadata=metadata,
            spec=k8s.V1ServiceSpec(
                selector=labels,
                ports=[k8s.V1ServicePort(name="http", port=80, target_port="http")],
            ),
        ),
        k8s.V2HorizontalPodAutoscaler(
            api_version="autoscaling/v2",
            kind="HorizontalPodAutoscaler",
            metadata=metadata,
            spec=k8s.V2HorizontalPodAutoscalerSpec(
                scale_target_ref=k8s.V2CrossVersionObjectReference(
                    api_version="apps/v1", kind="Deployment", name=name
                ),
                min_replicas=deployment.min_replicas,
                max_replicas=deployment.max_replicas,
                metrics=[
                    k8s.V2MetricSpec(
                        type="Resource",
                        resource=k8s.V2ResourceMetricSource(
                            name="cpu",
                            target=k8s.V2MetricTarget(
                                type="Utilization",
                                average_utilization=deployment.target_cpu_percent,
                            ),
                        ),
                    )
                ],
            ),
        ),
        k8s.V1PodDisruptionBudget(
            api_version="policy/v1",
            kind="PodDisruptionBudget",
            metadata=metadata,
            # A voluntary disruption (a node drain) never takes the last replicas.
            spec=k8s.V1PodDisruptionBudgetSpec(
                max_unavailable=1 if deployment.min_replicas > 1 else 0, selector=selector
            ),
        ),
    ]


def manifests(deployment: KServeDeployment) -> dict[str, list[dict]]:
    """File name -> the objects it holds, as plain mappings."""
    version = served_version(deployment.serving_root)
    to_mapping = k8s.ApiClient().sanitize_for_serialization
    files = {
        f"inferenceservice-{model}.yaml": [inference_service(deployment, model, version)]
        for model in MODELS
    }
    files[f"{deployment.name}-serve.yaml"] = [
        to_mapping(obj) for obj in service_objects(deployment, version)
    ]
    files["kustomization.yaml"] = [
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": deployment.namespace,
            "resources": sorted(files),
        }
    ]
    return files


def write_manifests(deployment: KServeDeployment, out: str) -> list[str]:
    """Write the manifests under ``out`` (a local folder); their paths."""
    os.makedirs(out, exist_ok=True)
    written = []
    for name, objects in manifests(deployment).items():
        path = os.path.join(out, name)
        with open(path, "w") as handle:
            yaml.safe_dump_all(objects, handle, sort_keys=False)
        written.append(path)
    return written
