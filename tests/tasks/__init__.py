"""Tests of the synthetic in-context learning tasks and their metrics."""
