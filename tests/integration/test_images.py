"""The two Dockerfiles: linted, then built for real with buildah and run.

The images are built by ``make images`` (:mod:`sessionpipe_kubetest.images`; the fixture builds them
when the store lacks them or their inputs changed) and run without a container engine: the image's
root filesystem, read-only, in a private mount namespace, as the image's user.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from sessionpipe_kubetest import images
from tests.runner_support import CORPUS, REPO, assert_same, run_summary, sessionpipe

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


@pytest.fixture(scope="module")
def built() -> dict[str, images.Built]:
    """Both images, built from today's tree (nothing is rebuilt when the inputs did not change)."""
    return {image.tag.split(":")[0].rsplit("-", 1)[-1]: image for image in images.build_all()}


def _in_image(
    tag: str,
    command: Sequence[str] | None = None,
    args: Sequence[str] | None = None,
    binds: Sequence[images.Bind] = (),
) -> subprocess.CompletedProcess[str]:
    run = images.ImageRun(image=tag, command=command, args=args, binds=binds)
    return images.run_in_image(run, timeout=300)


def test_an_unchanged_tree_rebuilds_no_image(built: dict[str, images.Built]) -> None:
    started = time.monotonic()
    again = images.build_all()
    assert [image.rebuilt for image in again] == [False, False]
    assert time.monotonic() - started < 10
    assert {image.tag for image in again} == {built["job"].tag, built["operator"].tag}


def test_job_image_install_gives_the_runner_with_its_processors_and_no_operator(
    built: dict[str, images.Built],
) -> None:
    tag = built["job"].tag
    listed = _in_image(tag, args=["processors"])
    assert listed.returncode == 0, listed.stderr
    assert {"usage", "verification"} <= {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    no_kopf = _in_image(tag, command=["python", "-c", "import kopf"])
    assert no_kopf.returncode != 0 and "ModuleNotFoundError" in no_kopf.stderr, no_kopf.stderr


def test_job_image_reads_usage_with_the_compiled_parser(built: dict[str, images.Built]) -> None:
    probe = (
        "import sessionpipe_native\n"
        "from sessionpipe_runner.processors.usage.native import compiled_reading\n"
        "assert compiled_reading() is sessionpipe_native\n"
        "print('native')"
    )
    result = _in_image(built["job"].tag, command=["python", "-c", probe])
    assert result.returncode == 0 and result.stdout.strip() == "native", result.stderr


def test_job_image_carries_no_build_tools_and_no_caches(built: dict[str, images.Built]) -> None:
    rootfs, _runtime = images.mounted_rootfs(built["job"].tag)
    tools = [f"{folder}/{tool}" for folder in ("usr/bin", "usr/local/bin") for tool in ("gcc", "cc", "make", "g++")]
    assert [tool for tool in tools if (rootfs / tool).exists()] == []
    assert not (rootfs / "root/.cache").exists(), "pip's cache was kept"
    assert not list((rootfs / "opt/venv").rglob("*.whl")), "a wheel was left in the image"
    lists = rootfs / "var/lib/apt/lists"
    assert not [path for path in lists.glob("*") if path.is_file() and path.name != "lock"], "apt lists were kept"
    assert not list((rootfs / "tmp").iterdir()), "the build left files in /tmp"


def test_operator_image_install_gives_a_working_operator_entry_point(built: dict[str, images.Built]) -> None:
    tag = built["operator"].tag
    helped = _in_image(tag, args=["--help"])
    assert helped.returncode == 0, helped.stderr
    assert "sessionpipe-operator" in helped.stdout
    no_duckdb_processors = _in_image(tag, command=["python", "-c", "import anthropic"])
    assert no_duckdb_processors.returncode != 0, "the operator image should not carry the LLM client"
    assert "ModuleNotFoundError" in no_duckdb_processors.stderr


def test_job_image_runs_as_its_non_root_user_on_a_read_only_root(built: dict[str, images.Built]) -> None:
    probe = "import os; print(os.getuid(), os.getgid()); open('/opt/venv/probe', 'w')"
    result = _in_image(built["job"].tag, command=["python", "-c", probe])
    assert result.stdout.split() == ["10001", "10001"]
    assert result.returncode != 0 and "Read-only file system" in result.stderr, result.stderr


def test_job_image_on_the_sniffly_corpus_gives_the_host_cli_totals(
    built: dict[str, images.Built], tmp_path: Path
) -> None:
    sessions = CORPUS / "sniffly"  # read in place, bound read-only
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)  # the image's user writes the database
    binds = [images.Bind(sessions, "/sessions"), images.Bind(out, "/out", read_only=False)]
    db = ["--db", "/out/sessionpipe.duckdb"]
    in_image = _in_image(
        built["job"].tag, args=["run", "--processor", "usage", "--sessions", "/sessions", *db, "--json"], binds=binds
    )
    on_host = sessionpipe(
        "run", "--processor", "usage", "--sessions", sessions, "--db", tmp_path / "host.duckdb", "--json"
    )
    image_summary, host_summary = run_summary(in_image), run_summary(on_host)
    for key in ("scanned", "processed", "items", "errors", "issues"):
        assert image_summary[key] == host_summary[key], key
    assert image_summary["processed"] > 0
    image_report = _in_image(built["job"].tag, args=["report", "usage", "--by", "day", "--json", *db], binds=binds)
    host_report = sessionpipe("report", "usage", "--by", "day", "--json", "--db", tmp_path / "host.duckdb")
    assert image_report.returncode == 0 and host_report.returncode == 0, image_report.stderr + host_report.stderr
    assert_same(json.loads(image_report.stdout), json.loads(host_report.stdout))
