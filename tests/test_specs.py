"""The repository's specified layout and its checked-in specifications.

Top level: ``pipelines/`` (the DAG and the compiled ``pipeline.yaml``),
``components/<stage>/`` (each stage's source, ``component.yaml`` and README) and
``schemas/``, which the package ``recsys`` reaches through links, so import names
stay ``recsys.*``. The compiled files must be what ``make compile`` writes now.
"""

import dataclasses
import inspect
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import yaml
from kfp import compiler, components, dsl

from recsys.pipelines import specs
from recsys.pipelines.dag import STAGES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP_LEVEL = ("components", "pipelines", "schemas")


def test_checked_in_specifications_are_current():
    stale = specs.stale_specs(ROOT)
    assert not stale, f"stale or missing: {stale}; refresh them with `{specs.REFRESH}`"


def test_a_changed_or_missing_specification_is_found(tmp_path):
    written = specs.write_specs(str(tmp_path))
    assert len(written) == 1 + 2 * len(STAGES)  # the pipeline, a spec and README each
    assert specs.stale_specs(str(tmp_path)) == []
    edited = tmp_path / "components" / "train_ranking" / "component.yaml"
    edited.write_text(edited.read_text().replace("ranking_model", "ranker_model"))
    (tmp_path / "pipelines" / "pipeline.yaml").unlink()
    assert specs.stale_specs(str(tmp_path)) == [
        "pipelines/pipeline.yaml",
        "components/train_ranking/component.yaml",
    ]


def test_the_top_level_holds_the_code_and_the_package_links_to_it():
    for folder in TOP_LEVEL:
        assert os.path.isdir(os.path.join(ROOT, folder))
        assert not os.path.islink(os.path.join(ROOT, folder))
        link = os.path.join(ROOT, "recsys", folder)
        assert os.path.islink(link) and os.readlink(link) == os.path.join("..", folder)
    import recsys.components.train_ranking.train_ranking as stage

    assert os.path.realpath(stage.__file__) == os.path.join(
        ROOT, "components", "train_ranking", "train_ranking.py"
    )


@pytest.mark.parametrize("name", list(STAGES))
def test_each_component_spec_loads_with_the_shims_inputs(name):
    """What another team's pipeline loads from the file: the stage's inputs and
    outputs, named as the shim names them, in the project's image."""
    path = os.path.join(ROOT, specs.spec_folder(name), "component.yaml")
    loaded = components.load_component_from_file(path)
    shim = inspect.signature(STAGES[name]).parameters
    spec = loaded.component_spec
    declared = {**(spec.inputs or {}), **(spec.outputs or {})}
    assert set(declared) == set(shim)
    assert spec.implementation.container.image == specs.DEFAULT_IMAGE
    readme = open(os.path.join(ROOT, specs.spec_folder(name), "README.md")).read()
    assert all(f"`{argument}`" in readme for argument in shim)


def test_a_loaded_component_composes_into_another_pipeline(tmp_path):
    """A pipeline of one's own around the ingest and join components loaded from
    their files compiles, with the join fed by the ingest's outputs."""
    ingest = components.load_component_from_file(
        os.path.join(ROOT, "components", "ingest", "component.yaml")
    )
    join = components.load_component_from_file(
        os.path.join(ROOT, "components", "features", "join_features", "component.yaml")
    )
    ingest_arguments = {
        name: default
        for name, default in specs_defaults("ingest").items()
        if name in (ingest.component_spec.inputs or {})
    }

    @dsl.pipeline(name="their-pipeline")
    def their_pipeline(data_root: str):
        tables = ingest(**{**ingest_arguments, "data_root": data_root})
        join(
            **{name: tables.outputs[name] for name in join_inputs_from_ingest(join)},
            **{
                name: default
                for name, default in specs_defaults("join_features").items()
                if name in (join.component_spec.inputs or {})
            },
        )

    path = tmp_path / "their_pipeline.yaml"
    compiler.Compiler().compile(their_pipeline, str(path))
    compiled = yaml.safe_load(path.read_text())
    join_task = compiled["root"]["dag"]["tasks"]["join-features"]
    assert {
        argument["taskOutputArtifact"]["producerTask"]
        for argument in join_task["inputs"]["artifacts"].values()
    } == {"ingest"}


def specs_defaults(name: str) -> dict:
    """Each parameter of component ``name`` at its pipeline default ("" if required)."""
    values = {}
    for argument in inspect.signature(STAGES[name]).parameters:
        declared = specs.declared_as(name, argument)
        if declared is not None:
            missing = declared.default is dataclasses.MISSING
            values[argument] = "" if missing else declared.default
    return values


def join_inputs_from_ingest(join) -> list[str]:
    from recsys.core.contracts import JOIN_INPUTS

    assert set(JOIN_INPUTS) <= set(join.component_spec.inputs)
    return list(JOIN_INPUTS)


def test_the_wheel_holds_the_top_level_folders_under_recsys(tmp_path):
    """setuptools follows the links: the wheel has recsys/components, recsys/pipelines
    and recsys/schemas as real files, and nothing at its own top level but recsys."""
    source = tmp_path / "source"
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for relative in tracked:
        target = source / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        origin = os.path.join(ROOT, relative)
        if os.path.islink(origin):
            os.symlink(os.readlink(origin), target)
        elif os.path.isfile(origin):
            shutil.copy2(origin, target)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "wheel"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"recsys", "recsys_pipeline-0.1.0.dist-info"}
    for expected in (
        "recsys/components/train_ranking/train_ranking.py",
        "recsys/pipelines/dag.py",
        "recsys/schemas/features.yaml",
        "recsys/schemas/examples.schema.pbtxt",
    ):
        assert expected in names
