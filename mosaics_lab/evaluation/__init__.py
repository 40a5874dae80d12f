"""Evaluation: the in-context task metrics (``metrics``), the evaluators (``lm``: validation loss,
per-position loss, extrapolation; ``icl``: the synthetic tasks), ``runner.evaluate`` which records a
result in a run, the ``mosaics-lab eval`` subcommand (``cli``) and ``make reproduce-icl``
(``reproduce``).

Kept free of torch imports here so that building the CLI parser stays fast.
"""

from mosaics_lab.data.tasks import TASKS

# Evaluations of a language model on its own data (the rest are the synthetic tasks).
LM_TASKS = ("val", "per_position", "extrapolation")
EVAL_TASKS = (*LM_TASKS, *TASKS)

__all__ = ["EVAL_TASKS", "LM_TASKS"]
