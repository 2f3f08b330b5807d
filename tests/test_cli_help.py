"""Every command's ``--help`` prints its usage (argparse formats help texts with
``%``: a literal one in a help string used to make ``recsys generate --help``
raise)."""

import argparse

import pytest

from recsys.app.cli import build_parser


def command_paths(parser: argparse.ArgumentParser, path=()):
    """Every command and subcommand, as the words that name it."""
    yield path
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from command_paths(subparser, (*path, name))


COMMANDS = list(command_paths(build_parser()))


def test_every_command_is_found():
    names = {" ".join(path) for path in COMMANDS}
    assert {"generate", "run", "serve", "import", "schema infer"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "recsys")
def test_help_prints_the_usage(path, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*path, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: recsys {' '.join(path)}".rstrip())
