"""Prices of models in US dollars: what a request cost (usage events, spend) and what it
may cost at most (budget reservations at the gateway).

Three sources, the first that knows a model wins:
1. the prices file (setting `SWITCHYARD_PRICES_FILE`): YAML in USD per one million tokens,
   by deployment name or by model name;
2. the provider simulator's models (`SIMULATOR_PRICES`), so budgets work in `make run`;
3. the `genai-prices` library's bundled snapshot of public providers' prices (OpenAI,
   Anthropic, Google and others; no network access: the snapshot ships with the package).

```yaml
deployments:            # most specific: a deployment's name in the routing table
  azure-east: {input_per_1m: 0.15, output_per_1m: 0.60}
models:                 # the upstream model name, or the public model name
  gpt-4o-mini: {input_per_1m: 0.15, output_per_1m: 0.60, cache_read_per_1m: 0.075}
  llama-3-8b: {input_per_1m: 0.05, output_per_1m: 0.10, max_output_tokens: 8192}
```

`max_output_tokens` is the output a request without `max_tokens` is assumed to produce at
most when its cost is reserved (default `DEFAULT_MAX_OUTPUT_TOKENS`). A model no source
knows costs 0.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from switchyard.common.settings import ConfigurationError

DEFAULT_MAX_OUTPUT_TOKENS = 4096


class PriceError(ConfigurationError):
    """The price file is unreadable or invalid; the message names the file and field."""


class Price(BaseModel):
    """USD per one million tokens of each kind."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_per_1m: float = Field(default=0, ge=0, description="USD per 1M (uncached) input tokens.")
    output_per_1m: float = Field(default=0, ge=0, description="USD per 1M output tokens.")
    cache_read_per_1m: float | None = Field(
        default=None, ge=0, description="USD per 1M input tokens read from the prompt cache."
    )
    cache_write_per_1m: float | None = Field(
        default=None, ge=0, description="USD per 1M input tokens written to the prompt cache."
    )
    cache_write_1h_per_1m: float | None = Field(
        default=None,
        ge=0,
        description=(
            "USD per 1M input tokens written to the prompt cache for an hour (Anthropic's "
            "`ttl: 1h`); `cache_write_per_1m` when not given."
        ),
    )
    max_output_tokens: int | None = Field(
        default=None, gt=0, description="Output assumed at most when a request sets no limit."
    )

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read_input_tokens: int = 0,
        cache_creation_input_tokens: int = 0,
        cache_creation_1h_input_tokens: int = 0,
    ) -> float:
        """USD for this usage. `input_tokens` counts every input token, cached included
        (as the event contract does); cached ones are billed at their own price, those
        written for an hour (`cache_creation_1h_input_tokens`, a part of
        `cache_creation_input_tokens`) at theirs."""
        cached = cache_read_input_tokens + cache_creation_input_tokens
        plain = max(0, input_tokens - cached)
        one_hour = min(cache_creation_1h_input_tokens, cache_creation_input_tokens)
        read = self.cache_read_per_1m if self.cache_read_per_1m is not None else self.input_per_1m
        write = (
            self.cache_write_per_1m if self.cache_write_per_1m is not None else self.input_per_1m
        )
        write_1h = self.cache_write_1h_per_1m if self.cache_write_1h_per_1m is not None else write
        return (
            plain * self.input_per_1m
            + cache_read_input_tokens * read
            + (cache_creation_input_tokens - one_hour) * write
            + one_hour * write_1h
            + output_tokens * self.output_per_1m
        ) / 1e6

    def most(
        self,
        input_tokens: int,
        output_tokens: int,
        *,
        cache_write: bool = True,
        one_hour: bool = False,
    ) -> float:
        """The most a call of these token counts can cost, in USD: every input token at
        the dearest rate it could be billed at, every output token at the output rate.
        What a budget reserves before the call. `cache_write`: the call may write its
        input to the prompt cache (dearer than plain input at Anthropic, where the request
        marks what is written); `one_hour`: for an hour (`cache_write_1h_per_1m`)."""
        rates = [self.input_per_1m, self.cache_read_per_1m]
        if cache_write:
            rates.append(self.cache_write_per_1m)
        if one_hour:
            rates.append(self.cache_write_1h_per_1m or self.cache_write_per_1m)
        dearest = max(rate for rate in rates if rate is not None)
        return (input_tokens * dearest + output_tokens * self.output_per_1m) / 1e6


# The simulator's models: plausible small-model prices, so budgets are exercised locally.
SIMULATOR_PRICES: dict[str, Price] = {
    "sim-small": Price(input_per_1m=0.5, output_per_1m=1.5, cache_read_per_1m=0.05),
    "sim-large": Price(input_per_1m=3.0, output_per_1m=15.0, cache_read_per_1m=0.3),
    "sim-claude": Price(
        input_per_1m=1.0,
        output_per_1m=5.0,
        cache_read_per_1m=0.1,
        cache_write_per_1m=1.25,
        cache_write_1h_per_1m=2.0,
    ),
    "sim-embedding": Price(input_per_1m=0.02, output_per_1m=0.0),
}

_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic"}

# The library's price data takes about a second to load: it loads in a thread as soon as
# this module is imported, so no request (and no event loop) waits for it.
_library_loaded = threading.Event()


