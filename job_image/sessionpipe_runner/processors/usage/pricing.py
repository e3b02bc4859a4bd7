"""Token prices and the cost of one API call, computed the way ccusage 20.0.24 computes it.

The shipped ``pricing.json`` holds the Claude entries of the LiteLLM price table that ccusage
20.0.24 embeds for ``--offline`` (in LiteLLM's own field names), and ccusage's fast-mode multiplier
overrides. A user's file (``SESSIONPIPE_PRICING`` or the processor setting ``pricing``) is read in
the same format or as a plain LiteLLM ``model_prices_and_context_window.json``; its entries replace
or add to the shipped ones, model by model.

Cost of one call (ccusage ``calculateCostFromPricing``): input, output, 5-minute cache write,
1-hour cache write (2x the input rate) and cache read, each at its per-token rate; a bucket above
200k tokens pays the ``*_above_200k_tokens`` rate for the part above 200k where the table has one;
times the model's fast multiplier when the call's ``speed`` is ``fast``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHIPPED_PRICING = "pricing.json"
LONG_CONTEXT_THRESHOLD = 200_000
CACHE_WRITE_INPUT_MULTIPLIER = 1.25  # LiteLLM entries without a cache-write rate
CACHE_READ_INPUT_MULTIPLIER = 0.1  # LiteLLM entries without a cache-read rate
CACHE_WRITE_1H_INPUT_MULTIPLIER = 2.0
DATE_SUFFIX = re.compile(r"-\d{8}$")
PRICE_FILE_FORMAT = 1
#: The LiteLLM fields a price entry keeps (the ones :func:`model_price` reads, and the context size).
LITELLM_PRICE_FIELDS = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_creation_input_token_cost",
    "cache_read_input_token_cost",
    "input_cost_per_token_above_200k_tokens",
    "output_cost_per_token_above_200k_tokens",
    "cache_creation_input_token_cost_above_200k_tokens",
    "cache_read_input_token_cost_above_200k_tokens",
    "max_input_tokens",
)


class PricingError(ValueError):
    """A price file cannot be read or has the wrong shape."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Per-token rates of one model, in USD."""

    input: float
    output: float
    cache_write: float
    cache_read: float
    input_above_200k: float | None = None
    output_above_200k: float | None = None
    cache_write_above_200k: float | None = None
    cache_read_above_200k: float | None = None
    fast_multiplier: float = 1.0


@dataclass(frozen=True)
class PriceTable:
    """Prices by model name, and the version that is recorded with every computed cost."""

    version: str
    models: Mapping[str, ModelPrice]
    _cache: dict[str, ModelPrice | None] = field(default_factory=dict, compare=False, repr=False)

    def find(self, model: str) -> ModelPrice | None:
        """The price of ``model``, or ``None`` when the table has none (the call then costs 0).

        Exact names first; then the name without a provider path (``anthropic/claude-…``); then
        the name without a date suffix; then the shortest table name containing it (Bedrock and
        Vertex spellings such as ``anthropic.claude-…-v2:0``), a subset of ccusage's fuzzy match.
        """
        if model in self._cache:
            return self._cache[model]
        found = self._lookup(model)
        self._cache[model] = found
        return found

    def _lookup(self, model: str) -> ModelPrice | None:
        if not model:
            return None
        candidates = [model, model.rsplit("/", 1)[-1]]
        candidates.append(DATE_SUFFIX.sub("", candidates[-1]))
        for name in candidates:
            if name in self.models:
                return self.models[name]
        needle = candidates[1].lower()
        containing = sorted((k for k in self.models if needle in k.lower()), key=lambda k: (len(k), k))
        return self.models[containing[0]] if containing else None


