"""KFP shim for train_retrieval."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def train_retrieval(
    transformed_train: Input[Dataset],
    transformed_eval: Input[Dataset],
    transform_graph: Input[Artifact],
    item_snapshot: Input[Dataset],
    schema_dir: str,
    epochs: int,
    embedding_dim: int,
    batch_size: int,
    learning_rate: float,
    temperature: float,
    top_k: int,
    uniform_negatives: int,
    positive_weighting: str,
    early_stopping_patience: int,
    ann_index: str,
    seed: int,
    warm_start: bool,
    pipeline_root: str,
    state_root: str,
    retrieval_model: Output[Model],
    query_model: Output[Model],
    item_embeddings: Output[Dataset],
    retrieval_training: Output[Metrics],
    checkpoint: Output[Model],
):
    import tensorflow_transform as tft

    from recsys.components.train_retrieval.config import RetrievalConfig
    from recsys.components.train_retrieval.train_retrieval import export, train
    from recsys.core import warm_start as warm
    from recsys.core.config import config_from
    from recsys.core.contracts import RETRIEVAL
    from recsys.core.features import load_registry
    from recsys.core.progress import log, stage

    with stage("train_retrieval"):
        config = config_from(RetrievalConfig, locals())
        registry = load_registry(schema_dir)
        version, start_from = (
            warm.warm_start_from(state_root or pipeline_root, RETRIEVAL)
            if warm_start
            else (None, "")
        )
        if warm_start and not start_from:
            log(
                "train_retrieval",
                "warm_start: no blessed model under the state root yet; training from scratch",
            )
        model, metrics = train(
            transformed_train.path,
            transformed_eval.path,
            transform_graph.path,
            config,
            registry,
            start_from,
        )
        if metrics["warm_start"]:
            metrics["warm_start_version"] = version
        warm.save(model, tft.TFTransformOutput(transform_graph.path), checkpoint.path)
        metrics.update(
            export(
                model,
                transform_graph.path,
                item_snapshot.path,
                config,
                retrieval_model.path,
                query_model.path,
                item_embeddings.path,
                transformed_eval.path,
                registry,
            )
        )
        for name, value in metrics.items():
            if isinstance(value, (int, float)):
                retrieval_training.log_metric(name, value)
        retrieval_model.metadata["top_k"] = metrics["top_k"]
        if ann_index:
            item_embeddings.metadata.update(ann_index=metrics["ann_index"], ann_kind=ann_index)
