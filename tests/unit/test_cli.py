"""The command line's conventions: ``--version``, help text and examples, metavars, one ``--processor``."""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from sessionpipe_runner.cli import build_parser, main
from sessionpipe_runner.commands.report import processor_as_report
from tests.runner_support import REPO


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"sessionpipe {metadata.version('sessionpipe')}"


@pytest.mark.parametrize("pyproject", ["pyproject.toml", "kubetest/pyproject.toml"])
def test_pyproject_declares_its_license_as_an_spdx_string_so_setuptools_prints_no_deprecation_banner(
    pyproject: str,
) -> None:
    project = tomllib.loads((REPO / pyproject).read_text())
    assert project["project"]["license"] == "Apache-2.0"  # a {text = …} table is deprecated
    assert "setuptools>=77" in project["build-system"]["requires"]  # the first that reads SPDX strings


def parsers(
    parser: argparse.ArgumentParser, path: str = "sessionpipe"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the command line, the reports' and ``pricing import`` included, by its command."""
    parser.format_help()  # a command completes its arguments (the installed reports) when asked for help
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{path} {name}")


def test_every_command_has_a_description_and_an_example() -> None:
    found = dict(parsers(build_parser()))
    assert {"sessionpipe pricing import", "sessionpipe report usage", "sessionpipe run"} <= set(found)
    for path, parser in found.items():
        assert parser.description, f"{path} --help has no description"
        assert parser.epilog and "example" in parser.epilog, f"{path} --help has no example"
        assert path in parser.format_help().split("example", 1)[1], f"{path} --help shows no example of itself"


def test_every_flag_and_argument_has_help_text() -> None:
    for path, parser in parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, f"{path} {action.option_strings or action.dest}"


def test_paths_show_as_dir_or_file_as_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    for path, parser in parsers(build_parser()):
        for action in parser._actions:
            if action.type is Path or getattr(action.type, "__name__", "") == "Path":
                assert action.metavar in {"DIR", "FILE"}, f"{path} {action.option_strings}: {action.metavar}"
    for flag in ("--db FILE", "--sessions DIR", "--termination-log FILE"):
        assert f"`{flag}`" in readme


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "usage", "--by", "month"],
        ["report", "--processor", "usage", "--by", "month"],
        ["report", "--by", "month", "--processor=usage"],
    ],
)
def test_report_takes_the_processor_as_run_and_reset_do_or_as_its_first_word(argv: list[str]) -> None:
    args = build_parser().parse_args(processor_as_report(argv))
    assert (args.report, args.by) == ("usage", "month")


def test_run_and_reset_name_the_processor_with_the_same_option() -> None:
    for command in ("run", "reset"):
        parser = dict(parsers(build_parser()))[f"sessionpipe {command}"]
        assert any(action.option_strings == ["--processor"] for action in parser._actions), command
