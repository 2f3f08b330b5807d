"""The parameters of train_retrieval, declared once.

Each field's name, type, default and meaning: the pipeline's parameters and the
KFP shim's arguments derive from these fields (``recsys.core.config``). No heavy
imports here: the pipeline reads every stage's config to build its signature.
"""

from dataclasses import dataclass
from typing import ClassVar

from recsys.core.config import parameter
from recsys.core.contracts import CANDIDATE_SOURCES, SEQUENCE_ENCODERS, TWO_TOWER

POSITIVE_WEIGHTINGS = ("none", "watch_time")
ANN_INDEXES = ("", "faiss-hnsw")


@dataclass(frozen=True)
class RetrievalConfig:
    PREFIX: ClassVar[str] = "retrieval_"
    epochs: int = parameter(10, "at most: stops early when eval Recall@50 stops improving")
    embedding_dim: int = parameter(32, "size of both towers' output embeddings")
    batch_size: int = parameter(512, "clicks per batch (its in-batch negatives)")
    learning_rate: float = parameter(0.05, "Adagrad learning rate")
    temperature: float = parameter(0.1, "softmax temperature over the cosine scores")
    top_k: int = parameter(100, "items the exported retrieval model returns per request")
    uniform_negatives: int = parameter(
        256, "corpus items drawn uniformly per batch as extra negatives; 0 = in-batch only"
    )
    positive_weighting: str = parameter(
        "none", "none, or watch_time: weight clicks by 1 + log1p(watch seconds)"
    )
    early_stopping_patience: int = parameter(
        2, "epochs without a better eval Recall@50 before stopping; 0 = train all epochs"
    )
    ann_index: str = parameter("", "faiss-hnsw: also write an approximate index; empty: none")
    history_encoder: str = parameter(
        "mean",
        "how the query tower reads the engagement history: mean (a bag of items) or "
        "attention (ordered: positions and one self-attention layer)",
    )
    sources: str = parameter(
        ",".join(CANDIDATE_SOURCES),
        "candidate sources the funnel merges, comma-separated: two_tower (always), "
        "co_engagement, popular; each gives top_k candidates per request",
    )
    co_engagement_history: int = parameter(
        20, "newest history items each click pairs with, and each request looks up"
    )
    co_engagement_neighbors: int = parameter(50, "co-engaged items kept per item")
    sources_weight: float = parameter(
        0.25,
        "weight of the other sources' ranks in the fusion with the two-tower's (1 = equal; "
        "0.25 was chosen on validation splits, docs/benchmarks.md)",
    )
    seed: int = parameter(42, "random seed of both trainers (repeatable models)", shared=True)
    logq_correction: bool = parameter(
        True, "correct logits by sampling probability", pipeline=False
    )
    validation_k: int = parameter(
        50, "K of the validation recall that early stopping watches", pipeline=False
    )

    def __post_init__(self):
        if self.positive_weighting not in POSITIVE_WEIGHTINGS:
            raise ValueError(
                f"positive_weighting must be one of {POSITIVE_WEIGHTINGS}, "
                f"got {self.positive_weighting!r}"
            )
        if self.history_encoder not in SEQUENCE_ENCODERS:
            raise ValueError(
                f"history_encoder must be one of {SEQUENCE_ENCODERS}, got {self.history_encoder!r}"
            )
        if self.ann_index not in ANN_INDEXES:
            raise ValueError(
                f"ann_index must be one of {ANN_INDEXES} ('' = none), got {self.ann_index!r}"
            )
        unknown = sorted(set(self.source_list) - set(CANDIDATE_SOURCES))
        if unknown or TWO_TOWER not in self.source_list:
            raise ValueError(
                f"sources must name {TWO_TOWER} and only {list(CANDIDATE_SOURCES)}, "
                f"comma-separated; got {self.sources!r}"
            )
        for name in (
            "epochs",
            "batch_size",
            "top_k",
            "validation_k",
            "embedding_dim",
            "co_engagement_history",
            "co_engagement_neighbors",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.uniform_negatives < 0 or self.early_stopping_patience < 0:
            raise ValueError("uniform_negatives and early_stopping_patience must be >= 0")

    @property
    def source_list(self) -> list[str]:
        return [name.strip() for name in self.sources.split(",") if name.strip()]
