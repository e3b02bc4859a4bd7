"""The executor's pure rules: ``$(VAR)`` expansion, the mount prelude, the paths every pod keeps.

Fast and cluster-free; what the executor does on a real API server is checked by
``tests/cluster/test_controlplane.py`` at the repository root.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sessionpipe_kubetest.executor import Mount, expand, image_paths, prelude

#: The checkout, found from this file rather than from the package, so the test does not grade the
#: package against its own answer.
REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("value", "expanded"),
    [
        ("$(A)-$(B)", "one-two"),
        ("$$(A)", "$(A)"),
        ("$(MISSING) $(A)", "$(MISSING) one"),
        ("$(A", "$(A"),
        ("cost $5 $", "cost $5 $"),
        ("$$$(A)", "$one"),
    ],
)
def test_variable_references_expand_like_the_kubelet(value: str, expanded: str) -> None:
    """``$(NAME)`` expands, ``$$`` escapes, unknown or unclosed references stay as written."""
    assert expand(value, {"A": "one", "B": "two"}) == expanded


def test_prelude_mounts_parents_first_and_read_only_last(tmp_path: Path) -> None:
    """A volume mounted inside another is bound after it; read-only remounts follow every bind."""
    script = prelude(
        [
            Mount(tmp_path, "/data/in/deeper", False),
            Mount(tmp_path, "/data", True),
            Mount(tmp_path / "f", "/dev/x", False),
        ],
        "/data/wd",
    )
    lines = script.splitlines()
    binds = [line.split()[3] for line in lines if line.startswith("mount --bind")]
    assert binds == ["/data", "/dev/x", "/data/in/deeper"]
    # Every source is staged before the first target is mounted, so no mount can hide a source.
    staged = [i for i, line in enumerate(lines) if "mount --bind" in line and not line.startswith("mount")]
    assert len(staged) == 3 and max(staged) < min(i for i, line in enumerate(lines) if line.startswith("mount --bind"))
    assert max(i for i, line in enumerate(lines) if line.startswith("mount --bind")) < next(
        i for i, line in enumerate(lines) if "remount,bind,ro /data " in line
    )
    assert lines[-1] == 'exec "$@"'


def test_image_paths_cover_the_repository_and_the_interpreter() -> None:
    """Pods run this checkout's console scripts, so both must survive any volume mounted over them."""
    paths = image_paths()
    assert any(path == REPOSITORY or path in REPOSITORY.parents for path in paths)
    interpreter = Path(sys.executable).resolve()
    assert any(path in interpreter.parents for path in paths)
    assert all(not any(other in path.parents for other in paths) for path in paths)
