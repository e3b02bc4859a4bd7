"""The command line's conventions: ``--version``, help text and examples, metavars, one ``--processor``."""

from __future__ import annotations

import tomllib
from importlib import metadata

import pytest

from sessionpipe_runner.cli import main
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
