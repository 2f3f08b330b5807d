"""KFP shim for train_ranking."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def train_ranking(
    transformed_train: Input[Dataset],
    transformed_eval: Input[Dataset],
    transform_graph: Input[Artifact],
    schema_dir: str,
    epochs: int,
    embedding_dim: int,
    cross_layers: int,
    cross_projection_dim: int,
    batch_size: int,
    learning_rate: float,
    id_dropout: float,
    negative_sampling_rate: float,
    watch_loss_weight: float,
    score_watch_weight: float,
    seed: int,
    warm_start: bool,
    pipeline_root: str,
    state_root: str,
    ranking_model: Output[Model],
    ranking_training: Output[Metrics],
    checkpoint: Output[Model],
):
    import tensorflow_transform as tft

    from recsys.components.train_ranking.config import RankingConfig
    from recsys.components.train_ranking.train_ranking import export, train
    from recsys.core import warm_start as warm
    from recsys.core.config import config_from
    from recsys.core.contracts import RANKING
    from recsys.core.features import load_registry
    from recsys.core.progress import log, stage

    with stage("train_ranking"):
        config = config_from(RankingConfig, locals())
        registry = load_registry(schema_dir)
        version, start_from = (
            warm.warm_start_from(state_root or pipeline_root, RANKING) if warm_start else (None, "")
        )
        if warm_start and not start_from:
            log(
                "train_ranking",
                "warm_start: no blessed model under the state root yet; training from scratch",
            )
        model, metrics = train(
            transformed_train.path,
            transformed_eval.path,
            transform_graph.path,
            config,
            registry,
            warm_start_dir=start_from,
        )
        if metrics["warm_start"]:
            metrics["warm_start_version"] = version
        warm.save(model, tft.TFTransformOutput(transform_graph.path), checkpoint.path)
        export(model, transform_graph.path, ranking_model.path, registry)
        for name, value in metrics.items():
            ranking_training.log_metric(name, value)
        ranking_model.metadata.update(
            negative_sampling_rate=negative_sampling_rate, score_watch_weight=score_watch_weight
        )
