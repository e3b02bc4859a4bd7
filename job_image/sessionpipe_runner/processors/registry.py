"""Finding processors through the ``sessionpipe.processors`` entry-point group.

Loading one processor by name, as every run does, reads the installed distributions' entry points
directly (:func:`registered`): ``importlib.metadata`` costs a run 15-40 ms to import and 8 ms to
search, a tenth of an incremental run. Its answer is the reference (``tests/unit/test_registry.py``
holds the two together), and it is used wherever the fast reading is not sure to agree with it, and
to list or describe processors.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sessionpipe_runner.processors.base import Processor

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

ENTRY_POINT_GROUP = "sessionpipe.processors"

#: ``importlib.metadata.EntryPoint.pattern``: ``module[:attr.attr][ [extras]]``.
_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")
_METADATA_DIR = (".dist-info", ".egg-info")


class ProcessorNotFound(LookupError):
    """No installed processor has that name."""


class ProcessorLoadError(RuntimeError):
    """A processor is registered but cannot be loaded."""


class _Unsure(Exception):
    """The path holds something :func:`registered` does not read as ``importlib.metadata`` does."""


def _entry_points() -> dict[str, EntryPoint]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def registered(path: list[str] | None = None) -> dict[str, str] | None:
    """The group's entry points, name -> ``module:attr``, as ``importlib.metadata`` finds them on
    ``path`` (default ``sys.path``); ``None`` when the path holds a zip file, an egg, or an
    entry-point file this reading might read otherwise, or a meta-path finder adds distributions.

    The rules are ``importlib.metadata``'s (Python 3.11): each path entry's ``*.dist-info`` and
    ``*.egg-info`` folders, in listing order grouped by normalised name; the first distribution of a
    name wins; a later distribution's entry point of the same name wins over an earlier one's.
    """
    if any(_finds_distributions(finder) for finder in sys.meta_path):
        return None
    try:
        return _registered(sys.path if path is None else path)
    except _Unsure:
        return None


def _finds_distributions(finder: object) -> bool:
    """Whether a meta-path finder other than the standard one contributes distributions."""
    return finder is not importlib.machinery.PathFinder and hasattr(finder, "find_distributions")


def _registered(path: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    distributions: set[str] = set()
    for entry in path:
        for name, folder in _metadata_folders(entry or "."):
            if name not in distributions:
                distributions.add(name)
                found.update(_group_entries(folder))
    return found


def _metadata_folders(root: str) -> list[tuple[str, Path]]:
    """``(normalised name, folder)`` of a path entry's distributions, in ``importlib.metadata``'s order."""
    if root.lower().endswith(".egg"):
        raise _Unsure(root)
    try:
        children = list(Path(root).iterdir())
    except NotADirectoryError:
        raise _Unsure(root) from None  # a zip file
    except OSError:
        return []
    by_name: dict[str, list[Path]] = {}
    for child in children:
        low = child.name.lower()
        if low.endswith(_METADATA_DIR):
            if child.suffix not in _METADATA_DIR:  # `_name_from_stem` is case-sensitive, the lookup not
                raise _Unsure(child)
            by_name.setdefault(_normalise(low.rpartition(".")[0].partition("-")[0]), []).append(child)
    return [(name, child) for name, group in by_name.items() for child in group]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _group_entries(folder: Path) -> dict[str, str]:
    try:
        text = (folder / "entry_points.txt").read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return {}
    except (OSError, UnicodeDecodeError):
        raise _Unsure(folder) from None
    entries: dict[str, str] = {}
    section: str | None = None
    for line in map(str.strip, text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
        elif section is not None:
            name, equals, value = line.partition("=")
            if not equals:
                raise _Unsure(folder)  # importlib.metadata raises on it, in any section: let it
            if section == ENTRY_POINT_GROUP:
                entries[name.strip()] = value.strip()
    return entries


def _load_value(value: str) -> Any:
    """What ``EntryPoint(value=value).load()`` returns."""
    match = _VALUE.match(value)
    if match is None:
        raise ValueError(f"not an entry point: {value!r}")
    module = importlib.import_module(match.group("module"))
    attrs = filter(None, (match.group("attr") or "").split("."))
    return functools.reduce(getattr, attrs, module)


def available() -> list[str]:
    """Names of the installed processors, sorted."""
    return sorted(_entry_points())


def describe(name: str) -> str:
    """Where a processor comes from (``module:attr`` and its distribution)."""
    ep = _entry_points()[name]
    dist = ep.dist.name if ep.dist is not None else "?"
    return f"{ep.value} ({dist})"


def load(name: str) -> Processor:
    """An instance of the named processor."""
    values = registered()
    if values is None:
        values = {ep_name: ep.value for ep_name, ep in _entry_points().items()}
    value = values.get(name)
    if value is None:
        names = ", ".join(available()) or "none"
        raise ProcessorNotFound(f"no processor named {name!r} is installed (installed: {names})")
    try:
        factory = _load_value(value)
        processor = factory()
    except Exception as error:
        raise ProcessorLoadError(f"processor {name!r} ({value}) failed to load: {error}") from error
    if not isinstance(processor, Processor):
        raise ProcessorLoadError(f"processor {name!r} ({value}) is not a sessionpipe Processor")
    if processor.name != name:
        raise ProcessorLoadError(f"entry point {name!r} loads a processor that calls itself {processor.name!r}")
    return processor
