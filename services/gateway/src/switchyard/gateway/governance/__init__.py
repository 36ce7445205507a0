"""Budgets and rate limits at the gateway: admission before publishing, settlement from
usage events, and the fleet-wide ledger both draw on (see docs/governance.md)."""
