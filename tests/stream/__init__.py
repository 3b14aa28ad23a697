"""Tests: stream."""
