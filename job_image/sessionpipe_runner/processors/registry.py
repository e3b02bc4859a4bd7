"""Finding processors through the ``sessionpipe.processors`` entry-point group."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from sessionpipe_runner.processors.base import Processor

ENTRY_POINT_GROUP = "sessionpipe.processors"


class ProcessorNotFound(LookupError):
    """No installed processor has that name."""


class ProcessorLoadError(RuntimeError):
    """A processor is registered but cannot be loaded."""


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


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
    found = _entry_points().get(name)
    if found is None:
        names = ", ".join(available()) or "none"
        raise ProcessorNotFound(f"no processor named {name!r} is installed (installed: {names})")
    try:
        factory = found.load()
        processor = factory()
    except Exception as error:
        raise ProcessorLoadError(f"processor {name!r} ({found.value}) failed to load: {error}") from error
    if not isinstance(processor, Processor):
        raise ProcessorLoadError(f"processor {name!r} ({found.value}) is not a sessionpipe Processor")
    if processor.name != name:
        raise ProcessorLoadError(f"entry point {name!r} loads a processor that calls itself {processor.name!r}")
    return processor
