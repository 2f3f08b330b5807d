"""The one image every component runs in, built from the Dockerfile with buildah
(no Docker engine runs here) on a Debian base built locally with debootstrap
(base-image registries are unreachable), then used as Kubeflow would use it: as
the image's non-root user, ``recsys --help`` and the ingest component's command
exactly as the compiled pipeline YAML states it.

About 4 minutes (the image installs the whole lock file), so it has its own
marker: ``make test-image`` runs it, ``.ci/run`` runs both.
"""

import os
import shutil
import subprocess
import uuid

import pytest
import yaml
from google.protobuf import json_format
from kfp.local import executor_input_utils, placeholder_utils
from kfp.pipeline_spec import pipeline_spec_pb2

from recsys.pipelines.kfp_pipeline import compile_pipeline

pytestmark = pytest.mark.image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_IMAGE = "localhost/py311:base"
MISSING = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]


def run(*command, timeout=1800) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command[:4]}...: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def image():
    if MISSING:
        pytest.skip(
            f"{' and '.join(MISSING)} not installed: the image test builds with "
            "buildah on a debootstrap base (apt-get install buildah debootstrap; "
            ".ci/run does)"
        )
    if os.geteuid() != 0:
        pytest.skip("buildah here needs root (chroot isolation, no user namespaces)")
    tag = f"localhost/recsys-pipeline:test-{uuid.uuid4().hex[:8]}"
    if (
        subprocess.run(
            ["buildah", "inspect", "--type", "image", BASE_IMAGE], capture_output=True
        ).returncode
        != 0
    ):
        run("bash", os.path.join(ROOT, "scripts", "build_base_image.sh"), BASE_IMAGE)
    run("make", "-C", ROOT, "image", f"IMAGE={tag}", f"BASE_IMAGE={BASE_IMAGE}")
    yield tag
    subprocess.run(["buildah", "rmi", tag], capture_output=True)


@pytest.fixture
def container(image):
    name = run("buildah", "from", image).stdout.strip()
    yield name
    subprocess.run(["buildah", "rm", name], capture_output=True)


def inside(container: str, *command) -> subprocess.CompletedProcess:
    """Run as the image's configured (non-root) user, as a pod would."""
    return run("buildah", "run", "--isolation", "chroot", container, "--", *command)


def test_the_cli_runs_as_the_non_root_user(container):
    assert inside(container, "id", "-un").stdout.strip() == "recsys"
    assert "schedule" in inside(container, "recsys", "--help").stdout


def test_the_ingest_component_runs_as_the_compiled_yaml_says(image, container, tmp_path):
    spec = yaml.safe_load(open(compile_pipeline(str(tmp_path / "pipeline.yaml"), image)))
    executor = spec["deploymentSpec"]["executors"]["exec-ingest"]["container"]
    assert executor["image"] == "{{$.inputs.parameters['pipelinechannel--image']}}"
    assert spec["root"]["inputDefinitions"]["parameters"]["image"]["defaultValue"] == image
    component = json_format.ParseDict(
        spec["components"]["comp-ingest"], pipeline_spec_pb2.ComponentSpec()
    )
    pipeline_root, data = "/tmp/pipeline_root", "/tmp/data"
    # Every ingest input the pipeline feeds from its own parameters, at the
    # compiled default: a parameter added later cannot go missing here.
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    arguments = {
        name: defaults[source["componentInputParameter"]].get("defaultValue")
        for name, source in spec["root"]["dag"]["tasks"]["ingest"]["inputs"]["parameters"].items()
        if name in component.input_definitions.parameters and "componentInputParameter" in source
    }
    arguments.update(data_root=data, lookback_days=5, eval_days=1)
    executor_input = executor_input_utils.construct_executor_input(
        component, arguments, f"{pipeline_root}/run/ingest", block_input_artifact=True
    )
    command = placeholder_utils.replace_placeholders(
        executor["command"] + executor["args"],
        executor_input_utils.executor_input_to_dict(executor_input, component),
        "recsys-pipeline-image-test",
        "ingest",
        pipeline_root,
        "image-test",
    )

    inside(
        container,
        "recsys",
        "generate",
        "--out",
        data,
        "--users",
        "60",
        "--items",
        "20",
        "--days",
        "6",
    )
    done = inside(container, *command)
    assert "ingest: finished in" in done.stderr
    listed = inside(
        container,
        "sh",
        "-c",
        f"ls {pipeline_root}/run/ingest/train_events && stat -c %U {pipeline_root}/run/ingest",
    ).stdout
    assert "part-00000.parquet" in listed and listed.strip().endswith("recsys")


def test_the_service_runs_as_the_non_root_user(container):
    """`recsys serve` starts in the image (its HTTP stack, metrics and TensorFlow
    import), answers liveness, and says it is not ready on a root nothing was
    pushed to."""
    script = (
        "recsys serve --serving-root /tmp/no-models --port 18766 >/tmp/serve.log 2>&1 & SERVE=$!; "
        'python3 -c "import json, time, urllib.request, urllib.error\n'
        "for _ in range(240):\n"
        "    try:\n"
        "        print(urllib.request.urlopen('http://127.0.0.1:18766/healthz').read().decode())\n"
        "        break\n"
        "    except OSError:\n"
        "        time.sleep(0.5)\n"
        "try:\n"
        "    urllib.request.urlopen('http://127.0.0.1:18766/readyz')\n"
        "except urllib.error.HTTPError as error:\n"
        "    print(error.code, json.loads(error.read())['status'])\n\"; "
        "kill $SERVE; cat /tmp/serve.log"
    )
    out = inside(container, "sh", "-c", script).stdout
    assert '{"alive":true}' in out, out
    assert "503 not ready: nothing is served under /tmp/no-models" in out, out
