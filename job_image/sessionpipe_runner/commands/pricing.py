"""``sessionpipe pricing``: the prices the ``usage`` processor uses, and ``pricing import`` of a LiteLLM table.

The prices in use are the shipped ``pricing.json`` with the models of the file named by
``SESSIONPIPE_PRICING`` (or ``--pricing``) over it, as :mod:`sessionpipe_runner.processors.usage.pricing`
loads them for a run. ``pricing import FILE`` turns a LiteLLM ``model_prices_and_context_window.json``
(the table ccusage and LiteLLM use) into a price file of this project's format, offline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from sessionpipe_contract import ENV_PRICING, EXIT_OK
from sessionpipe_runner.commands.parsers import HelpFormatter
from sessionpipe_runner.processors.usage.pricing import (
    SHIPPED_PRICING,
    ModelPrice,
    PricingError,
    import_litellm,
    load_prices_with_sources,
)
from sessionpipe_runner.settings import UsageError

NAME = "pricing"
DESCRIPTION = (
    "List every model the usage processor can price, its rates in USD per million tokens and where "
    f"the price comes from: the shipped {SHIPPED_PRICING} or the file named by {ENV_PRICING} "
    "(whose models replace or add to the shipped ones)."
)
EXAMPLES = """examples:
  sessionpipe pricing
  sessionpipe pricing --json
  sessionpipe pricing import model_prices_and_context_window.json -o prices.json
  SESSIONPIPE_PRICING=prices.json sessionpipe run --processor usage"""
IMPORT_DESCRIPTION = (
    "Build a price file of sessionpipe's format from a LiteLLM model_prices_and_context_window.json "
    "(the table ccusage and LiteLLM use), without network access. Point SESSIONPIPE_PRICING (or the "
    "usage processor's 'pricing' setting) at the result to price new models or new rates."
)
IMPORT_EPILOG = """example:
  curl -LO https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json
  sessionpipe pricing import model_prices_and_context_window.json -o prices.json"""
PER_MILLION = 1_000_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pricing", type=Path, metavar="FILE", help=f"a price file over the shipped one (env {ENV_PRICING})"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    actions = p.add_subparsers(dest="action", metavar="ACTION", help="without one: list the prices in use")
    importing = actions.add_parser(
        "import",
        help="build a price file from a LiteLLM JSON file",
        description=IMPORT_DESCRIPTION,
        epilog=IMPORT_EPILOG,
        formatter_class=HelpFormatter,
    )
    importing.add_argument("file", type=Path, metavar="FILE", help="LiteLLM model_prices_and_context_window.json")
    importing.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write the price file here (default: standard output)"
    )
    importing.add_argument(
        "--match",
        default="claude",
        metavar="TEXT",
        help="keep the models whose name contains TEXT, ignoring case (default: claude; '' keeps all)",
    )
    importing.add_argument(
        "--version-label",
        metavar="TEXT",
        help="the table's version, recorded with every cost (default: the file's name and content hash)",
    )


def handle(args: argparse.Namespace) -> int:
    try:
        if args.action == "import":
            return import_file(args)
        return list_prices(args)
    except PricingError as error:
        raise UsageError(str(error)) from None


def list_prices(args: argparse.Namespace) -> int:
    """The models and rates in use, with where each comes from."""
    configured = args.pricing or os.environ.get(ENV_PRICING) or None
    table, sources = load_prices_with_sources(Path(configured) if configured else None)
    rows = [price_row(name, price, sources[name]) for name, price in sorted(table.models.items())]
    if args.json:
        print(json.dumps({"version": table.version, "models": rows}, indent=2))
        return EXIT_OK
    origin = f"{SHIPPED_PRICING}" + (f" + {configured} ({ENV_PRICING} or --pricing)" if configured else "")
    print(f"prices {table.version} from {origin}; USD per million tokens")
    print(f"{'model':<48} {'input':>8} {'output':>8} {'cache w':>8} {'cache r':>8} {'>200k':>5} {'fast':>5}  source")
    for row in rows:
        print(
            f"{row['model']:<48} {row['input']:>8.3f} {row['output']:>8.3f} {row['cacheWrite']:>8.3f} "
            f"{row['cacheRead']:>8.3f} {'yes' if row['tieredAbove200k'] else '':>5} "
            f"{row['fastMultiplier']:>5g}  {row['source']}"
        )
    return EXIT_OK


def price_row(name: str, price: ModelPrice, source: str) -> dict[str, Any]:
    """One model's rates per million tokens, for people and for ``--json``."""
    return {
        "model": name,
        "input": price.input * PER_MILLION,
        "output": price.output * PER_MILLION,
        "cacheWrite": price.cache_write * PER_MILLION,
        "cacheRead": price.cache_read * PER_MILLION,
        "tieredAbove200k": price.input_above_200k is not None or price.output_above_200k is not None,
        "fastMultiplier": price.fast_multiplier,
        "source": source,
    }


def import_file(args: argparse.Namespace) -> int:
    """Write the project's price file built from a LiteLLM table; say what was kept and left out."""
    source: Path = args.file
    raw = read_bytes(source)
    try:
        content = json.loads(raw)
    except ValueError as error:
        raise UsageError(f"price file {source} is not JSON: {error}") from None
    version = args.version_label or f"{source.stem}-{hashlib.sha256(raw).hexdigest()[:12]}"
    price_file, skipped = import_litellm(content, version, args.match)
    text = json.dumps(price_file, indent=1) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            args.output.write_text(text)
        except OSError as error:
            raise UsageError(f"cannot write {args.output}: {error.strerror}") from None
    left_out = ", ".join(f"{reason} {count}" for reason, count in sorted(skipped.items()))
    print(
        f"imported {len(price_file['models'])} model(s) as version {version}"
        + (f" into {args.output}" if args.output is not None else "")
        + (f"; left out: {left_out}" if left_out else ""),
        file=sys.stderr,
    )
    return EXIT_OK


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read price file {path}: {error.strerror}") from None
