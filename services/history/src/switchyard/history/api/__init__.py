"""HTTP API of the history service (called by the gateway with the internal token)."""
