"""Switchyard gateway service."""
