"""The fast entry-point reading of :mod:`sessionpipe_runner.processors.registry` against
``importlib.metadata``, the reference: same processors, same values, or "not sure" (``None``)."""

from __future__ import annotations

import sys
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from sessionpipe_runner.processors import registry
from sessionpipe_runner.processors.registry import ENTRY_POINT_GROUP

GROUP = f"[{ENTRY_POINT_GROUP}]\n"


def reference(path: list[str]) -> dict[str, str]:
    """What the registry found before: ``importlib.metadata`` on ``path``."""
    saved = sys.path[:]
    sys.path[:] = path
    try:
        return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    finally:
        sys.path[:] = saved


def dist(root: Path, folder: str, entry_points_txt: str | None) -> None:
    """A distribution's metadata folder under ``root``, with this ``entry_points.txt`` (``None``: none)."""
    (root / folder).mkdir(parents=True)
    name = folder.partition("-")[0]
    (root / folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1\n")
    if entry_points_txt is not None:
        (root / folder / "entry_points.txt").write_text(entry_points_txt)


def test_the_installed_processors_are_found_as_importlib_metadata_finds_them() -> None:
    assert registry.registered() == reference(sys.path)
    assert {"usage", "verification"} <= set(registry.registered() or ())


def test_a_crowded_path_is_read_as_importlib_metadata_reads_it(tmp_path: Path) -> None:
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    dist(first, "alpha-1.0.dist-info", f"# comment\n{GROUP}one = pkg.one:Make\n two=pkg.two : Make . inner [extra]\n")
    dist(first, "Beta_Plugin-2.0.dist-info", f"[console_scripts]\nbeta = beta:main\n\n{GROUP}one = beta:Override\n")
    dist(first, "no_entry_points-1.0.dist-info", None)
    dist(first, "old_style-0.1.egg-info", f"{GROUP}legacy = old_style:Legacy\n")
    (first / "directory_in_the_way-1.0.dist-info" / "entry_points.txt").mkdir(parents=True)
    dist(second, "alpha-9.9.dist-info", f"{GROUP}shadowed = alpha:NotSeen\n")  # same name: the first wins
    dist(second, "beta.plugin-3.0.dist-info", f"{GROUP}shadowed_too = beta:NotSeen\n")  # normalises alike
    dist(
        second,
        "gamma-1.0.dist-info",
        f"[ {ENTRY_POINT_GROUP} ]\nspaced = gamma:NotOurGroup\n{GROUP}three = gamma:Three\n",
    )
    dist(third, "delta-1.0.dist-info", f"{GROUP}three = delta:LaterWins\n")
    path = [str(first), str(tmp_path / "missing"), str(second), str(third)]
    expected = reference(path)
    assert expected["three"] == "delta:LaterWins" and "shadowed" not in expected  # the cases are real
    assert registry.registered(path) == expected


@pytest.mark.parametrize(
    "case",
    ["zip", "egg", "upper_case_suffix", "line_without_equals", "comment_with_semicolon"],
)
def test_what_the_fast_reading_might_read_otherwise_is_left_to_importlib_metadata(tmp_path: Path, case: str) -> None:
    site = tmp_path / "site"
    dist(site, "alpha-1.0.dist-info", f"{GROUP}one = alpha:One\n")
    path = [str(site)]
    if case == "zip":
        archive = tmp_path / "plugins.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.writestr("zipped-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: zipped\nVersion: 1\n")
            zipped.writestr("zipped-1.0.dist-info/entry_points.txt", f"{GROUP}two = zipped:Two\n")
        path.append(str(archive))
        assert reference(path) == {"one": "alpha:One", "two": "zipped:Two"}
    elif case == "egg":
        egg = tmp_path / "eggy-1.0.egg"
        (egg / "EGG-INFO").mkdir(parents=True)
        (egg / "EGG-INFO" / "entry_points.txt").write_text(f"{GROUP}two = eggy:Two\n")
        path.append(str(egg))
    elif case == "upper_case_suffix":
        dist(site, "shouty-1.0.DIST-INFO", f"{GROUP}two = shouty:Two\n")
    else:
        line = "broken" if case == "line_without_equals" else "; a comment importlib.metadata does not skip"
        dist(site, "broken-1.0.dist-info", f"[other]\n{line}\n")
        with pytest.raises((ValueError, TypeError)):
            reference(path)
    assert registry.registered(path) is None


def test_a_finder_that_adds_distributions_is_left_to_importlib_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    class Finder:
        @staticmethod
        def find_distributions(*args: object, **kwargs: object) -> list[object]:
            return []

    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, Finder()])
    assert registry.registered() is None


def test_a_run_loads_its_processor_without_importing_importlib_metadata() -> None:
    import subprocess

    code = (
        "import sys; from sessionpipe_runner.processors import registry; "
        "processor = registry.load('usage'); "
        "print(processor.name, 'importlib.metadata' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["usage", "False"]
