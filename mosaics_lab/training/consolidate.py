"""``mosaics-lab consolidate CKPT_DIR OUT.ckpt``: one file from an FSDP (sharded) checkpoint.

``load_trained`` and ``mosaics-lab eval`` read sharded directories directly; this command is for
sharing or archiving a model as a single ``torch.load``-able file (weights, step and recipe).
"""

from __future__ import annotations

import argparse


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "consolidate",
        help="turn an FSDP sharded checkpoint directory into one .ckpt file",
        description="Consolidate a sharded checkpoint (e.g. runs/<name>/<id>/checkpoints/last.ckpt/ "
        "written under dist.strategy=fsdp) into one file for evaluation. Runs on one CPU process.",
    )
    p.add_argument("checkpoint", help="the sharded checkpoint directory (it holds meta.pt and .metadata)")
    p.add_argument("out", help="the .ckpt file to write (replaced atomically if it exists)")
    p.set_defaults(func=run_consolidate)


def run_consolidate(args: argparse.Namespace) -> int:
    from mosaics_lab.training.checkpoint import consolidate

    out = consolidate(args.checkpoint, args.out)
    print(f"consolidated: {out}")
    return 0
