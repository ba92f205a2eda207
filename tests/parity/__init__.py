"""Parity with the reference implementations: each formula re-derived from the references' public code."""
