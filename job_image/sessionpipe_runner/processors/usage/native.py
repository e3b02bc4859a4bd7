"""Which reading of usage lines a run uses: the compiled parser, or the Python reading it is tested against.

The compiled parser is the optional package ``sessionpipe-native`` (``native/`` in the repository:
Rust, built and installed by ``make .venv/.installed`` and into the job image by ``make images``).
It does for one file's bytes what :func:`.parse.parse_usage_lines` and the row building of
:meth:`UsageProcessor.process_appended` do, about 4x faster; ``tests/unit/test_native_parse.py``
holds it to the Python reading row for row and issue for issue, over real and fuzzed lines.

The Python reading stays the reference: ``SESSIONPIPE_USAGE_READING=python`` selects it (the tests
and benchmarks compare the two that way), and a run uses it when the package is not installed (a
plain ``pip install sessionpipe`` on a machine without its wheel), with one warning in the log.
"""

from __future__ import annotations

import functools
import logging
import os
from types import ModuleType

from sessionpipe_runner import native

#: ``python`` makes the usage processor use the Python reading even when the compiled one is installed.
ENV_USAGE_READING = "SESSIONPIPE_USAGE_READING"
PYTHON_READING = native.PYTHON

log = logging.getLogger(__name__)


def compiled_reading() -> ModuleType | None:
    """The compiled parser's module, or ``None`` when the Python reading is to be used."""
    module = native.compiled(ENV_USAGE_READING, "usage_rows")
    if module is None and os.environ.get(ENV_USAGE_READING) != PYTHON_READING:
        _missing()
    return module


@functools.cache
def _missing() -> None:
    why = native.why_missing() or "it has no usage_rows"
    log.warning("usage: the compiled parser (sessionpipe-native) is not installed (%s); reading in Python", why)
