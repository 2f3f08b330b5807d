import shutil

import pandas as pd
import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from recsys.app.local_run import load_config
from recsys.core.contracts import INGEST_OUTPUTS
from recsys.core.provenance import code_version
from recsys.pipelines.in_process import run_in_process
from recsys.pipelines.kfp_pipeline import compile_pipeline

STAGES = [
    "ingest",
    "join-features",
    "validate",
    "transform-features",
    "train-retrieval",
    "train-ranking",
    "infra-validate",
    "evaluate",
    "push",
]


def test_compiled_yaml_is_a_pipeline_spec_with_every_stage(tmp_path):
    path = compile_pipeline(str(tmp_path / "pipeline.yaml"), image="registry.example/recsys:1.2.3")
    with open(path) as handle:
        spec = json_format.ParseDict(yaml.safe_load(handle), pipeline_spec_pb2.PipelineSpec())
    tasks = spec.root.dag.tasks
    assert sorted(tasks) == sorted(STAGES)
    assert sorted(tasks["validate"].dependent_tasks) == ["ingest", "join-features"]
    # Nothing is transformed (so nothing trained or pushed) before validate passes.
    assert sorted(tasks["transform-features"].dependent_tasks) == ["join-features", "validate"]
    assert sorted(tasks["infra-validate"].dependent_tasks) == [
        "join-features",
        "train-ranking",
        "train-retrieval",
    ]
    # The blessing includes infra validation; push ships the warmup requests it replayed.
    # The eval impressions (their propensities) come from ingest.
    assert sorted(tasks["evaluate"].dependent_tasks) == [
        "infra-validate",
        "ingest",
        "join-features",
        "train-ranking",
        "train-retrieval",
    ]
    assert sorted(tasks["push"].dependent_tasks) == [
        "evaluate",
        "infra-validate",
        "ingest",
        "join-features",
        "train-ranking",
        "train-retrieval",
    ]
    # The image a run used is recorded with every pushed version.
    assert tasks["push"].inputs.parameters["image"].component_input_parameter == "image"
    # One image for every stage: set at compile time, overridable per run.
    image = spec.root.input_definitions.parameters["image"]
    assert image.default_value.string_value == "registry.example/recsys:1.2.3"
    executors = spec.deployment_spec["executors"]
    assert len(executors) == len(STAGES)
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == "{{$.inputs.parameters['pipelinechannel--image']}}"
        assert "pip install" not in " ".join(container["command"])  # install_kfp_package=False
        # The code version is on the command line, so KFP's cache key covers it.
        assert list(container["args"])[-2:] == ["--code-version", code_version()]
    for name, task in tasks.items():
        assert (
            task.inputs.parameters["pipelinechannel--image"].component_input_parameter == "image"
        ), name
    resources = {
        name.removeprefix("exec-"): executor["container"]["resources"]
        for name, executor in executors.items()
    }
    assert resources["train-retrieval"]["resourceCpuRequest"] == "2"
    assert resources["train-ranking"]["resourceMemoryRequest"] == "8G"
    assert resources["push"]["resourceMemoryLimit"] == "2G"
    assert all("resourceCpuRequest" in r and "resourceMemoryLimit" in r for r in resources.values())
    # Data stages (and the idempotent push) retry with backoff; nothing else does.
    retried = {name for name, task in tasks.items() if task.retry_policy.max_retry_count}
    assert retried == {"ingest", "join-features", "validate", "transform-features", "push"}
    assert tasks["ingest"].retry_policy.backoff_duration.seconds == 60
    # No cache where a task has side effects or reads what KFP cannot see.
    uncached = {name for name, task in tasks.items() if not task.caching_options.enable_cache}
    assert uncached == {
        "ingest",
        "validate",
        "train-retrieval",
        "train-ranking",
        "evaluate",
        "push",
    }
    parameters = spec.root.input_definitions.parameters
    assert "serving_root" in parameters and not parameters["serving_root"].is_optional
    assert parameters["lookback_days"].default_value.number_value == 14
    assert parameters["as_of"].default_value.string_value == ""
    assert parameters["warm_start"].default_value.bool_value is False

    pipeline_root = tasks["validate"].inputs.parameters["pipeline_root"]
    assert pipeline_root.runtime_value.constant.string_value == "{{$.pipeline_root}}"


