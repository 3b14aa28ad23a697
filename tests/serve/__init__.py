"""Tests: serve."""
