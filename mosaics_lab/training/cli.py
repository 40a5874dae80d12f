"""``mosaics-lab train RECIPE [key=value ...] [--print-config]``."""

from __future__ import annotations

import argparse
import sys

from mosaics_lab.config import load_recipe, recipe_to_yaml


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train (or resume) a recipe",
        description="Train a recipe. Re-running the same command resumes from checkpoints/last.ckpt.",
    )
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides applied after the file")
    p.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_config:
        sys.stdout.write(recipe_to_yaml(recipe))
        return 0
    from mosaics_lab.training.run import train

    run_dir = train(recipe)
    print(f"run finished: {run_dir}")
    return 0
