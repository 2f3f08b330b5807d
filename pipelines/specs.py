"""The compiled specifications checked in beside the code they come from.

- ``pipelines/pipeline.yaml``: the whole DAG, ready to upload in the Kubeflow UI;
- per KFP component, ``components/<stage>/component.yaml`` (a stage with two
  components, features, has one folder per component:
  ``components/features/join_features/``): what
  ``kfp.components.load_component_from_file`` (or ``load_component_from_url``)
  loads, so another team's pipeline can run the stage with the project's image;
- beside each, a ``README.md`` of its inputs, outputs and parameters, written from
  the compiled spec and the parameters' help texts.

All of it is compiled for the release image (``DEFAULT_IMAGE``; a run can set
the ``image`` parameter) without the code version ``recsys compile`` adds to each
task's command line for KFP's cache (``kfp_pipeline.KfpStages``): the checked-in
files change when a stage's shim, signature or parameters change, not with every
edit of the code behind them. ``recsys compile --specs`` writes them;
tests/test_specs.py fails when a checked-in one differs from what it writes.
"""

import ast
import importlib.util
import os
import tempfile

import yaml
from kfp import compiler

import recsys.components
from recsys.core import storage
from recsys.core.config import Parameter
from recsys.pipelines.dag import STAGES
from recsys.pipelines.kfp_pipeline import compile_pipeline, stage_component
from recsys.pipelines.parameters import DEFAULT_IMAGE, pipeline_parameters

REFRESH = "make compile (recsys compile --specs)"
PIPELINE_SPEC = os.path.join("pipelines", "pipeline.yaml")
# Arguments the DAG sets itself rather than from a parameter of the same name.
WIRED = {
    "pipeline_root": "the run's pipeline root (KFP's placeholder)",
    "score_watch_weight": "the ranker's `ranking_score_watch_weight` (pages valued as it scores)",
}


def repository_root() -> str:
    """The checkout whose top-level ``components/`` the package links to; an error
    where the package is installed without it (a wheel, the image)."""
    components = os.path.realpath(recsys.components.__path__[0])
    root = os.path.dirname(components)
    if os.path.basename(components) != "components" or not storage.isfile(
        os.path.join(root, "pyproject.toml")
    ):
        raise FileNotFoundError(
            f"{components} is not a checkout's top-level components/ folder: "
            "compile the specifications from a clone of the repository"
        )
    return root


def stage_of(shim) -> str:
    """The folder under components/ of a shim (``recsys.components.<stage>.component``)."""
    return shim.__module__.split(".")[2]


def spec_folder(name: str) -> str:
    """Where component ``name``'s spec and README live, relative to the repository."""
    stage = stage_of(STAGES[name])
    shared = sum(stage_of(shim) == stage for shim in STAGES.values()) > 1
    return os.path.join("components", stage, name) if shared else os.path.join("components", stage)


def compiled_specs(image: str = DEFAULT_IMAGE) -> dict[str, str]:
    """Every checked-in file's path (relative to the repository) and its text."""
    files = {}
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "pipeline.yaml")
        compile_pipeline(path, image, code="")
        files[PIPELINE_SPEC] = storage.read_text(path)
        for name in STAGES:
            path = os.path.join(scratch, f"{name}.yaml")
            compiler.Compiler().compile(stage_component(STAGES[name], image), path)
            text = storage.read_text(path)
            folder = spec_folder(name)
            files[os.path.join(folder, "component.yaml")] = text
            files[os.path.join(folder, "README.md")] = component_readme(name, yaml.safe_load(text))
    return files


def write_specs(root: str | None = None) -> list[str]:
    """Write every compiled file under ``root`` (default: this checkout); their paths."""
    root = root or repository_root()
    written = []
    for relative, text in compiled_specs().items():
        path = os.path.join(root, relative)
        storage.makedirs(os.path.dirname(path))
        storage.write_text(path, text)
        written.append(path)
    return written


def stale_specs(root: str | None = None) -> list[str]:
    """The checked-in files (relative paths) that differ from what would be written,
    or are missing."""
    root = root or repository_root()
    stale = []
    for relative, text in compiled_specs().items():
        path = os.path.join(root, relative)
        if not storage.isfile(path) or storage.read_text(path) != text:
            stale.append(relative)
    return stale