def _load_library() -> None:
    try:
        from genai_prices import data_snapshot

        data_snapshot.get_snapshot()
    except Exception:  # noqa: BLE001 - without the library, public models are unpriced
        pass
    finally:
        _library_loaded.set()


threading.Thread(target=_load_library, name="genai-prices-loader", daemon=True).start()


@lru_cache(maxsize=4096)
def library_price(model: str, provider: str | None = None) -> Price | None:
    """The price of a public model from the `genai-prices` snapshot (None if unknown),
    as linear rates measured at 1,000 tokens of each kind (the first tier of tiered
    prices). Cached: one lookup costs about half a millisecond."""
    _library_loaded.wait(timeout=30)
    try:
        from genai_prices import Usage, calc_price
    except ImportError:  # pragma: no cover - declared dependency
        return None
    provider_id = _PROVIDER_IDS.get(provider or "")

    def rate(**usage: int) -> float:
        if provider_id is not None:
            calculation = calc_price(Usage(**usage), model_ref=model, provider_id=provider_id)
        else:
            calculation = calc_price(Usage(**usage), model_ref=model)
        return float(calculation.total_price) * 1000  # per 1,000 tokens -> per 1M

    try:
        return Price(
            input_per_1m=rate(input_tokens=1000),
            output_per_1m=rate(output_tokens=1000),
            cache_read_per_1m=rate(input_tokens=1000, cache_read_tokens=1000),
            cache_write_per_1m=rate(input_tokens=1000, cache_write_tokens=1000),
            # The library prices an hour's writes as a part of all writes.
            cache_write_1h_per_1m=rate(
                input_tokens=1000, cache_write_tokens=1000, cache_write_1h_tokens=1000
            ),
        )
    except (LookupError, ValueError, TypeError):
        if provider_id is not None:
            return library_price(model, None)
        return None


class PriceTable(BaseModel):
    """The prices file's content, with the simulator's and the library's prices behind it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deployments: dict[str, Price] = Field(default_factory=dict)
    models: dict[str, Price] = Field(default_factory=dict)
    use_defaults: bool = Field(
        default=True,
        description="Fall back on the simulator's and the genai-prices library's prices.",
    )

    def price(
        self,
        model: str,
        *,
        deployment: str | None = None,
        upstream_model: str | None = None,
        provider: str | None = None,
    ) -> Price | None:
        """The price for public model `model` (served by `deployment`, which calls
        `upstream_model` at `provider`, when known); None if no source knows it."""
        if deployment is not None and deployment in self.deployments:
            return self.deployments[deployment]
        for name in (upstream_model, model):
            if name is not None and name in self.models:
                return self.models[name]
        if not self.use_defaults:
            return None
        for name in (upstream_model, model):
            if name is not None and name in SIMULATOR_PRICES:
                return SIMULATOR_PRICES[name]
        for name in (upstream_model, model):
            if name is not None:
                found = library_price(name, provider)
                if found is not None:
                    return found
        return None

    def cost(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        *,
        cache_read_input_tokens: int = 0,
        cache_creation_input_tokens: int = 0,
        cache_creation_1h_input_tokens: int = 0,
        deployment: str | None = None,
        upstream_model: str | None = None,
        provider: str | None = None,
    ) -> float:
        """What a call cost in USD: input, output, cache-read and cache-write token counts
        (those written for an hour a part of them) at the price `price` finds for the same
        model, deployment, upstream model and provider; 0.0 when no price is known."""
        price = self.price(
            model, deployment=deployment, upstream_model=upstream_model, provider=provider
        )
        if price is None:
            return 0.0
        return price.cost(
            input_tokens,
            output_tokens,
            cache_read_input_tokens,
            cache_creation_input_tokens,
            cache_creation_1h_input_tokens,
        )

    def max_output_tokens(
        self,
        model: str,
        *,
        deployment: str | None = None,
        upstream_model: str | None = None,
        provider: str | None = None,
    ) -> int:
        """The most output tokens public model `model` may produce (served by
        `deployment`, calling `upstream_model` at `provider`, when known), from the price
        entry found as `price` finds it (a deployment's, an upstream model's, the public
        model's), or the default (DEFAULT_MAX_OUTPUT_TOKENS) when it names none."""
        price = self.price(
            model, deployment=deployment, upstream_model=upstream_model, provider=provider
        )
        if price is not None and price.max_output_tokens is not None:
            return price.max_output_tokens
        return DEFAULT_MAX_OUTPUT_TOKENS


def load_prices(path: str | None) -> PriceTable:
    """The table of the prices file at `path` (defaults only without one); PriceError
    names the file and the field when it is unreadable or invalid."""
    if not path:
        return PriceTable()
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PriceError(f"price file {path}: cannot be read ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())  # one line: PyYAML's spans several
        raise PriceError(f"price file {path}: not valid YAML ({problem})") from exc
    try:
        return PriceTable.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise PriceError(f"price file {path}: {problems}") from exc


@dataclass
class PriceSource:
    """The current price table, reloaded when its file changes."""

    path: str | None

    def __post_init__(self) -> None:
        self.table = load_prices(self.path)
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
