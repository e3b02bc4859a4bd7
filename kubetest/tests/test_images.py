"""The pure parts of running an image: the process's argv, its user, the build's input hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionpipe_kubetest.images import ImageError, ImageRuntime, inputs_hash, resolve_in_root, resolve_user

RUNTIME = ImageRuntime(user="10001:10001", env={}, entrypoint=["sessionpipe"], cmd=["run"], working_dir="/tmp")


def test_no_command_and_no_args_run_the_entrypoint_with_the_image_cmd() -> None:
    assert RUNTIME.argv(None, None) == ["sessionpipe", "run"]


def test_args_replace_the_image_cmd_and_keep_the_entrypoint() -> None:
    assert RUNTIME.argv(None, ["processors"]) == ["sessionpipe", "processors"]
    assert RUNTIME.argv(None, []) == ["sessionpipe"]


def test_a_command_replaces_the_entrypoint_and_drops_the_image_cmd() -> None:
    assert RUNTIME.argv(["python", "-V"], None) == ["python", "-V"]
    assert RUNTIME.argv(["python"], ["-c", "pass"]) == ["python", "-c", "pass"]


def test_the_runtime_is_read_from_the_oci_config() -> None:
    config = {"User": "10001:10001", "Env": ["PATH=/opt/venv/bin:/usr/bin", "A=b=c"], "Entrypoint": ["x"]}
    runtime = ImageRuntime.of(config)
    assert runtime.env == {"PATH": "/opt/venv/bin:/usr/bin", "A": "b=c"}
    assert (runtime.entrypoint, runtime.cmd, runtime.working_dir) == (["x"], [], "/")
    assert ImageRuntime.of({}).user == "0"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nsessionpipe:x:10001:10002::/tmp:/bin/false\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nsessionpipe:x:10002:\n")
    return tmp_path


def test_a_user_is_resolved_in_the_image_own_passwd_and_group(rootfs: Path) -> None:
    assert resolve_user(rootfs, "10001:10001") == (10001, 10001)
    assert resolve_user(rootfs, "10001") == (10001, 10002)
    assert resolve_user(rootfs, "sessionpipe") == (10001, 10002)
    assert resolve_user(rootfs, "sessionpipe:root") == (10001, 0)
    assert resolve_user(rootfs, "4242") == (4242, 0)


def test_an_unknown_user_or_group_is_an_error_not_root(rootfs: Path) -> None:
    with pytest.raises(ImageError, match="nobody"):
        resolve_user(rootfs, "nobody")
    with pytest.raises(ImageError, match="staff"):
        resolve_user(rootfs, "10001:staff")


def test_the_inputs_hash_follows_the_sources_and_ignores_bytecode(tmp_path: Path) -> None:
    for name in ("Dockerfile.job", "pyproject.toml", "constraints.txt", "README.md"):
        (tmp_path / name).write_text(name)
    for folder in ("common", "job_image", "operator"):
        (tmp_path / folder / "__pycache__").mkdir(parents=True)
        (tmp_path / folder / "module.py").write_text("x = 1\n")
    args = {"PYTHON_IMAGE": "base"}
    first = inputs_hash(tmp_path, "Dockerfile.job", args)
    (tmp_path / "job_image" / "__pycache__" / "module.cpython-311.pyc").write_bytes(b"\0")
    assert inputs_hash(tmp_path, "Dockerfile.job", args) == first
    assert inputs_hash(tmp_path, "Dockerfile.job", {"PYTHON_IMAGE": "other"}) != first
    (tmp_path / "job_image" / "module.py").write_text("x = 2\n")
    assert inputs_hash(tmp_path, "Dockerfile.job", args) != first


def test_the_job_images_inputs_include_the_native_sources_but_not_their_build(tmp_path: Path) -> None:
    for name in ("Dockerfile.job", "Dockerfile.operator", "pyproject.toml", "constraints.txt", "README.md"):
        (tmp_path / name).write_text(name)
    (tmp_path / "native" / "src").mkdir(parents=True)
    (tmp_path / "native" / "target").mkdir()
    (tmp_path / "native" / "src" / "lib.rs").write_text("fn a() {}\n")
    args = {"PYTHON_IMAGE": "base"}
    job, operator = inputs_hash(tmp_path, "Dockerfile.job", args), inputs_hash(tmp_path, "Dockerfile.operator", args)
    (tmp_path / "native" / "target" / "libx.so").write_bytes(b"\0")
    assert inputs_hash(tmp_path, "Dockerfile.job", args) == job
    (tmp_path / "native" / "src" / "lib.rs").write_text("fn b() {}\n")
    assert inputs_hash(tmp_path, "Dockerfile.job", args) != job
    assert inputs_hash(tmp_path, "Dockerfile.operator", args) == operator


def test_mount_points_follow_the_image_symlinks_inside_the_image(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to("/run")  # absolute: Debian's /var/run
    (tmp_path / "opt").symlink_to("var/../usr")
    (tmp_path / "loop").symlink_to("loop")
    assert resolve_in_root(tmp_path, "/var/run/secrets/token") == "/run/secrets/token"
    assert resolve_in_root(tmp_path, "/opt/venv") == "/usr/venv"
    assert resolve_in_root(tmp_path, "/../../etc") == "/etc"
    with pytest.raises(ImageError, match="symbolic links"):
        resolve_in_root(tmp_path, "/loop/x")