def _rate(entry: Mapping[str, Any], key: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PricingError(f"{key} must be a number, not {value!r}")
    return float(value)


def _fast_override(model: str, overrides: Mapping[str, Mapping[str, float]]) -> float | None:
    """ccusage's fast-multiplier override for a model: an exact name, or a family prefix."""
    exact = overrides.get("exact", {})
    if model in exact:
        return float(exact[model])
    normalized = model.replace(".", "-").replace("@", "-")
    for part in re.split(r"[/:]", normalized):
        for base, multiplier in overrides.get("normalized_prefix", {}).items():
            if re.search(rf"(^|-){re.escape(base)}($|-)", part):
                return float(multiplier)
    return None


def model_price(name: str, entry: Mapping[str, Any], overrides: Mapping[str, Mapping[str, float]]) -> ModelPrice:
    """One LiteLLM entry as rates; missing cache rates default as LiteLLM/ccusage default them."""
    input_rate = _rate(entry, "input_cost_per_token")
    output_rate = _rate(entry, "output_cost_per_token")
    if input_rate is None or output_rate is None:
        raise PricingError(f"{name}: input_cost_per_token and output_cost_per_token are required")
    cache_write = _rate(entry, "cache_creation_input_token_cost")
    cache_read = _rate(entry, "cache_read_input_token_cost")
    provider = entry.get("provider_specific_entry")
    fast = _rate(provider, "fast") if isinstance(provider, Mapping) else None
    override = _fast_override(name, overrides)
    return ModelPrice(
        input=input_rate,
        output=output_rate,
        cache_write=cache_write if cache_write is not None else input_rate * CACHE_WRITE_INPUT_MULTIPLIER,
        cache_read=cache_read if cache_read is not None else input_rate * CACHE_READ_INPUT_MULTIPLIER,
        input_above_200k=_rate(entry, "input_cost_per_token_above_200k_tokens"),
        output_above_200k=_rate(entry, "output_cost_per_token_above_200k_tokens"),
        cache_write_above_200k=_rate(entry, "cache_creation_input_token_cost_above_200k_tokens"),
        cache_read_above_200k=_rate(entry, "cache_read_input_token_cost_above_200k_tokens"),
        fast_multiplier=override if override is not None else (fast if fast is not None else 1.0),
    )


def parse_price_file(content: Any, label: str) -> tuple[str, dict[str, dict[str, Any]], dict[str, dict[str, float]]]:
    """(version, raw entries by model, fast overrides) of a price file's JSON content.

    Accepts this project's format (``{"version", "models", "fast_multiplier_overrides"}``) or a plain
    LiteLLM table (model names at the top level; entries without token prices are ignored).
    """
    if not isinstance(content, dict):
        raise PricingError(f"{label}: a price file must be a JSON object")
    if isinstance(content.get("models"), dict):
        raw_models = content["models"]
        version = str(content.get("version") or label)
        overrides = content.get("fast_multiplier_overrides") or {}
    else:
        raw_models, version, overrides = content, label, {}
    models = {
        str(name): entry
        for name, entry in raw_models.items()
        if isinstance(entry, dict) and "input_cost_per_token" in entry and "output_cost_per_token" in entry
    }
    if not isinstance(overrides, dict):
        raise PricingError(f"{label}: fast_multiplier_overrides must be an object")
    return version, models, overrides


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except OSError as error:
        raise PricingError(f"cannot read price file {path}: {error.strerror}") from None
    except ValueError as error:
        raise PricingError(f"price file {path} is not JSON: {error}") from None


def shipped_content() -> Any:
    """The JSON content of the price file shipped in this package.

    Read beside this module, not through ``importlib.resources``: that import (tempfile, shutil,
    compression modules) cost every run about 10 ms; the package is always installed as files.
    """
    return json.loads(Path(__file__).with_name(SHIPPED_PRICING).read_bytes())


def shipped_version() -> str:
    """The shipped price file's version (part of the processor's version)."""
    return str(shipped_content()["version"])


def load_prices(user_file: Path | None = None) -> PriceTable:
    """The shipped prices, with a user's file's entries replacing or adding models."""
    return load_prices_with_sources(user_file)[0]


def load_prices_with_sources(user_file: Path | None = None) -> tuple[PriceTable, dict[str, str]]:
    """:func:`load_prices`, and where each model's price comes from: ``pricing.json`` or the user's file."""
    version, models, overrides = parse_price_file(shipped_content(), SHIPPED_PRICING)
    sources = dict.fromkeys(models, SHIPPED_PRICING)
    if user_file is not None:
        user_version, user_models, user_overrides = parse_price_file(_read_json(user_file), user_file.name)
        if not user_models:
            raise PricingError(f"price file {user_file} holds no model with input and output prices")
        models = {**models, **user_models}
        sources.update(dict.fromkeys(user_models, str(user_file)))
        overrides = {
            kind: {**overrides.get(kind, {}), **user_overrides.get(kind, {})} for kind in ("exact", "normalized_prefix")
        }
        version = f"{version}+{user_version}"
    table = PriceTable(version, {name: model_price(name, entry, overrides) for name, entry in models.items()})
    return table, sources


def import_litellm(content: Any, version: str, match: str = "claude") -> tuple[dict[str, Any], Counter[str]]:
    """A price file in this project's format from a LiteLLM ``model_prices_and_context_window.json``.

    Keeps the models whose name contains ``match`` (case-insensitive; ``""`` keeps all) and that
    have per-token input and output prices, with only the fields :func:`model_price` reads. Entries
    left out are counted by reason: ``not_matching``, ``no_token_prices`` (image, audio or
    per-second models, LiteLLM's ``sample_spec``), ``bad_price`` (a rate that is not a number).
    """
    if not isinstance(content, dict):
        raise PricingError("a LiteLLM price file must be a JSON object of models")
    models: dict[str, dict[str, Any]] = {}
    skipped: Counter[str] = Counter()
    for name, entry in sorted(content.items()):
        if match.lower() not in str(name).lower():
            skipped["not_matching"] += 1
        elif not isinstance(entry, dict) or "input_cost_per_token" not in entry or "output_cost_per_token" not in entry:
            skipped["no_token_prices"] += 1
        else:
            kept = {key: entry[key] for key in LITELLM_PRICE_FIELDS if entry.get(key) is not None}
            provider = entry.get("provider_specific_entry")
            if isinstance(provider, dict) and "fast" in provider:
                kept["provider_specific_entry"] = {"fast": provider["fast"]}
            try:
                model_price(str(name), kept, {})
            except PricingError:
                skipped["bad_price"] += 1
                continue
            models[str(name)] = kept
    if not models:
        raise PricingError(f"no model{f' matching {match!r}' if match else ''} has input and output token prices")
    price_file = {
        "format": PRICE_FILE_FORMAT,
        "version": version,
        "source": "imported from a LiteLLM model_prices_and_context_window.json by `sessionpipe pricing import`",
        "fast_multiplier_overrides": {"exact": {}, "normalized_prefix": {}},
        "models": models,
    }
    return price_file, skipped


def tiered(tokens: int, rate: float, above: float | None) -> float:
    """Tokens at ``rate``, the part above 200k at ``above`` when there is such a rate."""
    if tokens <= 0:
        return 0.0
    if above is not None and tokens > LONG_CONTEXT_THRESHOLD:
        return LONG_CONTEXT_THRESHOLD * rate + (tokens - LONG_CONTEXT_THRESHOLD) * above
    return tokens * rate


def call_cost(
    price: ModelPrice,
    input_tokens: int,
    output_tokens: int,
    cache_write_5m: int,
    cache_write_1h: int,
    cache_read: int,
    speed: str | None,
) -> float:
    """USD cost of one API call's tokens."""
    write_1h_above = (
        price.input_above_200k * CACHE_WRITE_1H_INPUT_MULTIPLIER if price.input_above_200k is not None else None
    )
    cost = (
        tiered(input_tokens, price.input, price.input_above_200k)
        + tiered(output_tokens, price.output, price.output_above_200k)
        + tiered(cache_write_5m, price.cache_write, price.cache_write_above_200k)
        + tiered(cache_write_1h, price.input * CACHE_WRITE_1H_INPUT_MULTIPLIER, write_1h_above)
        + tiered(cache_read, price.cache_read, price.cache_read_above_200k)
    )
    return cost * price.fast_multiplier if speed == "fast" else cost
