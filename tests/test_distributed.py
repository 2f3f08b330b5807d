"""Training over several workers: two local worker processes
(MultiWorkerMirroredStrategy on loopback ports) train to the quality of one, on the
same data; on Kubernetes the same job runs as a TFJob, whose manifest is checked
against the Training Operator's typed models and the TFJob CRD's schema (no cluster
runs here: docs/scale.md says what was not run)."""

import dataclasses
import json

import jsonschema
import pytest

from recsys.components.train_ranking import train_ranking as rk
from recsys.components.train_ranking.config import RankingConfig
from recsys.components.train_retrieval.config import RetrievalConfig
from recsys.core import distributed, modeling, tfjob

RANKER = "recsys.components.train_ranking.train_ranking:run"
RETRIEVAL = "recsys.components.train_retrieval.train_retrieval:run"


def _job(paths, out, config, **outputs) -> dict:
    return {
        "transformed_train": paths["transformed_train"],
        "transformed_eval": paths["transformed_eval"],
        "transform_graph": paths["transform_graph"],
        "config": dataclasses.asdict(config),
        "schema_dir": "",
        "warm_start_dir": "",
        "shuffle_buffer": 1_000_000,
        "consumed_impressions": False,  # the sample's impressions were shown, not chosen
        "metrics_path": str(out / "metrics.json"),
        **{name: str(out / name) for name in outputs},
    }


def test_two_workers_rank_as_well_as_one_within_the_spread_of_seeds(stages, tmp_path):
    paths = stages["paths"]
    config = RankingConfig(epochs=2, batch_size=512)
    single = []
    for seed in (1, 2, 3):
        _, metrics = rk.train(
            paths["transformed_train"],
            paths["transformed_eval"],
            paths["transform_graph"],
            dataclasses.replace(config, seed=seed),
        )
        single.append(metrics["final_eval_auc"])
    job = _job(paths, tmp_path, dataclasses.replace(config, seed=1))
    job.update(ranking_model=str(tmp_path / "model"), checkpoint=str(tmp_path / "checkpoint"))
    two = distributed.run_local(RANKER, job, 2, "train_ranking", timeout=1800)
    spread = max(single) - min(single)
    assert two["training_workers"] == 2
    assert min(single) - max(spread, 0.01) <= two["final_eval_auc"] <= max(single) + 0.05
    # The chief exported the model and its warm-start checkpoint where the task reads them.
    assert (tmp_path / "model" / "saved_model.pb").exists()
    assert (tmp_path / "checkpoint").exists()


def test_two_workers_retrieve_as_well_as_one_within_the_spread_of_seeds(stages, tmp_path):
    paths = stages["paths"]
    config = RetrievalConfig(epochs=3, batch_size=256, top_k=20, early_stopping_patience=0)
    outputs = ("retrieval_model", "query_model", "item_embeddings", "checkpoint")
    recall = {}
    for workers, seed in ((1, 1), (1, 2), (1, 3), (2, 1)):
        out = tmp_path / f"w{workers}s{seed}"
        job = _job(paths, out, dataclasses.replace(config, seed=seed), **dict.fromkeys(outputs))
        job["item_snapshot"] = paths["item_snapshot"]
        run = distributed.run_local if workers > 1 else None
        metrics = (
            run(RETRIEVAL, job, workers, "train_retrieval", timeout=1800)
            if run
            else distributed.call(RETRIEVAL, job)
        )
        recall[workers, seed] = metrics["val_recall_at_50"]
        assert (out / "retrieval_model" / "saved_model.pb").exists()
    single = [recall[1, seed] for seed in (1, 2, 3)]
    spread = max(single) - min(single)
    assert min(single) - max(spread, 0.02) <= recall[2, 1] <= max(single) + 0.05


def test_a_worker_that_fails_stops_the_others_and_is_named(stages, tmp_path):
    paths = stages["paths"]
    job = _job(paths, tmp_path, RankingConfig(epochs=1, batch_size=512))
    job["transformed_train"] = str(tmp_path / "no such data")
    with pytest.raises(RuntimeError, match=r"training worker \d of 2 failed"):
        distributed.run_local(RANKER, job, 2, "train_ranking", timeout=900)


def test_each_worker_reads_its_own_share_of_the_rows(stages):
    """Every row of the transformed data is read by exactly one worker, shares differ
    by at most a row group, and with fewer row groups than two per worker each row
    group is cut into one part per worker."""
    stream = modeling.ExampleStream(stages["paths"]["transformed_train"], ("clicked",))
    units = stream.units()
    for workers in (2, 3, 2 * len(units)):
        shares = [stream.shard(worker, workers) for worker in range(workers)]
        read = sorted(
            (u.path, u.group, row)
            for share in shares
            for u in share
            for row in range(u.start, u.stop)
        )
        assert read == sorted(
            (u.path, u.group, row) for u in units for row in range(u.start, u.stop)
        )
        rows = [sum(u.rows for u in share) for share in shares]
        assert min(rows) > 0 and max(rows) - min(rows) <= max(u.rows for u in units)
        selected = [sum(t.num_rows for t in stream.tables(share)) for share in shares]
        assert sum(selected) == sum(u.rows for u in units)


DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # a Kubernetes object name
# The TFJob CRD's schema (kubeflow/training-operator, manifests/base/crds/
# kubeflow.org_tfjobs.yaml, v1), the parts a manifest of ours touches, restated.
TFJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kubeflow.org/v1"},
        "kind": {"const": "TFJob"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
            },
        },
        "spec": {
            "type": "object",
            "required": ["tfReplicaSpecs"],
            "additionalProperties": False,
            "properties": {
                "enableDynamicWorker": {"type": "boolean"},
                "successPolicy": {"type": "string"},
                "runPolicy": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                        "backoffLimit": {"type": "integer", "minimum": 0},
                        "cleanPodPolicy": {"enum": ["All", "Running", "None"]},
                        "schedulingPolicy": {"type": "object"},
                        "suspend": {"type": "boolean"},
                        "ttlSecondsAfterFinished": {"type": "integer"},
                    },
                },
                "tfReplicaSpecs": {
                    "type": "object",
                    "propertyNames": {"enum": ["Chief", "PS", "Worker", "Evaluator", "Master"]},
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["template"],
                        "properties": {
                            "replicas": {"type": "integer", "minimum": 1},
                            "restartPolicy": {"enum": ["Always", "OnFailure", "Never", "ExitCode"]},
                            "template": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "required": ["containers"],
                                        "properties": {
                                            "containers": {
                                                "type": "array",
                                                "minItems": 1,
                                                "items": {
                                                    "type": "object",
                                                    "required": ["name", "image"],
                                                },
                                            }
                                        },
                                    }
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_the_tfjob_manifest_fits_the_typed_models_and_the_crd_schema(tmp_path):
    job = {
        "transformed_train": "/tmp/kfp/inputs/transformed_train",
        "transform_graph": "/tmp/kfp/inputs/transform_graph",
        "ranking_model": "/tmp/kfp/outputs/ranking_model",
        "metrics_path": "/tmp/kfp/outputs/metrics.json",
        "config": {"epochs": 3},
    }
    remote = tfjob.remote_job(
        job,
        {
            "transformed_train": "gs://bucket/root/transform/transformed_train",
            "transform_graph": "gs://bucket/root/transform/transform_graph",
        },
        ["ranking_model", "metrics_path"],
        "gs://bucket/root/tfjobs/train-ranking-1234",
    )
    assert remote["transformed_train"].startswith("gs://bucket/root/transform/")
    assert remote["ranking_model"] == "gs://bucket/root/tfjobs/train-ranking-1234/ranking_model"
    manifest = tfjob.manifest(
        "train-ranking-1234",
        "kubeflow-user",
        "registry.example/recsys-pipeline:0.2.0",
        3,
        distributed.worker_command(RANKER, remote),
        cpu="4",
        memory="8G",
    )
    body = tfjob.as_dict(manifest)
    jsonschema.validate(body, TFJOB_SCHEMA)
    worker = body["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 3 and worker["restartPolicy"] == "Never"
    (container,) = worker["template"]["spec"]["containers"]
    assert container["name"] == "tensorflow"  # the operator's required container name
    assert container["command"][:4] == ["python", "-m", distributed.WORKER_MODULE, RANKER]
    assert json.loads(container["command"][4]) == remote
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "8G"}
    assert body["spec"]["runPolicy"]["backoffLimit"] == 0
    # The Training Operator's own client reads it back as a TFJob, field for field.
    from kubeflow.training.api_client import ApiClient

    class Response:
        data = json.dumps(body)

    typed = ApiClient().deserialize(Response(), "KubeflowOrgV1TFJob")
    assert tfjob.as_dict(typed) == body


class RecordingClient:
    """The TrainingClient calls ``tfjob.run`` makes, answered as a cluster would:
    the job fails with a reason, its pods have logs."""

    def __init__(self, condition: str):
        self.calls, self.condition = [], condition

    def create_job(self, job, namespace):
        self.calls.append(("create", job.metadata.name, namespace))

    def wait_for_job_conditions(self, name, namespace, **options):
        from kubeflow.training import models

        self.calls.append(("wait", name, sorted(options["expected_conditions"])))
        condition = models.KubeflowOrgV1JobCondition(
            type=self.condition, status="True", reason="ReplicaFailed", message="worker-1 OOMKilled"
        )
        status = models.KubeflowOrgV1JobStatus(conditions=[condition], replica_statuses={})
        return models.KubeflowOrgV1TFJob(status=status)

    def get_job_logs(self, name, namespace, **options):
        self.calls.append(("logs", name))
        return {f"{name}-worker-0": "epoch 1/3\nepoch 2/3"}, {}

    def delete_job(self, name, namespace, **options):
        self.calls.append(("delete", name))


def test_a_failed_tfjob_is_reported_with_its_reason_and_deleted(capsys):
    manifest = tfjob.manifest("train-ranking-1", "ns", "image:1", 2, ["python"])
    client = RecordingClient("Failed")
    with pytest.raises(RuntimeError, match="TFJob ns/train-ranking-1 failed .*OOMKilled"):
        tfjob.run(manifest, "train_ranking", 600, client)
    assert [call[0] for call in client.calls] == ["create", "wait", "logs", "delete"]
    assert "[train-ranking-1-worker-0] epoch 2/3" in capsys.readouterr().err
    succeeded = RecordingClient("Succeeded")
    tfjob.run(manifest, "train_ranking", 600, succeeded)
    assert succeeded.calls[-1] == ("delete", "train-ranking-1")
