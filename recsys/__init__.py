"""recsys-pipeline: raw interaction logs to TF Serving recommenders, one KFP DAG.

The package is layered, each layer importing only those below it
(docs/design.md opens with the map; ``make test`` checks the rule):

    recsys.app          CLI, local and Kubeflow runs, simulation, data checks, generators
    recsys.pipelines    the DAG: parameters, wiring, KFP compilation, in-process runs
    recsys.components   one package per stage; no stage imports another
    recsys.serving      the online path: funnel, re-ranking, the serving root
    recsys.core         contracts, the feature registry, table and file I/O, model blocks

This file only prepares the process for TensorFlow; it imports nothing.
"""

import os
import warnings

# TensorFlow Recommenders 0.7.7 only works with Keras 2 (tf-keras); this must be
# set before TensorFlow is first imported anywhere in the process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (CUDA plugin registration on a CPU-only
# machine) is not actionable; Python exceptions still carry real errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Google client libraries warn about Python versions years ahead; not ours to fix.
os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
warnings.filterwarnings("ignore", category=FutureWarning)

__version__ = "0.1.0"
