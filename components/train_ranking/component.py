"""KFP shim for train_ranking."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def train_ranking(
    transformed_train: Input[Dataset],
    transformed_eval: Input[Dataset],
    transform_graph: Input[Artifact],
    schema_dir: str,
    epochs: int,
    embedding_dim: int,
    dot_interactions: bool,
    cross_layers: int,
    cross_projection_dim: int,
    batch_size: int,
    learning_rate: float,
    id_dropout: float,
    negative_sampling_rate: float,
    watch_loss_weight: float,
    score_watch_weight: float,
    consumption_negatives: int,
    watched_from: str,
    seed: int,
    warm_start: bool,
    pipeline_root: str,
    state_root: str,
    image: str,
    shuffle_buffer: int,
    training_workers: int,
    ranking_model: Output[Model],
    ranking_training: Output[Metrics],
    checkpoint: Output[Model],
):
    import dataclasses
    import os

    from recsys.components.train_ranking.config import RankingConfig
    from recsys.core import distributed
    from recsys.core import warm_start as warm
    from recsys.core.config import config_from
    from recsys.core.contracts import RANKING
    from recsys.core.progress import log, stage
    from recsys.core.run_metrics import log_metrics

    with stage("train_ranking"):
        config = config_from(RankingConfig, locals())
        version, start_from = (
            warm.warm_start_from(state_root or pipeline_root, RANKING) if warm_start else (None, "")
        )
        if warm_start and not start_from:
            log(
                "train_ranking",
                "warm_start: no blessed model under the state root yet; training from scratch",
            )
        inputs = {
            "transformed_train": transformed_train,
            "transformed_eval": transformed_eval,
            "transform_graph": transform_graph,
        }
        outputs = {"ranking_model": ranking_model, "checkpoint": checkpoint}
        job = {
            **{name: artifact.path for name, artifact in {**inputs, **outputs}.items()},
            "config": dataclasses.asdict(config),
            "schema_dir": schema_dir,
            "warm_start_dir": start_from,
            "shuffle_buffer": shuffle_buffer,
            "consumed_impressions": watched_from == "impressions",
            "metrics_path": os.path.join(os.path.dirname(ranking_training.path), "metrics.json"),
        }
        metrics = distributed.run_stage(
            "recsys.components.train_ranking.train_ranking:run",
            job,
            training_workers,
            "train_ranking",
            distributed.TRAINING_TIMEOUT_SECONDS,
            distributed.Cluster(
                image,
                pipeline_root,
                {name: artifact.uri for name, artifact in inputs.items()},
                list(outputs),
            ),
        )
        if metrics["warm_start"]:
            metrics["warm_start_version"] = version
        log_metrics(ranking_training, metrics)
        ranking_model.metadata.update(
            negative_sampling_rate=negative_sampling_rate, score_watch_weight=score_watch_weight
        )
