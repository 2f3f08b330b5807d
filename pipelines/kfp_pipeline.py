"""The DAG as one KFP v2 pipeline: ``wire`` over KFP components, compiled to YAML.

Every stage runs in the same project image (a lightweight Python component whose
function is the stage's shim). The same YAML runs on Kubeflow and, locally, under
KFP's local runner (``recsys.app.local_run``). The pipeline's parameters are
``parameters.pipeline_parameters()``, with their defaults and descriptions.
"""

from dataclasses import dataclass
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact, Dataset, Markdown, Metrics

from recsys.core.provenance import code_version
from recsys.pipelines.dag import OUTPUTS, STAGES, wire
from recsys.pipelines.parameters import DEFAULT_IMAGE, Arguments, pipeline_parameters, signature

PIPELINE_NAME = "recsys-pipeline"
DESCRIPTION = (
    "Raw interaction logs to two-tower retrieval and ranking models pushed for TF Serving."
)
OUTPUT_TYPES = {
    "ingest_metrics": Metrics,
    "quarantine": Dataset,
    "validation_report": Markdown,
    "validation_html": HTML,
    "retrieval_training": Metrics,
    "ranking_training": Metrics,
    "retrieval_metrics": Metrics,
    "ranking_metrics": Metrics,
    "funnel_metrics": Metrics,
    "evaluation_report": Markdown,
    "evaluation_html": HTML,
    "blessing": Artifact,
    "push_report": Markdown,
}
PipelineOutputs = NamedTuple(
    "PipelineOutputs", [(name, OUTPUT_TYPES[name]) for names in OUTPUTS.values() for name in names]
)


@dataclass(frozen=True)
class Volume:
    """A PersistentVolumeClaim every task mounts at ``mount_path``."""

    claim: str
    mount_path: str

    @classmethod
    def parse(cls, text: str) -> "Volume":
        """``PVC_NAME:MOUNT_PATH`` (the command line's ``--volume``)."""
        claim, _, mount_path = text.partition(":")
        if not claim or not mount_path.startswith("/"):
            raise ValueError(
                f"--volume {text!r}: expected PVC_NAME:/absolute/mount/path, e.g. recsys-data:/data"
            )
        return cls(claim, mount_path)

    def apply(self, task) -> None:
        kubernetes.mount_pvc(task, pvc_name=self.claim, mount_path=self.mount_path)


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable every task takes from a Kubernetes Secret: how a pod
    gets the credentials of the buckets it reads (e.g. MinIO's keys for
    ``AWS_ACCESS_KEY_ID``)."""

    secret: str
    key: str
    variable: str

    @classmethod
    def parse(cls, text: str) -> "SecretEnv":
        """``SECRET:KEY=ENV_VAR`` (the command line's ``--secret-env``)."""
        secret, _, rest = text.partition(":")
        key, _, variable = rest.partition("=")
        if not (secret and key and variable.replace("_", "").isalnum()):
            raise ValueError(
                f"--secret-env {text!r}: expected SECRET:KEY=ENV_VAR, e.g. "
                "mlpipeline-minio-artifact:accesskey=AWS_ACCESS_KEY_ID"
            )
        return cls(secret, key, variable)

    def apply(self, task) -> None:
        kubernetes.use_secret_as_env(
            task, secret_name=self.secret, secret_key_to_env={self.key: self.variable}
        )


def stage_component(shim, image: str, code: str = ""):
    """The KFP component of a stage's shim, in ``image``. With ``code`` (a code
    version), each task's command line carries it: KFP's cache key covers the image
    string and the command line, not what the image holds, so a reused tag cannot
    serve results of older code (the executor ignores unknown arguments)."""
    component = dsl.component(shim, base_image=image, install_kfp_package=False)
    if code:
        component.component_spec.implementation.container.args.extend(["--code-version", code])
    return component


class KfpStages:
    """The stages as KFP components in ``image``; ``configure`` sets where and how a
    task runs on Kubeflow (the local runner ignores all of it). ``code``: the code
    version on each task's command line (default: this checkout's; "" for none, as
    the checked-in specifications are compiled: ``recsys.pipelines.specs``)."""

    pipeline_root = dsl.PIPELINE_ROOT_PLACEHOLDER

    def __init__(
        self, image: str, platform: tuple[Volume | SecretEnv, ...] = (), code: str | None = None
    ):
        self.platform = platform
        code = code_version() if code is None else code
        for name, shim in STAGES.items():
            setattr(self, name, stage_component(shim, image, code))
        self.image = image

    def configure(self, task, cpu: str, memory: str, retries: int = 0, cache: bool = True):
        task.set_container_image(self.image)
        task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
        if retries:  # transient storage and scheduling failures: try again, slower
            task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0)
        task.set_caching_options(cache)
        for setting in self.platform:  # kfp-kubernetes: the task's platform spec
            setting.apply(task)
        return task


def build_pipeline(
    image: str = DEFAULT_IMAGE,
    platform: tuple[Volume | SecretEnv, ...] = (),
    code: str | None = None,
):
    """The pipeline; every stage runs in ``image`` unless a run sets the ``image``
    parameter, with each of ``platform`` (volumes, secrets as environment) applied;
    ``code``: as for ``KfpStages``."""
    names = list(pipeline_parameters(image))
    stages = KfpStages(image, tuple(platform), code)

    def recsys_pipeline(*values):
        arguments = Arguments(dict(zip(names, values, strict=True)))
        stages.image = arguments["image"]  # the pipeline parameter: a run may override it
        return PipelineOutputs(**wire(stages, arguments))

    recsys_pipeline.__signature__ = signature(image, PipelineOutputs)
    # KFP reads the parameters' descriptions from the docstring's Args section.
    recsys_pipeline.__doc__ = f"{DESCRIPTION}\n\nArgs:\n" + "".join(
        f"    {p.name}: {p.help}\n" for p in pipeline_parameters(image).values()
    )
    return dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)(recsys_pipeline)


def compile_pipeline(
    path: str,
    image: str = DEFAULT_IMAGE,
    platform: tuple[Volume | SecretEnv, ...] = (),
    code: str | None = None,
) -> str:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(image, platform, code), path)
    return path
