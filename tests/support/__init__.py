"""Helpers shared by the test folders (fixtures, servers, synthetic data): imported as tests.support.<module>."""
