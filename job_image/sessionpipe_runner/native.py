"""The optional compiled module ``sessionpipe_native`` (``native/``), for the parts of a run that have
a compiled way and a Python reference: the usage parser, the file reading, the listing.

Each part has its own environment switch that selects the Python way (``python``), which the tests
and benchmarks compare the compiled way against; a part whose function the installed module lacks
(an older build) goes the Python way too.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

#: The value of a part's switch that makes it go the Python way.
PYTHON = "python"


@functools.cache
def _imported() -> tuple[ModuleType | None, str]:
    try:
        import sessionpipe_native
    except ImportError as error:
        return None, str(error)
    return sessionpipe_native, ""


def installed() -> ModuleType | None:
    """The compiled module, imported once; ``None`` if it is not installed."""
    return _imported()[0]


def why_missing() -> str:
    """Why the compiled module could not be imported ("" if it was)."""
    return _imported()[1]


def forget_import() -> None:
    """Import the module again at the next use (for tests that hide it)."""
    _imported.cache_clear()


def compiled(switch: str, function: str) -> ModuleType | None:
    """The compiled module for a part whose environment variable is ``switch`` and whose compiled
    way is ``function``; ``None`` when the part is to go the Python way."""
    if os.environ.get(switch) == PYTHON:
        return None
    module = installed()
    return module if module is not None and hasattr(module, function) else None
