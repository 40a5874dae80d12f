"""mosaics-lab: an experiment platform for Memory Mosaics research.

The house: each layer imports only from the layers below it (tests/test_layers.py checks every
import, module-level and lazy), and keeps one rule.

    cli.py       the `mosaics-lab` command: parses arguments, turns user mistakes into one line and an
                 exit code; imports each subcommand lazily, so `--help` is instant.
    sweeps/      Optuna studies, the trial launcher and reports: a trial is a training subprocess,
                 never an import of the trainer's state. Reproductions of the papers' claims
                 (`reproduce`) are sweep files of sweeps/reproduce/ run by the same launcher.
    bench/       benchmarks and `gpu-check`: measure only what the layers below already do, as
                 training does it.
    analysis/    read runs (metrics.jsonl, TensorBoard events, checkpoints) into tables, plots,
                 inspections and study reports (`study`: mean +- std over seeds, the learned-at-1x
                 gate); writes nothing into a run but its own outputs.
    evaluation/  eval tasks and metrics on trained checkpoints; loads them through training's
                 checkpoint reader.
    training/    the LightningModule (the system: loss, optimiser, schedule), callbacks, strategies,
                 the run directory; never branches on the architecture name.
    data/        tokenizers, corpora and generators -> litdata shards, the DataModule; in rooms
                 (manifest <- shards <- corpora <- generators <- prepare), no model or training import.
    models/      nn.Modules only, each built from its own config dataclass; import ops and config.
    ops/         pure tensor functions, each with a naive reference beside it; import torch only.
    config/      the ground floor, torch-free: the recipe schema, every model's config dataclass
                 (config.models), loading and validation.

`constants` (tags and file names shared across layers) and `envcheck` sit beside the layers and
import nothing of the package.
"""

__version__ = "0.1.0"
