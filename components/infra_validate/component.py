"""KFP shim for infra_validate."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output


def infra_validate(
    retrieval_model: Input[Model],
    ranking_model: Input[Model],
    eval_examples: Input[Dataset],
    schema_dir: str,
    max_load_seconds: float,
    max_request_ms: float,
    infra_validation: Output[Artifact],
    warmup_requests: Output[Artifact],
):
    from components.infra_validate.infra_validate import Budgets, infra_validate as run
    from recsys.progress import log, stage

    with stage("infra_validate"):
        result = run({"retrieval": retrieval_model.path, "ranking": ranking_model.path},
                     eval_examples.path, warmup_requests.path, infra_validation.path,
                     Budgets(max_load_seconds=max_load_seconds, max_request_ms=max_request_ms),
                     schema_dir)
        infra_validation.metadata["passed"] = result["passed"]
        for name, model in result["models"].items():
            infra_validation.metadata[name] = model["summary"]
            log("infra_validate", f"{name}: {'passed' if model['passed'] else 'FAILED'}: "
                                  f"{model['summary']}")