def component_readme(name: str, spec: dict) -> str:
    """A component's README: what it does, how to load it, its inputs, outputs and
    parameters, from its compiled ``spec`` and the parameters' help texts."""
    (component,) = spec["components"].values()
    inputs = component.get("inputDefinitions", {})
    outputs = component.get("outputDefinitions", {})
    stage = stage_of(STAGES[name])
    folder = spec_folder(name)
    lines = [
        f"# `{name}`",
        "",
        summary(name),
        "",
        f"Source: `{logic_module(name).replace('.', '/')}.py` (the stage) and",
        f"`components/{stage}/component.py` (this KFP shim). Generated from the shim by",
        f"`{REFRESH}`; do not edit by hand.",
        "",
        "```python",
        "from kfp import components",
        "",
        f'spec = "{folder}/component.yaml"',
        f"{name} = components.load_component_from_file(spec)",
        "# or components.load_component_from_url(<this file's raw URL>)",
        "```",
        "",
        f"Every task runs in the project's image (`{DEFAULT_IMAGE}` as compiled;",
        "`task.set_container_image(...)` for yours).",
        "",
        "## Inputs",
        "",
        "| artifact | type |",
        "|---|---|",
        *(
            f"| `{artifact}` | `{kind['artifactType']['schemaTitle']}` |"
            for artifact, kind in sorted(inputs.get("artifacts", {}).items())
        ),
        "",
        "## Outputs",
        "",
        "| artifact | type |",
        "|---|---|",
        *(
            f"| `{artifact}` | `{kind['artifactType']['schemaTitle']}` |"
            for artifact, kind in sorted(outputs.get("artifacts", {}).items())
        ),
        "",
        "## Parameters",
        "",
        "| parameter | type | pipeline parameter | meaning |",
        "|---|---|---|---|",
    ]
    for parameter, kind in inputs.get("parameters", {}).items():
        declared = declared_as(name, parameter)
        if not declared and parameter not in WIRED:
            raise ValueError(
                f"component {name}: argument {parameter!r} is neither a pipeline parameter "
                "nor explained in pipelines/specs.py's WIRED"
            )
        source, meaning = (
            (f"`{declared.name}`", declared.help)
            if declared
            else ("(set by the DAG)", WIRED[parameter])
        )
        kind = kind["parameterType"].lower()
        escaped = meaning.replace("|", r"\|")  # a bar inside a Markdown table cell
        lines.append(f"| `{parameter}` | {kind} | {source} | {escaped} |")
    return "\n".join(lines) + "\n"


def declared_as(name: str, argument: str) -> Parameter | None:
    """The pipeline parameter a component's argument comes from: the run-level one of
    that name, else the field of that name of the stage's own config."""
    stage = stage_of(STAGES[name])
    everything = pipeline_parameters().values()
    for declared in everything:
        if declared.name == argument and declared.config.__module__.startswith("recsys.pipelines"):
            return declared
    for declared in everything:
        if declared.field == argument and declared.config.__module__.startswith(
            f"recsys.components.{stage}."
        ):
            return declared
    for declared in everything:  # a setting another stage declares (re-ranking rules)
        if declared.name == argument:
            return declared
    return None


def logic_module(name: str) -> str:
    """The module of the stage's logic: ``<stage>/<stage>.py``, or for a stage of two
    components ``<stage>/<component without _stage>.py``."""
    stage = stage_of(STAGES[name])
    for module in (
        f"recsys.components.{stage}.{stage}",
        f"recsys.components.{stage}." + name.removesuffix(f"_{stage}"),
    ):
        if importlib.util.find_spec(module):
            return module.replace("recsys.", "", 1)
    raise ModuleNotFoundError(f"no logic module for component {name}")


def summary(name: str) -> str:
    """The first paragraph of the stage logic's docstring (read, not imported: the
    stages import TensorFlow and Beam)."""
    source = storage.read_text(importlib.util.find_spec(f"recsys.{logic_module(name)}").origin)
    doc = ast.get_docstring(ast.parse(source)) or ""
    return " ".join(doc.split("\n\n")[0].split())
