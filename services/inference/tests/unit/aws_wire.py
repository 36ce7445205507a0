"""AWS wire helpers for the Bedrock tests: frames of AWS's binary event-stream encoding (as
Bedrock streams `invoke-with-response-stream`), and a check that a request's Signature
Version 4 is valid for given credentials (recomputed with botocore's own signer)."""

from __future__ import annotations

import base64
import binascii
import re
import struct
from typing import Any

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from switchyard.inference.testing import Recorded

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})"
)


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    # Header value type 7: a UTF-8 string with a 2-byte length.
    return (
        struct.pack(">B", len(raw_name))
        + raw_name
        + b"\x07"
        + struct.pack(">H", len(raw_value))
        + raw_value
    )


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (total and headers lengths, CRC32), headers,
    payload, CRC32 of everything before it."""
    head = b"".join(_header(name, value) for name, value in headers.items())
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    body = prelude + head + payload
    return body + struct.pack(">I", binascii.crc32(body))


def chunk_frame(event: dict[str, Any]) -> bytes:
    """A Bedrock `chunk` event carrying one Anthropic stream event (base64 in `bytes`)."""
    payload = orjson.dumps({"bytes": base64.b64encode(orjson.dumps(event)).decode()})
    return frame(
        {
            ":event-type": "chunk",
            ":content-type": "application/json",
            ":message-type": "event",
        },
        payload,
    )


def exception_frame(kind: str, message: str) -> bytes:
    """A Bedrock exception frame (e.g. `throttlingException`) ending a stream."""
    return frame(
        {
            ":exception-type": kind,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        orjson.dumps({"message": message}),
    )


def check_sigv4(
    recorded: Recorded,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    session_token: str | None = None,
) -> dict[str, str]:
    """Assert that `recorded` carries a well-formed, valid SigV4 signature of service
    `bedrock` in `region` made with these credentials; returns the Authorization parts."""
    authorization = recorded.headers["authorization"]
    match = _AUTHORIZATION.fullmatch(authorization)
    assert match, authorization
    parts = match.groupdict()
    assert parts["key"] == access_key
    assert parts["region"] == region and parts["service"] == "bedrock"
    amz_date = recorded.headers["x-amz-date"]
    assert amz_date.startswith(parts["date"])
    signed = parts["signed"].split(";")
    assert "host" in signed and "x-amz-date" in signed
    if session_token is not None:
        assert recorded.headers["x-amz-security-token"] == session_token
        assert "x-amz-security-token" in signed
    # Recompute the signature over what arrived, with botocore's signer.
    host = recorded.headers["host"]
    url = f"http://{host}{recorded.raw_path or recorded.path}"
    if recorded.query:
        url += f"?{recorded.query}"
    request = AWSRequest(
        method=recorded.method,
        url=url,
        headers={name: recorded.headers[name] for name in signed},
        data=recorded.raw,
    )
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(access_key, secret_key, session_token), "bedrock", region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    assert parts["signature"] == expected, "the SigV4 signature does not match the request"
    return parts
