"""``sessionpipe processors``: the installed processors, their versions and where they come from."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sessionpipe_contract import EXIT_OK
from sessionpipe_runner.processors import registry

NAME = "processors"
DESCRIPTION = (
    "List the installed processors (built-in and plugins registered under the sessionpipe.processors "
    "entry point), their versions and where they come from; a processor that fails to load says why."
)
EXAMPLES = """examples:
  sessionpipe processors
  sessionpipe processors --json"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def handle(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for name in registry.available():
        try:
            processor = registry.load(name)
            rows.append({"name": name, "version": processor.version, "source": registry.describe(name)})
        except registry.ProcessorLoadError as error:
            rows.append({"name": name, "version": None, "source": registry.describe(name), "error": str(error)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(
                f"{row['name']:<16} {row['version'] or 'BROKEN':<24} {row['source']}"
                + (f"  {row['error']}" if "error" in row else "")
            )
    return EXIT_OK
