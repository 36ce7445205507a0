"""The price table: what a request cost, in US dollars, for the usage events.

A YAML file (setting `prices_file`, env `SWITCHYARD_PRICES_FILE`) gives prices in USD per
one million tokens, by deployment name or by model name:

```yaml
deployments:            # most specific: a deployment's name in the routing table
  azure-east: {input_per_1m: 0.15, output_per_1m: 0.60, cache_read_per_1m: 0.075}
models:                 # the upstream model name, or the public model name
  gpt-4o-mini: {input_per_1m: 0.15, output_per_1m: 0.60, cache_read_per_1m: 0.075}
  claude-haiku-4-5:
    input_per_1m: 1.00
    output_per_1m: 5.00
    cache_read_per_1m: 0.10      # prompt-cache hits
    cache_write_per_1m: 1.25     # prompt-cache writes (Anthropic's 5-minute cache)
```

Input tokens read from the prompt cache are priced at `cache_read_per_1m`, those written
to it at `cache_write_per_1m`, the rest at `input_per_1m`; a cache price left out is the
input price. Reasoning tokens are output tokens and priced as such.

For a request served by deployment `d` (upstream model `u`) of public model `m`, the
first entry found among `deployments[d]`, `models[u]`, `models[m]` prices it. Without a
file, or without a matching entry, the cost is 0. Failed requests cost what their usage
(often zero tokens) costs.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from switchyard.common.events import TokenUsage
from switchyard.common.routing import Deployment


class PriceError(ValueError):
    """The price file is unreadable or invalid; the message names the file and field."""


class Price(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    input_per_1m: float = Field(default=0, ge=0, description="USD per 1M input tokens.")
    output_per_1m: float = Field(default=0, ge=0, description="USD per 1M output tokens.")
    cache_read_per_1m: float | None = Field(
        default=None, ge=0, description="USD per 1M input tokens read from the prompt cache."
    )
    cache_write_per_1m: float | None = Field(
        default=None, ge=0, description="USD per 1M input tokens written to the prompt cache."
    )

    def cost(self, usage: TokenUsage) -> float:
        """USD for `usage` (cache reads and writes at their own prices)."""
        read = self.input_per_1m if self.cache_read_per_1m is None else self.cache_read_per_1m
        write = self.input_per_1m if self.cache_write_per_1m is None else self.cache_write_per_1m
        return (
            usage.uncached_input_tokens * self.input_per_1m
            + usage.cache_read_input_tokens * read
            + usage.cache_creation_input_tokens * write
            + usage.output_tokens * self.output_per_1m
        ) / 1e6


class PriceTable(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    deployments: dict[str, Price] = Field(default_factory=dict)
    models: dict[str, Price] = Field(default_factory=dict)

    def price(self, model: str, deployment: Deployment | None) -> Price | None:
        if deployment is not None:
            found = self.deployments.get(deployment.name) or self.models.get(deployment.model)
            if found is not None:
                return found
        return self.models.get(model)

    def cost(self, model: str, deployment: Deployment | None, usage: TokenUsage) -> float:
        """USD for `usage` of public `model` served by `deployment` (0 without a price)."""
        price = self.price(model, deployment)
        return price.cost(usage) if price is not None else 0.0


def load_prices(path: str | None) -> PriceTable:
    if not path:
        return PriceTable()
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PriceError(f"price file {path}: cannot be read ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise PriceError(f"price file {path}: not valid YAML ({exc})") from exc
    try:
        return PriceTable.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise PriceError(f"price file {path}: {problems}") from exc


class PriceSource:
    """The current price table, reloaded when its file changes (like the routing file)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.table = load_prices(path)
        self._signature = self._file_signature()

    def _file_signature(self) -> tuple[int, int, int] | None:
        if not self.path:
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_ino, stat.st_size)

    def reload_if_changed(self) -> bool:
        """Reload when the file changed; raises PriceError (the old table stays) if invalid."""
        signature = self._file_signature()
        if not self.path or signature == self._signature:
            return False
        self._signature = signature
        self.table = load_prices(self.path)
        return True
