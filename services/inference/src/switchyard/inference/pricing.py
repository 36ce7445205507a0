"""What a request cost, in US dollars, for the usage events. The price table, its file
format (setting `prices_file`, env `SWITCHYARD_PRICES_FILE`) and its defaults (the
simulator's models, and public models from the `genai-prices` library) live in
`switchyard.common.pricing`, so the gateway reserves budgets with exactly the prices
inference charges.

For a request served by deployment `d` (upstream model `u`, provider `p`) of public
model `m`, the first entry found among the file's `deployments[d]`, `models[u]`,
`models[m]`, then the defaults for `u` and `m`, prices it; a model nobody prices costs 0.
"""

from __future__ import annotations

from switchyard.common.events import TokenUsage
from switchyard.common.pricing import Price, PriceError, PriceSource, PriceTable, load_prices
from switchyard.common.routing import Deployment

__all__ = ["Price", "PriceError", "PriceSource", "PriceTable", "load_prices", "request_cost"]


def request_cost(
    table: PriceTable, model: str, deployment: Deployment | None, usage: TokenUsage
) -> float:
    """USD for `usage` of public model `model` served by `deployment`."""
    return table.cost(
        model,
        usage.input_tokens,
        usage.output_tokens,
        cache_read_input_tokens=usage.cache_read_input_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens,
        cache_creation_1h_input_tokens=usage.cache_creation_1h_input_tokens,
        deployment=deployment.name if deployment is not None else None,
        upstream_model=deployment.model if deployment is not None else None,
        provider=deployment.provider if deployment is not None else None,
    )
