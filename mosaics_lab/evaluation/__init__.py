"""Evaluation: metrics of the in-context learning tasks (``metrics``) and the eval entry points."""
