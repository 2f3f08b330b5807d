"""KFP shim for train_ranking."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def train_ranking(
    transformed_train: Input[Dataset],
    transformed_eval: Input[Dataset],
    transform_graph: Input[Artifact],
    epochs: int,
    embedding_dim: int,
    cross_layers: int,
    cross_projection_dim: int,
    batch_size: int,
    learning_rate: float,
    negative_sampling_rate: float,
    watch_loss_weight: float,
    score_watch_weight: float,
    seed: int,
    ranking_model: Output[Model],
    ranking_training: Output[Metrics],
):
    from components.train_ranking.train_ranking import RankingConfig, export, train
    from recsys.progress import stage

    with stage("train_ranking"):
        config = RankingConfig(embedding_dim=embedding_dim, cross_layers=cross_layers,
                               cross_projection_dim=cross_projection_dim, epochs=epochs,
                               batch_size=batch_size, learning_rate=learning_rate,
                               negative_sampling_rate=negative_sampling_rate,
                               watch_loss_weight=watch_loss_weight,
                               score_watch_weight=score_watch_weight, seed=seed)
        model, metrics = train(transformed_train.path, transformed_eval.path,
                               transform_graph.path, config)
        export(model, transform_graph.path, ranking_model.path)
        for name, value in metrics.items():
            ranking_training.log_metric(name, value)
        ranking_model.metadata.update(negative_sampling_rate=negative_sampling_rate,
                                      score_watch_weight=score_watch_weight)
