"""The layers, one direction: core <- serving <- components/<stage> <- pipelines <- app.

The rule is import-linter's contracts in pyproject.toml (`make test` runs
`lint-imports` too). Here they are shown to hold on the code, and to break when an
import that breaks them is injected into a copy of the package; and serving is
shown to answer a request without loading the training stack."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")
TRAINING_STACK = (
    "tensorflow_transform",
    "tensorflow_recommenders",
    "apache_beam",
    "tensorflow_data_validation",
    "kfp",
)


def lint_imports(package_parent: str = ROOT) -> subprocess.CompletedProcess:
    """import-linter with the project's contracts, on the ``recsys`` under ``package_parent``."""
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", os.path.join(ROOT, "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=package_parent,
        env={**os.environ, "PYTHONPATH": package_parent, "COLUMNS": "250"},
        timeout=300,
    )


def test_the_contracts_hold():
    result = lint_imports()
    assert result.returncode == 0, result.stdout[-3000:]
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, injected, broken",
    [
        # Serving reaching into a trainer: an upward import, and the training stack.
        (
            "recsys/serving/funnel.py",
            "import recsys.components.train_ranking.train_ranking",
            ["Layers import only downwards", "Serving code never imports the training stack"],
        ),
        # One stage using another's internals.
        (
            "recsys/components/evaluate/metrics.py",
            "import recsys.components.train_retrieval.config",
            ["No stage imports another stage"],
        ),
        # The core importing the application.
        ("recsys/core/tables.py", "import recsys.app.local_run", ["Layers import only downwards"]),
        # A stage importing the pipeline that wires it.
        (
            "recsys/components/push/push.py",
            "import recsys.pipelines.dag",
            ["Layers import only downwards"],
        ),
        # Two core modules importing each other.
        (
            "recsys/core/derived.py",
            "import recsys.core.features",
            ["No import cycle between packages, or between modules of a package"],
        ),
    ],
)
def test_an_injected_import_breaks_its_contract(module, injected, broken, tmp_path):
    # A copy of the package with its links to the top-level folders followed, so
    # every module is a file of the copy.
    shutil.copytree(
        os.path.join(ROOT, "recsys"),
        tmp_path / "recsys",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n{injected}  # injected by the test\n")
    result = lint_imports(str(tmp_path))
    assert result.returncode != 0, result.stdout[-3000:]
    for name in broken:  # (an upward import can break other contracts too, indirectly)
        assert re.search(rf"^{re.escape(name)}.* BROKEN$", result.stdout, re.MULTILINE), (
            result.stdout[-3000:]
        )


def test_serving_a_request_loads_no_training_stack(stages):
    """A fresh process imports the serving code, then serves a request from the pushed
    models in process: TensorFlow is loaded then, to run them, but never
    tensorflow-transform, TensorFlow Recommenders, Beam, TFDV or KFP."""
    script = f"""
import json, sys
import recsys.serving
from recsys.serving import Funnel
imported = {{name: name in sys.modules for name in {TRAINING_STACK + ("tensorflow",)!r}}}
funnel = Funnel.from_serving_root({stages["serving_root"]!r})
page = funnel.recommend(funnel.features.user_index[0]).items
served = {{name: name in sys.modules for name in {TRAINING_STACK + ("tensorflow",)!r}}}
print(json.dumps({{"imported": imported, "served": served, "items": len(page)}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["items"] > 0
    assert not any(result["imported"].values()), result["imported"]  # not even TensorFlow
    assert result["served"]["tensorflow"] is True
    assert not any(result["served"][name] for name in TRAINING_STACK), result["served"]