def test_config_rejects_unknown_parameters(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("lookback_days: 7\nbeam_pipeline_args: ['--direct_num_workers=2']\n")
    assert load_config(str(config)) == {
        "lookback_days": 7,
        "beam_pipeline_args": '["--direct_num_workers=2"]',
    }
    config.write_text("lookback_dayz: 7\n")
    try:
        load_config(str(config))
    except ValueError as error:
        assert "lookback_dayz" in str(error) and "lookback_days" in str(error)
    else:
        raise AssertionError("an unknown key must be an error")


def test_in_process_run_uses_given_outputs_instead_of_running_the_stage(tmp_path):
    given = {output: str(tmp_path / "elsewhere" / output) for output in INGEST_OUTPUTS}
    run = run_in_process(
        str(tmp_path / "root"),
        {"data_root": str(tmp_path / "no_data"), "serving_root": ""},
        "ingest",
        given={"ingest": given},
    )
    assert {name: artifact.uri for name, artifact in run.tasks["ingest"].outputs.items()} == given
    assert list(run.tasks) == ["ingest"] and run.outputs == {}
    # The stage did not run: it would have failed on the missing data root.
    assert not (tmp_path / "root" / "ingest").exists()


def test_in_process_run_names_an_unknown_stage(tmp_path):
    for slice_ in (dict(stop_after="ingestt"), dict(given={"validat": {}})):
        try:
            run_in_process(str(tmp_path), {}, **slice_)
        except ValueError as error:
            assert "ingestt" in str(error) or "validat" in str(error)
            assert "join_features" in str(error)  # lists the stages
        else:
            raise AssertionError(f"{slice_} must be refused")


@pytest.mark.parametrize(
    "text, error",
    [
        ("lookback_days: 7\neval_days 3\n", r"not valid YAML at line 2, column 1"),
        ("- lookback_days: 7\n", r"expected `name: value` lines .* got a list"),
        ("lookback_days: seven\n", r"lookback_days: expected a whole number, got 'seven'"),
        ("lookback_days: 7.5\n", r"lookback_days: expected a whole number, got 7.5"),
        ("min_auc: high\n", r"min_auc: expected a number, got 'high'"),
        ("compare_with_champion: maybe\n", r"expected true or false, got 'maybe'"),
    ],
)
def test_config_errors_name_the_file_the_key_and_what_was_expected(text, error, tmp_path):
    config = tmp_path / "recsys.yaml"
    config.write_text(text)
    with pytest.raises(ValueError, match=error) as raised:
        load_config(str(config))
    assert str(config) in str(raised.value)


def test_config_values_take_their_parameter_types(tmp_path):
    config = tmp_path / "recsys.yaml"
    config.write_bytes(
        "\ufeffas_of: 2026-01-05\nmin_auc: 1\nlookback_days: '7'\nrerank: {k: 12}\n".encode()
    )
    assert load_config(str(config)) == {
        "as_of": "2026-01-05",  # YAML's date, as the text the parameter takes
        "min_auc": 1.0,
        "lookback_days": 7,
        "rerank": '{"k": 12}',  # a JSON-valued parameter may be written as YAML
    }


@pytest.mark.parametrize(
    "config, error",
    [
        ("max_reject_rate: 0.0\n", "the limit is max_reject_rate=0.0%"),
        ("as_of: 2020-01-01\n", "window train [2019-12-22T00:00:00+00:00"),
    ],
)
def test_recsys_check_reads_the_data_directorys_config(config, error, tiny_data, tmp_path, capsys):
    """`recsys check` takes every key of the data's recsys.yaml, as `recsys run` does."""
    from recsys.app import cli

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    events = pd.read_parquet(data / "impressions.parquet")
    events.loc[events.index[0], "watch_seconds"] = -1.0  # one row quarantined
    events.to_parquet(data / "impressions.parquet")
    (data / "recsys.yaml").write_text(config + "lookback_days: 10\neval_days: 3\n")
    assert cli.main(["check", "--data", str(data), "--workdir", str(tmp_path / "w")]) == 2
    assert error in capsys.readouterr().err
