"""Benchmarks of the ops and models; plain functions returning rows, wired to the CLI elsewhere."""
