import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipelines.recsys_pipeline import compile_pipeline
from recsys.local_run import load_config

STAGES = ["ingest", "join-features", "validate", "transform-features", "train-retrieval",
          "train-ranking", "infra-validate", "evaluate", "push"]


def test_compiled_yaml_is_a_pipeline_spec_with_every_stage(tmp_path):
    path = compile_pipeline(str(tmp_path / "pipeline.yaml"), image="registry.example/recsys:1.2.3")
    with open(path) as handle:
        spec = json_format.ParseDict(yaml.safe_load(handle), pipeline_spec_pb2.PipelineSpec())
    tasks = spec.root.dag.tasks
    assert sorted(tasks) == sorted(STAGES)
    assert sorted(tasks["validate"].dependent_tasks) == ["ingest", "join-features"]
    # Nothing is transformed (so nothing trained or pushed) before validate passes.
    assert sorted(tasks["transform-features"].dependent_tasks) == ["join-features", "validate"]
    assert sorted(tasks["infra-validate"].dependent_tasks) == ["join-features", "train-ranking",
                                                               "train-retrieval"]
    # The blessing includes infra validation; push ships the warmup requests it replayed.
    assert sorted(tasks["evaluate"].dependent_tasks) == ["infra-validate", "join-features",
                                                         "train-ranking", "train-retrieval"]
    assert sorted(tasks["push"].dependent_tasks) == ["evaluate", "infra-validate", "ingest",
                                                     "join-features", "train-ranking",
                                                     "train-retrieval"]
    image = tasks["push"].inputs.parameters["image"].runtime_value.constant.string_value
    assert image == "registry.example/recsys:1.2.3"  # recorded with every pushed version
    executors = spec.deployment_spec["executors"]
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == "registry.example/recsys:1.2.3"
        assert "pip install" not in " ".join(container["command"])  # install_kfp_package=False
    assert tasks["push"].caching_options.enable_cache is False
    assert tasks["ingest"].caching_options.enable_cache is False
    assert "serving_root" in spec.root.input_definitions.parameters
    pipeline_root = tasks["validate"].inputs.parameters["pipeline_root"]
    assert pipeline_root.runtime_value.constant.string_value == "{{$.pipeline_root}}"


def test_config_rejects_unknown_parameters(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("lookback_days: 7\nbeam_pipeline_args: ['--direct_num_workers=2']\n")
    assert load_config(str(config)) == {"lookback_days": 7,
                                        "beam_pipeline_args": '["--direct_num_workers=2"]'}
    config.write_text("lookback_dayz: 7\n")
    try:
        load_config(str(config))
    except ValueError as error:
        assert "lookback_dayz" in str(error) and "lookback_days" in str(error)
    else:
        raise AssertionError("an unknown key must be an error")
