"""``recsys deploy kserve``: manifests for KServe and the service, and the service
calling InferenceServices over KServe's v1 protocol.

No cluster runs here. The Kubernetes objects are read back through the official
client's typed models (a field the models do not know would be lost on the way and
fail the comparison); the InferenceServices through KServe's own typed models, in
the separate environment .venv-kserve (requirements-kserve.lock; `make test`
creates it) because kserve cannot be installed beside this stack; the service's
KServe backend is driven against TF Serving's REST API served under the
InferenceServices' model names (tests/tf_serving_double.py).
"""

import json
import os
import subprocess

import jsonschema
import pandas as pd
import pytest
import yaml
from kubernetes import client as k8s

from recsys.app.cli import main
from recsys.app.kserve import MODELS, VERSION_ANNOTATION, KServeDeployment, write_manifests
from recsys.serving import Context, Funnel
from recsys.serving import serving_root as roots
from recsys.serving.backends import backend_target, remote_backend
from recsys.serving.service import ServiceConfig
from tests.tf_serving_double import ServedModels, start_rest, start_v2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KSERVE_PYTHON = os.path.join(ROOT, ".venv-kserve", "bin", "python")
TYPED = {
    "Deployment": "V1Deployment",
    "Service": "V1Service",
    "HorizontalPodAutoscaler": "V2HorizontalPodAutoscaler",
    "PodDisruptionBudget": "V1PodDisruptionBudget",
}


