"""ccusage 20.0.24 from npm: the reference the ``usage`` processor is compared with.

``python -m tests.ccusage`` installs it (idempotently) into
``${SESSIONPIPE_CACHE:-~/.cache/sessionpipe}/ccusage-20.0.24/`` with ``npm install --prefix``;
``python -m tests.ccusage --write-pricing FILE`` regenerates the shipped price file from the price
snapshot embedded in ccusage's native binary (what ``--offline`` uses).

ccusage 20.x is a Rust binary shipped in a per-platform npm package. Its offline prices are
LiteLLM's ``model_prices_and_context_window.json`` reduced to compact keys (``i``, ``o``, ``cc``,
``cr``, ``ia``… ``fast``), deflated and embedded in the binary; :func:`embedded_litellm_snapshot`
finds and inflates it so the shipped file can be checked against the very prices ccusage uses.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

VERSION = "20.0.24"
PACKAGE = f"ccusage@{VERSION}"

#: Compact snapshot keys -> LiteLLM field names.
COMPACT_FIELDS = {
    "i": "input_cost_per_token",
    "o": "output_cost_per_token",
    "cc": "cache_creation_input_token_cost",
    "cr": "cache_read_input_token_cost",
    "ia": "input_cost_per_token_above_200k_tokens",
    "oa": "output_cost_per_token_above_200k_tokens",
    "cca": "cache_creation_input_token_cost_above_200k_tokens",
    "cra": "cache_read_input_token_cost_above_200k_tokens",
    "ctx": "max_input_tokens",
}


class CcusageUnavailable(RuntimeError):
    """ccusage could not be installed or run."""


def install_dir() -> Path:
    base = os.environ.get("SESSIONPIPE_CACHE") or str(Path("~/.cache/sessionpipe").expanduser())
    return Path(base) / f"ccusage-{VERSION}"


def _installed_version(prefix: Path) -> str | None:
    manifest = prefix / "node_modules" / "ccusage" / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def native_binary(prefix: Path | None = None) -> Path:
    """The platform binary the ``ccusage`` launcher runs (it holds the embedded price snapshot)."""
    prefix = prefix or install_dir()
    found = sorted((prefix / "node_modules" / "@ccusage").glob("ccusage-*/bin/ccusage"))
    if not found:
        raise CcusageUnavailable(f"no native ccusage binary under {prefix}/node_modules/@ccusage")
    return found[0]


def install() -> Path:
    """Install ccusage into the cache once; returns the ``ccusage`` launcher."""
    prefix = install_dir()
    launcher = prefix / "node_modules" / ".bin" / "ccusage"
    if _installed_version(prefix) == VERSION and launcher.exists():
        native_binary(prefix)
        return launcher
    npm = shutil.which("npm")
    if npm is None:
        raise CcusageUnavailable("npm is not installed; it is needed to install ccusage for the parity tests")
    prefix.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error", PACKAGE],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0 or _installed_version(prefix) != VERSION:
        raise CcusageUnavailable(f"npm install {PACKAGE} failed ({result.returncode}): {result.stderr.strip()}")
    native_binary(prefix)
    return launcher


def run(report: str, config_dir: Path, *extra: str) -> dict[str, Any]:
    """``ccusage claude REPORT --json --offline -z UTC`` over one Claude config directory."""
    launcher = install()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCUSAGE", "CLAUDE_"))}
    env.update({"CLAUDE_CONFIG_DIR": str(config_dir), "NO_COLOR": "1", "TZ": "UTC"})
    result = subprocess.run(
        [str(launcher), "claude", report, "--json", "--offline", "--timezone", "UTC", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise CcusageUnavailable(f"ccusage {report} exited {result.returncode}: {result.stderr.strip()}")
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def embedded_litellm_snapshot(binary: Path | None = None) -> dict[str, dict[str, float]]:
    """The compact LiteLLM price snapshot ccusage embeds for ``--offline``, inflated.

    It is a raw deflate stream placed near the message ccusage prints when inflating it fails; the
    first stream there that inflates to a JSON object of ``{"i": …, "o": …}`` entries is it.
    """
    data = (binary or native_binary()).read_bytes()
    anchor = data.find(b"inflate embedded pricing snapshot")
    if anchor < 0:
        raise CcusageUnavailable("this ccusage binary has no embedded pricing snapshot")
    start, stop = max(0, anchor - (1 << 20)), min(len(data), anchor + (1 << 20))
    for offset in range(start, stop):
        try:
            head = zlib.decompressobj(-15).decompress(data[offset : offset + 64], 8)
        except zlib.error:
            continue
        if not head.startswith(b'{"'):
            continue
        stream = zlib.decompressobj(-15)
        try:
            text = stream.decompress(data[offset : offset + (4 << 20)])
            snapshot = json.loads(text)
        except (zlib.error, ValueError):
            continue
        if (
            stream.eof
            and isinstance(snapshot, dict)
            and all(isinstance(v, dict) and "i" in v for v in snapshot.values())
        ):
            return snapshot
    raise CcusageUnavailable("no price snapshot found in the ccusage binary")


def embedded_fast_overrides(binary: Path | None = None) -> dict[str, dict[str, float]]:
    """ccusage's ``fast-multiplier-overrides.json`` (embedded as plain text)."""
    data = (binary or native_binary()).read_bytes()
    match = re.search(rb'\{\s*"exact":\s*\{[^{}]*\},\s*"normalized_prefix":\s*\{[^{}]*\}\s*\}', data)
    if match is None:
        raise CcusageUnavailable("no fast-multiplier overrides found in the ccusage binary")
    overrides: dict[str, dict[str, float]] = json.loads(match.group(0))
    return overrides


def claude_price_file(binary: Path | None = None) -> dict[str, Any]:
    """The shipped price file's content: ccusage's Claude entries in LiteLLM's own field names."""
    snapshot = embedded_litellm_snapshot(binary)
    models: dict[str, dict[str, Any]] = {}
    for name in sorted(snapshot):
        if "claude" not in name.lower():
            continue
        compact = snapshot[name]
        entry: dict[str, Any] = {COMPACT_FIELDS[k]: v for k, v in compact.items() if k in COMPACT_FIELDS}
        if "fast" in compact:
            entry["provider_specific_entry"] = {"fast": compact["fast"]}
        models[name] = entry
    overrides = embedded_fast_overrides(binary)
    return {
        "format": 1,
        "version": f"ccusage-{VERSION}",
        "source": (
            f"LiteLLM model_prices_and_context_window.json as embedded in ccusage {VERSION} (npm) for --offline; "
            "Claude entries only; regenerate with `python -m tests.ccusage --write-pricing FILE`"
        ),
        "fast_multiplier_overrides": {
            "exact": {k: v for k, v in overrides.get("exact", {}).items() if "claude" in k},
            "normalized_prefix": {k: v for k, v in overrides.get("normalized_prefix", {}).items() if "claude" in k},
        },
        "models": models,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.ccusage", description=__doc__.splitlines()[0])
    parser.add_argument("--write-pricing", type=Path, metavar="FILE", help="write the Claude price file here")
    args = parser.parse_args(argv)
    try:
        launcher = install()
    except CcusageUnavailable as error:
        print(f"tests.ccusage: {error}", file=sys.stderr)
        return 1
    print(f"ccusage {VERSION}: {launcher}")
    if args.write_pricing is not None:
        content = claude_price_file()
        args.write_pricing.write_text(json.dumps(content, indent=1, sort_keys=False) + "\n")
        print(f"wrote {len(content['models'])} Claude price entries to {args.write_pricing}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
