"""How every Kafka client of the process connects: plain TCP (the default, a broker on a
private network), TLS, or SASL (PLAIN or SCRAM) over either, as managed Kafka services
require (Confluent Cloud, Amazon MSK, Aiven: `SASL_SSL`).

Set from the service's settings (`SWITCHYARD_KAFKA_SECURITY_PROTOCOL`, `..._SASL_*`,
`..._SSL_*`) by `use` when the bus or a `switchyard` command starts; every producer,
consumer and admin client then takes `client_options()` (aiokafka's `security_protocol`,
`ssl_context`, `sasl_mechanism`, `sasl_plain_username`, `sasl_plain_password`). One
process talks to one cluster, so the options are the process's, as its logging is.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any, Literal

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@dataclass(frozen=True)
class KafkaSecurity:
    """The connection security of a Kafka client: `protocol` (Kafka's
    `security.protocol`), the SASL `mechanism`, `username` and `password` (for the
    SASL protocols), and the TLS files (for SSL and SASL_SSL: `cafile`, the broker's CA,
    empty for the system's; `certfile` and `keyfile`, a client certificate, empty for
    none). Raises ValueError for a SASL protocol without a username or password."""

    protocol: SecurityProtocol = "PLAINTEXT"
    mechanism: SaslMechanism = "PLAIN"
    username: str = ""
    password: str = field(default="", repr=False)
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""

    def __post_init__(self) -> None:
        if self.protocol.startswith("SASL_") and not (self.username and self.password):
            raise ValueError(
                f"Kafka security protocol {self.protocol} needs a SASL username and password "
                "(SWITCHYARD_KAFKA_SASL_USERNAME, SWITCHYARD_KAFKA_SASL_PASSWORD)"
            )
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError(
                "a Kafka client certificate needs both SWITCHYARD_KAFKA_SSL_CERTFILE and "
                "SWITCHYARD_KAFKA_SSL_KEYFILE"
            )

    def options(self) -> dict[str, Any]:
        """The keyword arguments every aiokafka client takes for this security (none for
        PLAINTEXT). Raises OSError or ssl.SSLError for TLS files that cannot be read."""
        if self.protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self.ssl_context()
        if self.protocol.startswith("SASL_"):
            options.update(
                sasl_mechanism=self.mechanism,
                sasl_plain_username=self.username,
                sasl_plain_password=self.password,
            )
        return options

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS client context verifying the broker (by `cafile`, or the system's CAs)
        and presenting the client certificate, if any."""
        from aiokafka.helpers import create_ssl_context

        context: ssl.SSLContext = create_ssl_context(
            cafile=self.cafile or None,
            certfile=self.certfile or None,
            keyfile=self.keyfile or None,
        )
        return context


_current = KafkaSecurity()
_options: dict[str, Any] = {}


def use(security: KafkaSecurity) -> None:
    """Make `security` the one every Kafka client of this process connects with. Raises
    OSError or ssl.SSLError for TLS files that cannot be read (at start-up, not at the
    first connection)."""
    global _current, _options
    _options = security.options()
    _current = security


def current() -> KafkaSecurity:
    """The security `use` set (PLAINTEXT until then)."""
    return _current


def client_options() -> dict[str, Any]:
    """The keyword arguments of the current security, for an aiokafka client."""
    return dict(_options)
