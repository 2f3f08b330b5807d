"""Which code trained and pushed a model: the package version and a hash of its source.

The hash covers every ``.py``, ``.pbtxt`` and ``.yaml`` file of the package (code,
curated schemas, the feature registry; ``components/``, ``pipelines/`` and
``schemas/`` are the package's through its links to the repository's top level),
but not the compiled specifications, which carry it; so it identifies the code in
an image as well as in a checkout. It goes into every push record and onto every task's
command line, where KFP's cache key sees it.
"""

import hashlib
import os

import recsys

PACKAGE_DIR = os.path.dirname(os.path.abspath(recsys.__file__))
# Written from the code, not code: the component and pipeline specifications.
COMPILED = ("component.yaml", "pipeline.yaml")


def code_version() -> str:
    digest = hashlib.sha256()
    for directory, _, names in sorted(os.walk(PACKAGE_DIR, followlinks=True)):
        hashed = (n for n in names if n.endswith((".py", ".pbtxt", ".yaml")) and n not in COMPILED)
        for name in sorted(hashed):
            path = os.path.join(directory, name)
            digest.update(os.path.relpath(path, PACKAGE_DIR).encode())
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return f"{recsys.__version__}+{digest.hexdigest()[:12]}"
