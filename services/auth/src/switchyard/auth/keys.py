"""API key format and hashing.

A key is `sk-sy-` followed by 43 URL-safe random characters (256 bits). Only its sha256 is
stored; the gateway hashes the key a client presents and asks auth about the hash, so raw
keys never leave the gateway. The first 12 characters are kept as a visible prefix.
"""

from __future__ import annotations

import hashlib
import secrets

API_KEY_PREFIX = "sk-sy-"
VISIBLE_PREFIX_LENGTH = 12


def generate_api_key() -> str:
    """A new API key: `sk-sy-` and 256 random bits as 43 URL-safe base64 characters."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The sha256 hex digest by which a key is stored and looked up."""
    return hashlib.sha256(key.encode()).hexdigest()


def visible_prefix(key: str) -> str:
    """The first 12 characters of `key`, stored and shown so people can tell keys apart."""
    return key[:VISIBLE_PREFIX_LENGTH]
