"""The two Dockerfiles: linted, and their install steps replayed into fresh virtual environments.

There is no container engine here, so the images are not built; instead each Dockerfile's build
stage is replayed as written (its COPY sources into a clean context, its RUN steps with the image's
virtualenv path pointed at a temporary one) and the final stage's entry point is run.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runner_support import REPO

BIN = Path(sys.executable).parent
DOCKERFILES = ("Dockerfile.job", "Dockerfile.operator")


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "hadolint"), "--format", "json", str(path)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    result = _hadolint(REPO / dockerfile)
    assert result.returncode == 0, json.dumps(json.loads(result.stdout or "[]"), indent=2)


def test_hadolint_flags_what_our_dockerfiles_avoid(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN pip install sessionpipe\nUSER root\n")
    codes = {finding["code"] for finding in json.loads(_hadolint(careless).stdout)}
    assert {"DL3007", "DL3013", "DL3042", "DL3002"} <= codes


def _build_stage(dockerfile: Path) -> tuple[list[str], list[str]]:
    """(COPY sources, RUN commands) of the first stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)
    build = stages[1]
    sources: list[str] = []
    runs: list[str] = []
    for line in build.splitlines():
        if line.startswith("COPY "):
            sources += shlex.split(line)[1:-1]
        elif line.startswith("RUN "):
            runs.append(line[4:])
    return sources, runs


def _final_stage(dockerfile: Path) -> str:
    return re.split(r"^FROM ", dockerfile.read_text(), flags=re.MULTILINE)[-1]


def _replay(dockerfile: Path, work: Path) -> Path:
    """Run the build stage's steps in a clean context; return the virtualenv they installed into."""
    context = work / "context"
    context.mkdir()
    sources, runs = _build_stage(dockerfile)
    for source in sources:
        origin = REPO / source
        if origin.is_dir():
            shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(origin, context / source)
    venv = work / "venv"
    for command in runs:
        # The image's interpreter and virtualenv, pointed at this machine's; pip's cache is kept so
        # the test does not download every wheel again.
        command = command.replace("/opt/venv", str(venv)).replace(" --no-cache-dir", "")
        command = re.sub(r"^python ", f"{shlex.quote(sys.executable)} ", command)
        result = subprocess.run(command, shell=True, cwd=context, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    return venv


def _entrypoint(dockerfile: Path) -> list[str]:
    found = re.search(r"^ENTRYPOINT (\[.*\])$", _final_stage(dockerfile), flags=re.MULTILINE)
    assert found, f"{dockerfile.name} has no exec-form ENTRYPOINT"
    entry: list[str] = json.loads(found.group(1))
    return entry


def test_job_image_install_gives_the_runner_with_its_processors_and_no_operator(tmp_path: Path) -> None:
    dockerfile = REPO / "Dockerfile.job"
    venv = _replay(dockerfile, tmp_path)
    entry = _entrypoint(dockerfile)
    listed = subprocess.run(
        [str(venv / "bin" / entry[0]), "processors"], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert listed.returncode == 0, listed.stderr
    assert {"usage", "verification"} <= {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    no_kopf = subprocess.run([str(venv / "bin" / "python"), "-c", "import kopf"], capture_output=True, check=False)
    assert no_kopf.returncode != 0, "the job image should not carry the operator's dependencies"


def test_operator_image_install_gives_a_working_operator_entry_point(tmp_path: Path) -> None:
    dockerfile = REPO / "Dockerfile.operator"
    venv = _replay(dockerfile, tmp_path)
    entry = _entrypoint(dockerfile)
    helped = subprocess.run(
        [str(venv / "bin" / entry[0]), "--help"], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert helped.returncode == 0, helped.stderr
    assert "sessionpipe-operator" in helped.stdout
    no_duckdb_processors = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import anthropic"], capture_output=True, check=False
    )
    assert no_duckdb_processors.returncode != 0, "the operator image should not carry the LLM client"
