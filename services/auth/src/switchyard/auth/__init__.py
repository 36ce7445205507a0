"""Switchyard auth service: users, API keys, signed JWT access tokens and the JWKS that
verifies them."""

__version__ = "0.1.0"
