"""Optuna sweeps over recipes: sweep files (``spec``), the launcher that runs each trial as a
``mosaics-lab train`` subprocess (``launcher``), and the summary tables and plots (``report``)."""
