"""What several commands share: the device, adaptation and operating-point flags, and how
commands print numbers, warnings and data-set names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssae.app.arguments import nonnegative_float, nonnegative_int, percentile, positive_float, positive_int
from ssae.scoring.operating_points import OPERATING_POINT_NAMES
from ssae.training import defaults

MAP_CHOICES = ("prior", "fused", "aggregated", "flair")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N (default: auto)")


def add_cohort_engine(parser: argparse.ArgumentParser, noun: str) -> None:
    """Where a cohort's tasks run (docs/cluster.md)."""
    group = parser.add_argument_group(f"where a cohort's {noun}s run (a folder or CSV; see docs/cluster.md)")
    group.add_argument(
        "--scheduler",
        type=scheduler_text,
        help=(
            f"run each {noun} as a task on a Dask cluster: local:N (N worker processes on this machine), the address of a "
            "running Dask scheduler (tcp://host:8786, e.g. started by dask-jobqueue) or its scheduler file (.json); "
            'needs pip install -e ".[cluster]" (default: one after another in this process)'
        ),
    )
    group.add_argument(
        "--threads-per-scan",
        type=positive_int,
        help=(
            "threads each scan runs with (default: every core in one process; on local:N the cores shared out; on a "
            "remote worker its Dask threads); the same count gives the same files in any engine"
        ),
    )


def scheduler_text(text: str) -> str:
    """``--scheduler``, checked as argparse reads it (the engine parses it again when it runs)."""
    from ssae.detection.cluster import parse_scheduler
    from ssae.io.errors import SSAEError

    try:
        return parse_scheduler(text).text
    except SSAEError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_adaptation(parser: argparse.ArgumentParser, title: str) -> None:
    group = parser.add_argument_group(title)
    default = defaults.DEFAULT_ADAPTATION
    group.add_argument("--adapt-epochs", type=positive_int, help=f"epochs per level (default: the model card's, {default.epochs})")
    group.add_argument("--adapt-lr", type=positive_float, help=f"Adam learning rate (default: the model card's, {default.learning_rate:g})")
    group.add_argument(
        "--adapt-exclude-percentile",
        type=percentile,
        help=f"brain voxels brighter than this percentile of each scan are left out of the loss (default: the model card's, {default.exclude_percentile:g})",
    )
    group.add_argument("--adapt-seed", type=nonnegative_int, help="random seed of the adaptation (default: the model card's, 0)")


def add_operating_point(parser: argparse.ArgumentParser) -> None:
    """``--operating-point`` or ``--threshold``, never both: a named preset silently overridden
    by a threshold would be reported as the preset it is not."""
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument(
        "--operating-point",
        choices=OPERATING_POINT_NAMES,
        help="the model card's label-free preset that turns the map into a mask, in healthy false-positive budgets (default: the card's, balanced)",
    )
    choice.add_argument(
        "--threshold",
        type=positive_float,
        help="a threshold in the map's own units instead of the operating point (its minimum lesion size still applies)",
    )
    add_min_lesion_size(parser)


def add_min_lesion_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-lesion-mm3",
        type=nonnegative_float,
        help="drop mask lesions smaller than this instead of the operating point's minimum (e.g. 14 for MAGNIMS' 3 mm, 0 for none)",
    )


def adaptation_settings(args: argparse.Namespace, base):
    """The model card's (or the default) adaptation settings with the command line's changes."""
    from dataclasses import replace

    changes = {
        "epochs": args.adapt_epochs,
        "learning_rate": args.adapt_lr,
        "exclude_percentile": args.adapt_exclude_percentile,
        "seed": args.adapt_seed,
    }
    return replace(base, **{k: v for k, v in changes.items() if v is not None})


def dataset_name(source: Path) -> str:
    """How model cards name a data set: the folder's or manifest's name, never a path."""
    return source.stem if source.is_file() else source.resolve().name


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def warn(message: str) -> None:
    print(f"ssae: warning: {message}", file=sys.stderr)


def requested_adaptation(args: argparse.Namespace, detector):
    """The adaptation a detection runs with: ``--adapt`` / ``--no-adapt`` or the model card's
    recommendation, with the card's settings changed by the ``--adapt-*`` flags (None: none)."""
    from ssae.io.errors import SSAEError

    if args.adapt is False and any(
        v is not None for v in (args.adapt_epochs, args.adapt_lr, args.adapt_exclude_percentile, args.adapt_seed)
    ):
        raise SSAEError("the --adapt-* settings need adaptation; drop --no-adapt")
    card_default = detector.default_adaptation()
    wanted = args.adapt if args.adapt is not None else card_default is not None
    base = card_default or (detector.card.adaptation.settings if detector.card.adaptation else defaults.DEFAULT_ADAPTATION)
    return adaptation_settings(args, base) if wanted else None
