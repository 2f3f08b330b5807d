"""recsys-pipeline: raw interaction logs to TF Serving recommenders, one KFP DAG."""

import os

# TensorFlow Recommenders 0.7.7 only works with Keras 2 (tf-keras); this must be
# set before TensorFlow is first imported anywhere in the process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
