"""Evaluation: the in-context task metrics (``metrics``), the evaluators (``lm``: validation loss,
per-position loss, extrapolation; ``icl``: the synthetic tasks), ``runner.evaluate`` which records a
result in a run, and the ``mosaics-lab eval`` subcommand (``cli``). Reproductions of the papers'
claims are sweeps (``sweeps/reproduce/``, ``mosaics-lab reproduce``) that call ``runner.evaluate``.

Kept free of torch imports here so that building the CLI parser stays fast.
"""

from mosaics_lab.data.tasks import TASKS

# Evaluations of a language model on its own data (the rest are the synthetic tasks).
LM_TASKS = ("val", "per_position", "extrapolation")
EVAL_TASKS = (*LM_TASKS, *TASKS)

__all__ = ["EVAL_TASKS", "LM_TASKS"]
