"""The parameters of push, declared once.

Each field's name, type, default and meaning: the pipeline's parameters and the
KFP shim's arguments derive from these fields (``recsys.core.config``). No heavy
imports here: the pipeline reads every stage's config to build its signature.
"""

from dataclasses import dataclass

from recsys.core.config import parameter


@dataclass(frozen=True)
class PushConfig:
    keep_versions: int = parameter(
        5, "pushed versions kept in the serving root (served ones always)"
    )
    tf_serving_root: str = parameter(
        "",
        "the serving root as TF Serving sees it (e.g. a container mount); empty: the "
        "serving root itself",
    )

    def __post_init__(self):
        if self.keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1, got {self.keep_versions}")
