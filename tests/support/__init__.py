"""Test helpers shared by tests/ and benchmarks/: real servers, real containers, real events."""
