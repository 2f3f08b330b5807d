"""KFP shim for train_retrieval."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def train_retrieval(
    transformed_train: Input[Dataset],
    transformed_eval: Input[Dataset],
    transform_graph: Input[Artifact],
    item_snapshot: Input[Dataset],
    train_examples: Input[Dataset],
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
    history_encoder: str,
    sources: str,
    co_engagement_history: int,
    co_engagement_neighbors: int,
    sources_weight: float,
    seed: int,
    warm_start: bool,
    pipeline_root: str,
    state_root: str,
    image: str,
    shuffle_buffer: int,
    training_workers: int,
    batch_rows: int,
    retrieval_model: Output[Model],
    query_model: Output[Model],
    item_embeddings: Output[Dataset],
    retrieval_training: Output[Metrics],
    checkpoint: Output[Model],
    candidate_sources: Output[Dataset],
):
    import dataclasses
    import os

    from recsys.components.train_retrieval.candidate_sources import build_candidate_sources
    from recsys.components.train_retrieval.config import RetrievalConfig
    from recsys.core import distributed
    from recsys.core import warm_start as warm
    from recsys.core.config import config_from
    from recsys.core.contracts import RETRIEVAL
    from recsys.core.progress import log, stage
    from recsys.core.run_metrics import log_metrics

    with stage("train_retrieval"):
        config = config_from(RetrievalConfig, locals())
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
        inputs = {
            "transformed_train": transformed_train,
            "transformed_eval": transformed_eval,
            "transform_graph": transform_graph,
            "item_snapshot": item_snapshot,
        }
        outputs = {
            "retrieval_model": retrieval_model,
            "query_model": query_model,
            "item_embeddings": item_embeddings,
            "checkpoint": checkpoint,
        }
        job = {
            **{name: artifact.path for name, artifact in {**inputs, **outputs}.items()},
            "config": dataclasses.asdict(config),
            "schema_dir": schema_dir,
            "warm_start_dir": start_from,
            "shuffle_buffer": shuffle_buffer,
            "metrics_path": os.path.join(os.path.dirname(retrieval_training.path), "metrics.json"),
        }
        metrics = distributed.run_stage(
            "recsys.components.train_retrieval.train_retrieval:run",
            job,
            training_workers,
            "train_retrieval",
            distributed.TRAINING_TIMEOUT_SECONDS,
            distributed.Cluster(
                image,
                pipeline_root,
                {name: artifact.uri for name, artifact in inputs.items()},
                list(outputs),
            ),
        )
        # The other candidate sources: counts over the raw examples, in this process.
        metrics.update(
            build_candidate_sources(
                train_examples.path,
                item_snapshot.path,
                candidate_sources.path,
                config.source_list,
                config.top_k,
                config.co_engagement_history,
                config.co_engagement_neighbors,
                config.sources_weight,
                batch_rows,
            )
        )
        log("train_retrieval", f"candidate sources: {config.sources}")
        if metrics["warm_start"]:
            metrics["warm_start_version"] = version
        log_metrics(retrieval_training, metrics)
        retrieval_model.metadata["top_k"] = metrics["top_k"]
        if ann_index:
            item_embeddings.metadata.update(ann_index=metrics["ann_index"], ann_kind=ann_index)
