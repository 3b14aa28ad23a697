"""The test suite (a package: helpers shared across folders live in tests.support)."""
