"""Reading runs back (``runs``: metrics.jsonl, summary.json, recipe.yaml, TensorBoard events) into
tables and plots (``compare``, ``tables``)."""
