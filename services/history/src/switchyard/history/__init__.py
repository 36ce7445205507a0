"""Switchyard history service."""
