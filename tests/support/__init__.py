"""Helpers the tests share: external services started for a test session."""
