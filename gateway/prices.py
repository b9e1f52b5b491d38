"""What a call costs: a small table of list prices per model, USD per million tokens.

A model matches its own name or a dated snapshot of it (``claude-sonnet-4-5-20250929``); any
other model is unknown and its calls are counted in tokens with no cost. The table is a starting
point: ``ORCHESTRATOR_GATEWAY_PRICES`` (JSON) adds models or overrides these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.settings import ModelPrice

_SNAPSHOT = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2}|latest)$")


def _price(
    input: float, output: float, cache_read: float, cache_write: float | None = None
) -> ModelPrice:
    return ModelPrice(input=input, output=output, cache_read=cache_read, cache_write=cache_write)


DEFAULT_PRICES: dict[str, ModelPrice] = {
    # Anthropic: cache writes (5-minute) cost 1.25x input, cache reads 0.1x.
    "claude-opus-4-5": _price(5, 25, 0.5, 6.25),
    "claude-opus-4-1": _price(15, 75, 1.5, 18.75),
    "claude-opus-4": _price(15, 75, 1.5, 18.75),
    "claude-sonnet-4-5": _price(3, 15, 0.3, 3.75),
    "claude-sonnet-4": _price(3, 15, 0.3, 3.75),
    "claude-3-7-sonnet": _price(3, 15, 0.3, 3.75),
    "claude-haiku-4-5": _price(1, 5, 0.1, 1.25),
    "claude-3-5-haiku": _price(0.8, 4, 0.08, 1.0),
    # OpenAI: cached input is billed at the cached rate, no cache-write charge.
    "gpt-5": _price(1.25, 10, 0.125),
    "gpt-5-mini": _price(0.25, 2, 0.025),
    "gpt-5-nano": _price(0.05, 0.4, 0.005),
    "gpt-4.1": _price(2, 8, 0.5),
    "gpt-4.1-mini": _price(0.4, 1.6, 0.1),
    "gpt-4o": _price(2.5, 10, 1.25),
    "gpt-4o-mini": _price(0.15, 0.6, 0.075),
}


class PriceTable:
    def __init__(self, prices: Mapping[str, ModelPrice] | None = None, *, defaults: bool = True):
        self.prices: dict[str, ModelPrice] = {**(DEFAULT_PRICES if defaults else {})}
        self.prices.update(prices or {})

    def price(self, model: str) -> ModelPrice | None:
        if model in self.prices:
            return self.prices[model]
        # Only a dated snapshot shares its model's price: "gpt-5.5" or "claude-opus-4-6" are other
        # models, and a guessed price would be worse than none.
        base = _SNAPSHOT.sub("", model)
        return self.prices.get(base) if base != model else None

    def cost(
        self,
        model: str,
        *,
        tokens_in: int,
        tokens_out: int,
        cache_read: int = 0,
        cache_write: int = 0,
    ) -> float | None:
        """USD for one call; ``tokens_in`` counts all input, cached parts included."""
        price = self.price(model)
        if price is None:
            return None
        fresh = max(tokens_in - cache_read - cache_write, 0)
        read_rate = price.input if price.cache_read is None else price.cache_read
        write_rate = price.input if price.cache_write is None else price.cache_write
        total = (
            fresh * price.input
            + cache_read * read_rate
            + cache_write * write_rate
            + tokens_out * price.output
        )
        return round(total / 1_000_000, 8)
