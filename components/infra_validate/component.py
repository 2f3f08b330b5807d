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
    from recsys.components.infra_validate.config import Budgets
    from recsys.components.infra_validate.infra_validate import infra_validate as run
    from recsys.core.config import config_from
    from recsys.core.features import load_registry
    from recsys.core.progress import log, stage

    with stage("infra_validate"):
        budgets = config_from(Budgets, locals())
        result = run(
            {"retrieval": retrieval_model.path, "ranking": ranking_model.path},
            eval_examples.path,
            warmup_requests.path,
            infra_validation.path,
            budgets,
            load_registry(schema_dir),
        )
        infra_validation.metadata["passed"] = result["passed"]
        for name, model in result["models"].items():
            infra_validation.metadata[name] = model["summary"]
            log(
                "infra_validate",
                f"{name}: {'passed' if model['passed'] else 'FAILED'}: {model['summary']}",
            )
