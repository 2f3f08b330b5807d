"""recsys-pipeline: raw interaction logs to TF Serving recommenders, one KFP DAG."""

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


def code_version() -> str:
    """The package version and a hash of its source (code, schemas): identifies the code
    a model was trained and pushed with, in an image as well as in a checkout."""
    import hashlib

    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for package in ("recsys", "components", "pipelines", "schemas"):
        for directory, _, names in sorted(os.walk(os.path.join(top, package))):
            for name in sorted(n for n in names if n.endswith((".py", ".pbtxt"))):
                path = os.path.join(directory, name)
                digest.update(os.path.relpath(path, top).encode())
                with open(path, "rb") as handle:
                    digest.update(handle.read())
    return f"{__version__}+{digest.hexdigest()[:12]}"
