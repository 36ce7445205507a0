"""Shared plumbing for every Switchyard service: event contracts, the event bus, settings,
logging, metrics, database helpers and the `switchyard` command-line tool."""

__version__ = "0.1.0"
