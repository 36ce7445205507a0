"""Switchyard provider simulator: a development and test tool, its own distribution
(`switchyard-simulator`) so that no service's production image ships it."""
