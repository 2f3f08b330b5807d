"""Parameters declared once: every stage's config is the source of each parameter's
name, type and default; the KFP shims, the wiring, the compiled pipeline and the
parameter reference must agree with it, and a disagreement is found here."""

import dataclasses
import inspect
import os
import typing

import pytest
import yaml
from google.protobuf import json_format
from kfp.dsl.types import type_annotations
from kfp.pipeline_spec import pipeline_spec_pb2

from recsys.core.config import parameter, parameters
from recsys.pipelines import parameters as pipeline_parameters_module
from recsys.pipelines.dag import STAGES, wire
from recsys.pipelines.in_process import InProcessStages, Task
from recsys.pipelines.kfp_pipeline import compile_pipeline
from recsys.pipelines.parameters import (
    CONFIGS,
    RunConfig,
    parameters_markdown,
    pipeline_parameters,
    with_defaults,
)
from recsys.serving.rerank import RerankConfig, parse_rerank_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shim_parameters(stage: str) -> dict[str, type]:
    """A stage shim's parameters (not its artifacts): name -> type."""
    hints = typing.get_type_hints(STAGES[stage], include_extras=True)
    return {
        name: hints[name]
        for name in inspect.signature(STAGES[stage]).parameters
        if not type_annotations.is_Input_Output_artifact_annotation(hints[name])
    }


class RecordingStages(InProcessStages):
    """The wiring's calls, recorded instead of run: stage -> arguments."""

    def __init__(self):
        super().__init__("/nonexistent")
        self.calls = {}

    def _run(self, name, arguments):
        self.calls[name] = arguments
        hints = typing.get_type_hints(STAGES[name], include_extras=True)
        return Task(
            name,
            {
                output: object()
                for output, annotation in hints.items()
                if type_annotations.is_artifact_wrapped_in_Output(annotation)
            },
        )


@pytest.fixture(scope="module")
def wired():
    stages = RecordingStages()
    wire(stages, with_defaults({"data_root": "/data", "serving_root": "/serving"}))
    return stages.calls


def test_the_wiring_passes_each_shim_exactly_its_parameters_typed(wired):
    assert list(wired) == list(STAGES)
    for stage, arguments in wired.items():
        hints = typing.get_type_hints(STAGES[stage], include_extras=True)
        inputs = [
            name
            for name in inspect.signature(STAGES[stage]).parameters
            if not type_annotations.is_artifact_wrapped_in_Output(hints[name])
        ]
        assert sorted(arguments) == sorted(inputs), stage  # every input, nothing else
        expected = shim_parameters(stage)
        for name, kind in expected.items():
            assert isinstance(arguments[name], kind), (stage, name, arguments[name])


def test_each_shim_parameter_is_declared_once_with_its_type(wired):
    """A shim's parameter is a field of its stage's config or a run-level parameter (or
    the pipeline root, which KFP fills in), of the declared type."""
    declared = {p.field: p for config in CONFIGS for p in parameters(config)}
    for stage in STAGES:
        for name, kind in shim_parameters(stage).items():
            if name == "pipeline_root":
                continue
            assert name in declared, f"{stage}.{name} is declared in no config"
            assert kind is declared[name].type, (stage, name, kind, declared[name].type)


def test_every_stage_config_field_reaches_its_shim(wired):
    for config in CONFIGS[1:]:
        fields = {p.field for p in parameters(config)}
        takers = [stage for stage in STAGES if fields <= set(shim_parameters(stage))]
        assert takers, f"no stage takes all of {config.__name__}'s parameters"


def test_the_compiled_pipeline_has_the_declared_names_types_and_defaults(tmp_path):
    path = compile_pipeline(str(tmp_path / "pipeline.yaml"), image="registry.example/r:1")
    with open(path) as handle:
        spec = json_format.ParseDict(yaml.safe_load(handle), pipeline_spec_pb2.PipelineSpec())
    compiled = spec.root.input_definitions.parameters
    declared = pipeline_parameters("registry.example/r:1")
    assert set(compiled) == set(declared)
    kinds = {str: "STRING", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", bool: "BOOLEAN"}
    for name, p in declared.items():
        parameter_spec = compiled[name]
        assert (
            pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(parameter_spec.parameter_type)
            == kinds[p.type]
        ), name
        if p.default is dataclasses.MISSING:
            assert not parameter_spec.is_optional, name
            continue
        value = json_format.MessageToDict(parameter_spec.default_value)
        assert value == p.default or float(value) == p.default, (name, value, p.default)
        assert parameter_spec.description == p.help, name


def test_the_rerank_default_is_the_rules_defaults():
    assert parse_rerank_config(pipeline_parameters()["rerank"].default) == RerankConfig()


def test_a_parameter_declared_twice_differently_is_an_error(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Clashing:
        seed: int = parameter(7, "another seed", shared=True)

    monkeypatch.setattr(pipeline_parameters_module, "CONFIGS", (*CONFIGS, Clashing))
    with pytest.raises(
        TypeError,
        match="'seed' is declared as int = 42 by RetrievalConfig and as int = 7 by Clashing",
    ):
        pipeline_parameters_module.pipeline_parameters()


def test_arguments_are_checked_by_name():
    with pytest.raises(ValueError, match=r"unknown pipeline parameter\(s\) \['lookback_dayz'\]"):
        with_defaults({"data_root": "d", "serving_root": "s", "lookback_dayz": 3})
    with pytest.raises(ValueError, match=r"\['serving_root'\] are required"):
        with_defaults({"data_root": "d"})
    assert (
        with_defaults({"data_root": "d", "serving_root": "s"}).of(RunConfig)["warm_start"] is False
    )


def test_the_parameter_reference_is_current():
    with open(os.path.join(ROOT, "docs", "parameters.md")) as handle:
        assert handle.read() == parameters_markdown(), (
            "docs/parameters.md is stale: regenerate it with "
            "`recsys parameters > docs/parameters.md`"
        )


def test_the_readme_example_config_uses_real_parameters():
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    block = readme.split("## Configuration", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    example = yaml.safe_load(block)
    declared = pipeline_parameters()
    assert example and set(example) <= set(declared), set(example) - set(declared)
    for name, value in example.items():
        kind = declared[name].type
        assert (
            isinstance(value, kind)
            or (kind is float and isinstance(value, int))
            or (name == "beam_pipeline_args" and isinstance(value, list))
        ), (name, value)


def test_a_value_a_stage_refuses_stops_the_run_before_it_starts(tmp_path, capsys):
    """`max_regression: 1.0` is refused by evaluate's config; `recsys run` says so
    at once, naming the parameter, instead of failing at evaluate minutes in."""
    from recsys.app.cli import main as recsys_main

    config = tmp_path / "config.yaml"
    config.write_text("max_regression: 1.0\n")
    data = tmp_path / "data"
    data.mkdir()
    workdir = tmp_path / "work"
    command = ["run", "--data", str(data), "--workdir", str(workdir), "--config", str(config)]
    assert recsys_main(command) == 2
    error = capsys.readouterr().err
    assert "pipeline parameters: max_regression is a fraction in [0, 1), got 1.0" in error
    assert not workdir.exists()  # nothing compiled, nothing run
