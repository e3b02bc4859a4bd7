"""What a session's LLM calls cost, in US dollars, from the model's price.

The prices are the ones the ``usage`` processor uses (its shipped ``pricing.json``, or the price
file ``SESSIONPIPE_PRICING`` / config key ``pricing`` names), so both processors agree on what a
token costs. The cost is counted as ``llm_cost_microusd``: whole millionths of a dollar, because run
counters are integers (summed exactly across sessions and runs, and passed through as such to the
operator's ``sessionpipe_run_counters_total``); the report shows dollars.
"""

from __future__ import annotations

from pathlib import Path

from sessionpipe_contract import COUNTER_LLM_COST_MICROUSD, ENV_PRICING
from sessionpipe_runner.processors.base import BadSettings, RunContext
from sessionpipe_runner.processors.usage.pricing import PriceTable, PricingError, call_cost, load_prices
from sessionpipe_runner.processors.verification.llm import CallStats

COUNTER = COUNTER_LLM_COST_MICROUSD
#: The Message Batches API bills every token at half the price.
BATCH_DISCOUNT = 0.5


def prices(context: RunContext) -> PriceTable:
    """The run's price table; an unreadable price file is a settings mistake (exit 2)."""
    configured = context.config.get("pricing") or context.environ.get(ENV_PRICING) or None
    try:
        return load_prices(Path(str(configured)) if configured else None)
    except PricingError as error:
        raise BadSettings(f"verification cannot price its LLM calls: {error}") from None


def microusd(table: PriceTable, model: str, stats: CallStats, *, batch: bool = False) -> int | None:
    """Millionths of a dollar the calls in ``stats`` cost, or None if ``model`` has no price."""
    price = table.find(model)
    if price is None:
        return None
    # The prompt's cache breakpoint is the default 5-minute one: every cache write is priced as such.
    usd = call_cost(
        price, stats.input_tokens, stats.output_tokens, stats.cache_write_tokens, 0, stats.cache_read_tokens, None
    )
    return round(usd * (BATCH_DISCOUNT if batch else 1.0) * 1e6)