# KServe's InferenceService CRD (serving.kserve.io_inferenceservices.yaml, v1beta1)
# and its admission webhook, the parts a manifest of ours touches, restated: the
# CRD cannot be fetched here (no route to GitHub) and its text stays out of this
# repository.
INFERENCE_SERVICE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                # The webhook's name rule: a DNS-1035 label, at most 63 characters.
                "name": {
                    "type": "string",
                    "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$",
                    "maxLength": 63,
                },
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["predictor"],
            "properties": {
                "predictor": {
                    "type": "object",
                    "properties": {
                        "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "serviceAccountName": {"type": "string"},
                        "model": {
                            "type": "object",
                            "required": ["modelFormat"],
                            "properties": {
                                "modelFormat": {
                                    "type": "object",
                                    "required": ["name"],
                                    "properties": {"name": {"type": "string"}},
                                },
                                "storageUri": {"type": "string"},
                                "resources": {
                                    "type": "object",
                                    "properties": {
                                        "requests": {"type": "object"},
                                        "limits": {"type": "object"},
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


class _Response:
    def __init__(self, body: dict):
        self.data = json.dumps(body)


def read_manifests(out) -> dict[str, list[dict]]:
    return {name: list(yaml.safe_load_all((out / name).read_text())) for name in os.listdir(out)}


@pytest.fixture
def written(pushed_root, tmp_path):
    deployment = KServeDeployment(
        serving_root=pushed_root, namespace="feeds", canary_percent=10, service_account="reader"
    )
    write_manifests(deployment, str(tmp_path / "out"))
    return deployment, read_manifests(tmp_path / "out"), tmp_path / "out"


def test_the_service_objects_are_what_the_typed_models_read(written):
    deployment, files, _ = written
    objects = files["recsys-serve.yaml"]
    assert [o["kind"] for o in objects] == list(TYPED)
    api = k8s.ApiClient()
    for manifest in objects:
        typed = api.deserialize(_Response(manifest), TYPED[manifest["kind"]])
        assert api.sanitize_for_serialization(typed) == manifest
    deployed, service, autoscaler, budget = objects
    pod = deployed["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]} == {
        "RECSYS_TOKEN": "recsys-serve",
        "REDIS_URL": "recsys-serve",
    }
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert pod["spec"]["serviceAccountName"] == "reader"
    labels = deployed["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == labels == budget["spec"]["selector"]["matchLabels"]
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == deployed["metadata"]["name"]
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (2, 10)
    # The service's command line is one `recsys serve` accepts.
    args = container["args"]
    assert args[0] == "serve"
    backend = args[args.index("--backend") + 1]
    ServiceConfig(serving_root=deployment.serving_root, backend=backend)
    kind, urls = backend_target(backend)
    assert kind == "kserve-v1" and set(urls) == set(MODELS)


def test_an_inference_service_per_model_at_the_pushed_version(written, pushed_root):
    deployment, files, _ = written
    version = roots.served_version(pushed_root, "retrieval")
    backend = files["recsys-serve.yaml"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    urls = backend_target(backend[backend.index("--backend") + 1])[1]
    for model in MODELS:
        (service,) = files[f"inferenceservice-{model}.yaml"]
        assert (service["apiVersion"], service["kind"]) == (
            "serving.kserve.io/v1beta1",
            "InferenceService",
        )
        name = service["metadata"]["name"]
        assert service["metadata"]["namespace"] == "feeds"
        assert service["metadata"]["annotations"][VERSION_ANNOTATION] == str(version)
        predictor = service["spec"]["predictor"]
        assert predictor["canaryTrafficPercent"] == 10
        assert predictor["serviceAccountName"] == "reader"
        assert predictor["model"]["modelFormat"] == {"name": "tensorflow"}
        # TF Serving's model base path: every version folder is under it.
        storage_uri = predictor["model"]["storageUri"]
        assert os.path.isfile(os.path.join(storage_uri, str(version), "saved_model.pb"))
        # The service calls the model by the name KServe serves it under.
        assert urls[model] == f"http://{name}.feeds.svc.cluster.local/v1/models/{name}"
    kustomization = files["kustomization.yaml"][0]
    assert sorted(kustomization["resources"]) == sorted(set(files) - {"kustomization.yaml"})


def kserve_typed(*paths) -> subprocess.CompletedProcess:
    assert os.path.isfile(KSERVE_PYTHON), (
        "no .venv-kserve: `make test` creates it (make .venv-kserve/.installed)"
    )
    script = os.path.join(ROOT, "tests", "kserve_typed.py")
    return subprocess.run(
        [KSERVE_PYTHON, script, *map(str, paths)], capture_output=True, text=True, timeout=300
    )


def test_the_inference_services_fit_kserves_typed_models_and_crd(written, tmp_path):
    _, files, out = written
    for model in MODELS:
        jsonschema.validate(files[f"inferenceservice-{model}.yaml"][0], INFERENCE_SERVICE_SCHEMA)
    read = kserve_typed(*(out / f"inferenceservice-{model}.yaml" for model in MODELS))
    assert read.returncode == 0, read.stderr[-3000:]
    assert json.loads(read.stdout) == ["V1beta1InferenceService"] * len(MODELS)
    # The check can fail: a misspelt field, a number written as text.
    service = yaml.safe_load((out / "inferenceservice-ranking.yaml").read_text())
    predictor = service["spec"]["predictor"]
    predictor["canaryTraficPercent"] = predictor.pop("canaryTrafficPercent")
    (tmp_path / "misspelt.yaml").write_text(yaml.safe_dump(service))
    predictor["canaryTrafficPercent"] = str(predictor.pop("canaryTraficPercent"))
    (tmp_path / "text.yaml").write_text(yaml.safe_dump(service))
    misspelt, text = kserve_typed(tmp_path / "misspelt.yaml"), kserve_typed(tmp_path / "text.yaml")
    assert "V1beta1PredictorSpec has no field(s) ['canaryTraficPercent']" in misspelt.stderr
    assert "canaryTrafficPercent: expected int, got '10'" in text.stderr


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_the_service_pages_are_the_same_through_inference_services(stages, pushed_root, protocol):
    """Each model behind its own server, under its InferenceService's name, over
    KServe's v1 protocol (its TensorFlow runtime: TF Serving's REST API) or its v2
    protocol (the Open Inference Protocol): the pages equal the in-process ones."""
    from tests.test_funnel import request_time

    models = ServedModels(pushed_root, list(MODELS))
    deployment = KServeDeployment(serving_root=pushed_root)
    start = {"v1": start_rest, "v2": start_v2}[protocol]
    servers, urls = [], {}
    try:
        for model in MODELS:
            name = deployment.model_name(model)
            server, url = start(models, {name: model})
            servers.append(server)
            urls[model] = f"{url}/{protocol}/models/{name}"
        spec = f"kserve-{protocol}:" + ",".join(f"{model}={url}" for model, url in urls.items())
        remote = Funnel.from_serving_root(pushed_root, backend=remote_backend(spec))
        local = Funnel.from_serving_root(pushed_root)
        at = Context(request_time(stages))
        for user in list(local.features.user_index[:2]) + ["someone-new"]:
            pd.testing.assert_frame_equal(
                remote.recommend(user, at).items,
                local.recommend(user, at).items,
                check_exact=False,
                rtol=1e-5,
            )
        assert models.requests == {"retrieval": 3, "ranking": 3}
    finally:
        for server in servers:
            server.shutdown()


def test_a_rolled_back_root_and_bad_options_are_explained(pushed_root, tmp_path, capsys):
    with pytest.raises(ValueError, match="starting with a letter"):
        KServeDeployment(pushed_root, name="Recsys")
    with pytest.raises(ValueError, match="needs KServe's Serverless mode"):
        KServeDeployment(pushed_root, deployment_mode="RawDeployment", canary_percent=5)
    with pytest.raises(ValueError, match="model=http"):
        backend_target("kserve-v1:retrieval=recsys-retrieval")
    # A root that serves an older version than its newest: KServe's runtime cannot pin it.
    root = tmp_path / "root"
    import shutil

    shutil.copytree(pushed_root, root)
    newest = max(roots.committed_versions(str(root)))
    for model in MODELS:
        shutil.copytree(root / model / str(newest), root / model / str(newest + 1))
    roots.write_record(str(root), newest + 1, roots.read_record(str(root), newest))
    assert max(roots.committed_versions(str(root))) == newest + 1
    code = main(["deploy", "kserve", "--serving-root", str(root), "--out", str(tmp_path / "o")])
    assert code == 2
    error = capsys.readouterr().err
    assert f"serves version {newest} (a rollback)" in error and "canaryTrafficPercent" in error
    code = main(["deploy", "kserve", "--serving-root", str(tmp_path), "--out", str(tmp_path)])
    assert code == 2 and "push a blessed version first" in capsys.readouterr().err
