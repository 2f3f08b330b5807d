"""The parameters of train_ranking, declared once.

Each field's name, type, default and meaning: the pipeline's parameters and the
KFP shim's arguments derive from these fields (``recsys.core.config``). No heavy
imports here: the pipeline reads every stage's config to build its signature.
"""

from dataclasses import dataclass
from typing import ClassVar

from recsys.core.config import parameter


@dataclass(frozen=True)
class RankingConfig:
    PREFIX: ClassVar[str] = "ranking_"
    epochs: int = parameter(3, "training epochs")
    embedding_dim: int = parameter(16, "embedding size of the ids and categories")
    dot_interactions: bool = parameter(
        True,
        "add the pairwise dot products of the ranker's embeddings (user, item, history, "
        "categories) to its inputs, as DLRM does; false: the cross layers alone",
    )
    cross_layers: int = parameter(2, "DCN-v2 cross layers")
    cross_projection_dim: int = parameter(
        0, "0: full-rank cross matrices; > 0: low-rank with this inner size"
    )
    batch_size: int = parameter(1024, "examples per batch")
    learning_rate: float = parameter(0.002, "Adam learning rate")
    id_dropout: float = parameter(
        0.1,
        "share of training rows whose user/item ids train the unknown-id row "
        "(new users and items); 0 = off",
    )
    negative_sampling_rate: float = parameter(
        1.0, "share of non-clicks kept in training; probabilities are recalibrated"
    )
    watch_loss_weight: float = parameter(1.0, "weight of the watch-time head; 0 = click only")
    score_watch_weight: float = parameter(
        1.0, "score = P(click) * (1 + this * expected watched minutes)"
    )
    consumption_negatives: int = parameter(
        3,
        "with watched_from: impressions (every logged impression is something the user "
        "chose, e.g. a rating): per training row, this many rows of the same batch with "
        "another row's item train a consumption head, and the score becomes "
        "P(consumed) * P(click | consumed) * (1 + watch); 0 = off. Ignored for logs of "
        "shown impressions, where the click head already models P(click | shown)",
    )
    seed: int = parameter(42, "random seed of both trainers (repeatable models)", shared=True)
    deep_units: tuple[int, ...] = parameter(
        (128, 64), "units of the MLP after the cross layers", pipeline=False
    )

    def __post_init__(self):
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout is a share of rows in [0, 1), got {self.id_dropout}")
        if not 0.0 < self.negative_sampling_rate <= 1.0:
            raise ValueError(
                "negative_sampling_rate is the share of non-clicked examples "
                f"kept, in (0, 1]; got {self.negative_sampling_rate}"
            )
        for name in (
            "watch_loss_weight",
            "score_watch_weight",
            "cross_layers",
            "cross_projection_dim",
            "consumption_negatives",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("epochs", "batch_size", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
