"""Benchmarks that the CLI can run (``quartfaas bench ...``)."""
