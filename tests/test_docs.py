"""The docs stay true to the code: docs/API.md names every public name and Client method,
docs/CLI.md is what the commands' --help says, and every option has its help."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import pytest

import shmwal
from shmwal.cli import OWN_PARSERS, build_parser, docs, own_parser

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
API = (ROOT / "docs" / "API.md").read_text()
CLI = (ROOT / "docs" / "CLI.md").read_text()


def public_methods(cls) -> list[str]:
    return [name for name, _ in inspect.getmembers(cls) if not name.startswith("_")]


@pytest.mark.parametrize("name", shmwal.__all__)
def test_api_md_names_every_public_name(name):
    assert re.search(rf"shmwal\.{name}\b", API), f"docs/API.md never mentions shmwal.{name}"


@pytest.mark.parametrize("method", public_methods(shmwal.Client))
def test_api_md_documents_every_client_method(method):
    assert re.search(rf"client\.{method}\b", API), f"docs/API.md never shows client.{method}"


@pytest.mark.parametrize("cls", [shmwal.Client, shmwal.Broker])
def test_every_public_method_has_a_docstring(cls):
    missing = [name for name in public_methods(cls) if not inspect.getdoc(getattr(cls, name))]
    assert missing == []


@pytest.mark.parametrize("cls, prefix", [(shmwal.Queue, "q"), (shmwal.AsyncClient, "client"),
                                         (shmwal.Broker, "broker")])
def test_api_md_shows_every_method_of_the_other_classes(cls, prefix):
    missing = [name for name in public_methods(cls) if not re.search(rf"{prefix}\.{name}\b", API)]
    assert missing == []


def test_init_points_to_the_docs_in_the_repository():
    assert "docs/API.md" in shmwal.__doc__ and "../shared" not in shmwal.__doc__


def test_cli_md_is_what_the_commands_help_says():
    assert CLI == docs.generate(), "docs/CLI.md is stale: python -m shmwal.cli.docs --write docs/CLI.md"


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = {"shmwal": parser}
    for name, child in sub.choices.items():
        found[f"shmwal {name}"] = own_parser(name) if name in OWN_PARSERS and own_parser(name) else child
    return found


@pytest.mark.parametrize("prog", list(all_parsers()))
def test_every_option_is_explained_in_help_and_in_cli_md(prog):
    parser = all_parsers()[prog]
    section = CLI.split(f"## `{prog}`\n", 1)[1].split("\n## ", 1)[0]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help, f"{prog}: {action.option_strings or action.dest} has no help"
        for option in action.option_strings:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", section), f"{prog} {option} not in CLI.md"
