"""The serving layer: the online path from a request to a page, and the serving root.

``funnel`` (retrieval -> ranking -> re-ranking for one request), ``backends`` (the
models in process or behind TF Serving's gRPC and REST APIs), ``snapshot`` (the
features pushed with the models), ``rerank`` (the product's rules, also used by
evaluation), ``serving_log`` (what was served, for the skew check) and
``serving_root`` (the layout TF Serving reads; push writes it through this module).

It imports only ``recsys.core`` and, when a model is loaded, TensorFlow: never the
training stack (tensorflow-transform, TensorFlow Recommenders, Beam).
"""

from recsys.serving.backends import GrpcBackend, InProcessBackend, RestBackend
from recsys.serving.funnel import Context, Funnel, Recommendations
from recsys.serving.rerank import RerankConfig
from recsys.serving.serving_log import ServingLog

__all__ = [
    "Context",
    "Funnel",
    "GrpcBackend",
    "InProcessBackend",
    "Recommendations",
    "RerankConfig",
    "RestBackend",
    "ServingLog",
]
