"""A models.config that cannot be read: every operator command says what is wrong and
how to recover, never a traceback, and rollback is the recovery."""

import os

import pytest

from recsys.app.cli import main as recsys_main
from recsys.core.contracts import MODELS, MODELS_CONFIG
from recsys.serving import serving_root as root_


@pytest.fixture()
def broken_root(tmp_path):
    """Two committed versions of both models (directories and records, as push leaves
    them), then a models.config cut off mid-write by something other than push."""
    root = str(tmp_path / "serving")
    for version in (1, 2):
        for model in MODELS:
            os.makedirs(os.path.join(root, model, str(version)))
        root_.write_record(root, version, {"content_hash": f"h{version}", "blessing": {}})
    root_.write_config(root, {model: 2 for model in MODELS})
    with open(os.path.join(root, MODELS_CONFIG), "r+") as handle:
        handle.truncate(40)
    return root


@pytest.mark.parametrize(
    "command",
    [
        ["versions"],
        ["recommend", "--user", "42"],
        ["rollback", "--model", "ranking"],
    ],
)
def test_commands_name_the_broken_file_and_the_fix(broken_root, command, capsys):
    assert recsys_main([command[0], "--serving-root", broken_root, *command[1:]]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert f"{os.path.join(broken_root, MODELS_CONFIG)} is not a TF Serving model config" in error
    assert f"recsys rollback --serving-root {broken_root} --model <name> --to 2" in error


def test_rollback_to_a_kept_version_rewrites_the_config(broken_root, capsys):
    command = ["rollback", "--serving-root", broken_root, "--model", "ranking", "--to", "1"]
    assert recsys_main(command) == 0
    assert "was unreadable; rewritten to serve version 1 of ranking, retrieval" in (
        capsys.readouterr().out
    )
    assert root_.served_versions(broken_root) == {"ranking": 1, "retrieval": 1}
    event = root_.events(broken_root)[-1]
    assert event["kind"] == "rollback" and event["recovered_models"] == ["ranking", "retrieval"]
    assert event["reason"] == "models.config was unreadable"


def test_recovery_needs_a_complete_version(broken_root):
    with pytest.raises(root_.ServingRootError, match="no complete version 7"):
        root_.rollback(broken_root, "ranking", to=7)
