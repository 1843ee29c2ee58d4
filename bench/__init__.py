"""Benchmarks of the whole bot against the fake Telegram server: `make bench` (see README, Performance)."""
