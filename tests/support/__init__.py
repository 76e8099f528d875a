"""Test support code (helpers, not tests): throwaway servers the fixtures and benchmarks start."""
