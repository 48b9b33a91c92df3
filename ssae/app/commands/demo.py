"""``ssae demo``: the built-in example, end to end, on data shipped with the repository."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssae.app.commands.common import add_device


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    demo = subcommands.add_parser(
        "demo",
        help="run the built-in example end to end",
        description=(
            "Detect lesions in the MSLUB patient shipped with the repository with the shipped model, write maps, mask and "
            "figure, and score them against the consensus mask beside the intensity baselines."
        ),
    )
    demo.add_argument("-o", "--output-dir", type=Path, default=Path("demo-output"), help="folder for the results (default: ./demo-output)")
    demo.add_argument("--overwrite", action="store_true", help="replace results of an earlier demo run")
    add_device(demo)
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ssae.app.demo import run_demo

    run_demo(args.output_dir, args.device, args.overwrite)
