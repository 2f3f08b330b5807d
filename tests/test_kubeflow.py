"""``recsys submit`` and ``recsys schedule`` against a local HTTP server that answers the
KFP v2beta1 endpoints they call.

A contract test: a KFP API server (and the Kubernetes cluster under it) cannot run
here, so this server implements only what the SDK's ``kfp.Client`` sends for these
commands (healthz, experiments, runs, recurring runs), records every request, and
answers 404 to anything else. The assertions are on the payloads: what a real
server would receive.
"""

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from recsys.app.cli import main as recsys_main

API = "/apis/v2beta1"


class KfpApi:
    def __init__(self):
        self.requests, self.experiments, self.recurring = [], {}, {}

    def handle(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        self.requests.append((method, path, body))
        route = path.split("?")[0]
        if route == f"{API}/healthz":
            return 200, {"multi_user": False}
        if route == f"{API}/experiments" and method == "GET":
            wanted = path.split("display_name", 1)[-1] if "display_name" in path else ""
            found = [e for e in self.experiments.values() if e["display_name"] in wanted]
            return 200, {"experiments": found, "total_size": len(found)}
        if route == f"{API}/experiments" and method == "POST":
            experiment = {"experiment_id": uuid.uuid4().hex, **body}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if route == f"{API}/runs" and method == "POST":
            return 200, {"run_id": "run-1", **body}
        if route == f"{API}/recurringruns" and method == "POST":
            job = {
                "recurring_run_id": f"job-{len(self.recurring) + 1}",
                "status": "ENABLED",
                **body,
            }
            self.recurring[job["recurring_run_id"]] = job
            return 200, job
        if route == f"{API}/recurringruns" and method == "GET":
            return 200, {
                "recurringRuns": list(self.recurring.values()),
                "total_size": len(self.recurring),
            }
        if route.startswith(f"{API}/recurringruns/") and route.endswith(":disable"):
            self.recurring[route.split("/")[-1].split(":")[0]]["status"] = "DISABLED"
            return 200, {}
        if route.startswith(f"{API}/recurringruns/") and method == "DELETE":
            if self.recurring.pop(route.split("/")[-1], None) is None:
                return 404, {"error": "recurring run not found"}
            return 200, {}
        return 404, {"error": f"not part of this stand-in: {method} {route}"}


@pytest.fixture
def kfp_api():
    api = KfpApi()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, reply = api.handle(self.command, self.path, body)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api.host = f"http://127.0.0.1:{server.server_address[1]}"
    yield api
    server.shutdown()


def _posted(api: KfpApi, route: str) -> list[dict]:
    return [
        body
        for method, path, body in api.requests
        if method == "POST" and path.split("?")[0] == f"{API}/{route}"
    ]


def test_submit_sends_the_compiled_pipeline_with_typed_parameters(kfp_api, capsys):
    assert (
        recsys_main(
            [
                "submit",
                "--host",
                kfp_api.host,
                "--experiment",
                "recsys-test",
                "--image",
                "registry.example/recsys:1.2.3",
                "--param",
                "data_root=/data/raw",
                "--param",
                "serving_root=/models",
                "--param",
                "lookback_days=7",
                "--param",
                "warm_start=true",
            ]
        )
        == 0
    )
    assert "submitted run run-1 to experiment 'recsys-test'" in capsys.readouterr().out
    experiment = _posted(kfp_api, "experiments")[0]
    assert experiment["display_name"] == "recsys-test"
    run = _posted(kfp_api, "runs")[0]
    assert run["experiment_id"] in kfp_api.experiments
    spec = run["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "recsys-pipeline"
    image = spec["root"]["inputDefinitions"]["parameters"]["image"]
    assert image["defaultValue"] == "registry.example/recsys:1.2.3"
    assert run["runtime_config"]["parameters"] == {
        "data_root": "/data/raw",
        "serving_root": "/models",
        "lookback_days": 7,
        "warm_start": True,
    }


def test_schedule_creates_lists_disables_and_deletes_recurring_runs(kfp_api, capsys):
    assert (
        recsys_main(
            [
                "schedule",
                "--host",
                kfp_api.host,
                "--cron",
                "0 0 3 * * *",
                "--no-catchup",
                "--max-concurrency",
                "1",
                "--param",
                "data_root=/data/raw",
                "--param",
                "serving_root=/models",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "created recurring run job-1 ('recsys-daily', cron '0 0 3 * * *'" in out
    # What the schedule does day after day, as the settings given make it.
    assert "window ending at its scheduled time" in out
    assert "at most 1 run(s) at once" in out and "no catch-up" in out
    assert "a failed run blocks nothing" in out and "the version serving stays" in out
    job = _posted(kfp_api, "recurringruns")[0]
    assert job["display_name"] == "recsys-daily"
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert job["no_catchup"] is True and int(job["max_concurrency"]) == 1
    assert job["mode"] == "ENABLE"
    # Each run's window ends at its scheduled time: KFP's controller fills the macro in.
    assert job["runtime_config"]["parameters"] == {
        "as_of": "[[ScheduledTime.2006-01-02T15:04:05Z]]",
        "data_root": "/data/raw",
        "serving_root": "/models",
    }
    assert job["pipeline_spec"]["pipelineInfo"]["name"] == "recsys-pipeline"

    assert recsys_main(["schedule", "--host", kfp_api.host, "--list"]) == 0
    listed = capsys.readouterr().out
    assert '"recurring_run_id": "job-1"' in listed and '"cron": "0 0 3 * * *"' in listed
    assert recsys_main(["schedule", "--host", kfp_api.host, "--disable", "job-1"]) == 0
    assert kfp_api.recurring["job-1"]["status"] == "DISABLED"
    assert recsys_main(["schedule", "--host", kfp_api.host, "--delete", "job-1"]) == 0
    assert kfp_api.recurring == {}


def test_bad_input_and_server_errors_are_explained(kfp_api, capsys):
    assert recsys_main(["schedule", "--host", kfp_api.host, "--cron", "0 3 * * *"]) == 2
    assert "6 fields (seconds first)" in capsys.readouterr().err
    assert recsys_main(["submit", "--host", kfp_api.host, "--param", "lookback_dayz=7"]) == 2
    assert "unknown pipeline parameter" in capsys.readouterr().err
    assert recsys_main(["submit", "--host", kfp_api.host, "--param", "lookback_days=a week"]) == 2
    assert "expected a whole number" in capsys.readouterr().err
    assert recsys_main(["schedule", "--host", kfp_api.host, "--delete", "job-404"]) == 2
    assert "answered 404" in capsys.readouterr().err
    assert not _posted(kfp_api, "runs")  # nothing was submitted


def _pvc_mounts(platform_spec: dict) -> dict:
    """Executor -> its PVC mounts (claim, path), from a KFP platform spec."""
    executors = platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return {
        name: [(m["constant"], m["mountPath"]) for m in spec["pvcMount"]]
        for name, spec in executors.items()
    }


def test_volumes_are_mounted_in_every_task(kfp_api, tmp_path, capsys):
    import yaml

    from recsys.pipelines.dag import STAGES

    out = tmp_path / "pipeline.yaml"
    volumes = ["--volume", "recsys-data:/data", "--volume", "models:/models"]
    assert recsys_main(["compile", "--out", str(out), *volumes]) == 0
    pipeline, platform = yaml.safe_load_all(out.read_text())
    mounts = _pvc_mounts(platform)
    executors = set(pipeline["deploymentSpec"]["executors"])
    assert set(mounts) == executors and len(executors) == len(STAGES)
    assert all(m == [("recsys-data", "/data"), ("models", "/models")] for m in mounts.values())

    # submit compiles the same way and sends the platform spec with the run.
    assert recsys_main(["submit", "--host", kfp_api.host, *volumes[:2]]) == 0
    [run] = _posted(kfp_api, "runs")
    sent = run["pipeline_spec"]
    assert set(_pvc_mounts(sent["platform_spec"])) == executors

    assert recsys_main(["compile", "--out", str(out), "--volume", "data"]) == 2
    assert "expected PVC_NAME:/absolute/mount/path" in capsys.readouterr().err


def test_bucket_credentials_reach_every_task_from_a_secret(tmp_path, capsys):
    """--secret-env: how the pods get the keys of the buckets they read (here the
    MinIO secret Kubeflow ships) as the environment S3 clients read."""
    import yaml

    from recsys.pipelines.dag import STAGES

    out = tmp_path / "pipeline.yaml"
    secrets = [
        "--secret-env",
        "mlpipeline-minio-artifact:accesskey=AWS_ACCESS_KEY_ID",
        "--secret-env",
        "mlpipeline-minio-artifact:secretkey=AWS_SECRET_ACCESS_KEY",
    ]
    assert recsys_main(["compile", "--out", str(out), *secrets]) == 0
    _, platform = yaml.safe_load_all(out.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(executors) == len(STAGES)
    for spec in executors.values():
        variables = {
            pair["envVar"]: (entry["secretName"], pair["secretKey"])
            for entry in spec["secretAsEnv"]
            for pair in entry["keyToEnv"]
        }
        assert variables == {
            "AWS_ACCESS_KEY_ID": ("mlpipeline-minio-artifact", "accesskey"),
            "AWS_SECRET_ACCESS_KEY": ("mlpipeline-minio-artifact", "secretkey"),
        }
    assert recsys_main(["compile", "--out", str(out), "--secret-env", "minio:accesskey"]) == 2
    assert "expected SECRET:KEY=ENV_VAR" in capsys.readouterr().err
