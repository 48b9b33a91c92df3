"""``ssae compare``: what changed between a baseline and a follow-up FLAIR of one patient, on the
follow-up's grid; or every pair of a CSV or of a folder of pair folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssae.app.arguments import nonnegative_float, positive_float, positive_int, progress_log_path
from ssae.app.commands.common import add_adaptation, add_cohort_engine, add_device, add_min_lesion_size, requested_adaptation, warn
from ssae.io.errors import SSAEError
from ssae.scoring.change import ChangeRule
from ssae.scoring.operating_points import OPERATING_POINT_NAMES


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    compare = subcommands.add_parser(
        "compare",
        help="new, enlarging and shrinking lesions between two scans of one patient",
        description=(
            "Detect in a baseline and a follow-up FLAIR of one patient, register the baseline rigidly onto the follow-up, "
            "and write on the follow-up's grid: a change map (noise units, positive = brighter now), a change labelmap "
            "(1 = new or enlarging, 2 = shrinking or resolved), the baseline resampled onto the follow-up, the registration, "
            "a lesion-change table and a JSON summary. With a CSV of pairs (columns baseline, followup; optional pair, "
            "baseline_mask, followup_mask) or a folder with one subfolder of two scans per pair (the earlier by name is the "
            "baseline): one result folder per pair and comparisons.csv."
        ),
    )
    compare.add_argument("model", type=Path, help="model file (.safetensors)")
    compare.add_argument("baseline", type=Path, help="the earlier FLAIR (a volume or DICOM series folder), or a CSV / folder of pairs")
    compare.add_argument("followup", type=Path, nargs="?", help="the later FLAIR (omit with a CSV / folder of pairs)")
    compare.add_argument(
        "-o", "--output-dir", type=Path, default=Path("ssae-compare"), help="folder for the results (default: ./ssae-compare)"
    )
    compare.add_argument("--baseline-mask", type=Path, help="brain mask on the baseline's grid (default: the atlas's)")
    compare.add_argument("--followup-mask", type=Path, help="brain mask on the follow-up's grid (default: the atlas's)")
    compare.add_argument(
        "--operating-point", choices=OPERATING_POINT_NAMES, help="the preset that draws each scan's lesion mask (default: the card's)"
    )
    add_min_lesion_size(compare)
    compare.add_argument(
        "--adapt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="adapt a copy of the model to each scan before detecting (default: as the model card recommends)",
    )
    add_adaptation(compare, "scanner adaptation (with --adapt)")
    rule = compare.add_argument_group("change rule (defaults chosen on the development pairs; see docs/followup.md)")
    default = ChangeRule()
    rule.add_argument("--change-z", type=positive_float, default=default.z, help=f"change threshold in noise SDs (default: {default.z:g})")
    rule.add_argument(
        "--min-change-mm3",
        type=nonnegative_float,
        default=default.min_change_mm3,
        help=f"drop connected changes smaller than this (default: {default.min_change_mm3:g})",
    )
    compare.add_argument("--format", default="nii.gz", choices=("nii.gz", "nrrd", "nii", "mha"), help="output format (default: nii.gz)")
    compare.add_argument("--batch-size", type=positive_int, help="slices per forward pass (default: chosen for the device)")
    compare.add_argument(
        "--progress-log", type=progress_log_path, help="append JSON-lines progress events (fraction, message) to this file"
    )
    compare.add_argument("--overwrite", action="store_true", help="replace existing result files")
    compare.add_argument(
        "--resume",
        action="store_true",
        help="a CSV or folder of pairs: skip the pairs whose complete result set is already in the output folder (an interrupted run)",
    )
    add_device(compare)
    add_cohort_engine(compare, "pair")
    compare.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ssae.detection.detector import cached_detector
    from ssae.detection.followup_runs import compare_one, compare_pairs, is_pair_source

    pairs = args.followup is None
    if pairs and not is_pair_source(args.baseline):
        raise SSAEError("give a baseline and a follow-up scan, or one CSV / folder of pairs")
    if pairs and (args.baseline_mask or args.followup_mask):
        raise SSAEError("--baseline-mask and --followup-mask are for one pair; a CSV of pairs has baseline_mask / followup_mask columns")
    if args.resume and args.overwrite:
        raise SSAEError("--resume keeps finished results and --overwrite redoes them: choose one")
    if args.resume and not pairs:
        raise SSAEError("--resume is for a CSV or folder of pairs")
    if (args.scheduler or args.threads_per_scan) and not pairs:
        raise SSAEError("--scheduler and --threads-per-scan are for a CSV or folder of pairs")
    detector = cached_detector(args.model, args.device, args.batch_size)
    prior_factor = detector.card.postprocessing.prior_factor or ChangeRule.brighter_than
    options = {
        "adaptation": requested_adaptation(args, detector),
        "operating_point": args.operating_point,
        "min_lesion_mm3": args.min_lesion_mm3,
        "rule": ChangeRule(z=args.change_z, min_change_mm3=args.min_change_mm3, brighter_than=prior_factor),
        "fmt": args.format,
        "overwrite": args.overwrite,
    }
    if pairs:
        summary = compare_pairs(
            detector,
            args.baseline,
            args.output_dir,
            progress_log=args.progress_log,
            log=print,
            resume=args.resume,
            scheduler=args.scheduler,
            threads_per_scan=args.threads_per_scan,
            **options,
        )
        print(f"{summary.succeeded} of {summary.total} pair(s) done; table: {summary.table}")
        if summary.failed:
            print(f"ssae: {summary.failed} pair(s) failed; their errors are in {summary.table}", file=sys.stderr)
            return 1
        return 0
    outcome = compare_one(
        detector,
        args.baseline,
        args.followup,
        args.output_dir,
        args.baseline_mask,
        args.followup_mask,
        progress_log=args.progress_log,
        **options,
    )
    for message in outcome.warnings:
        warn(message)
    comparison = outcome.comparison
    counts = comparison.counts
    volumes = comparison.change_ml()
    print(
        f"{counts['new']} new, {counts['enlarging']} enlarging, {counts['shrinking']} shrinking, {counts['resolved']} resolved, "
        f"{counts['stable']} stable lesion(s); {volumes['increase_ml']:.2f} ml brighter, {volumes['decrease_ml']:.2f} ml darker "
        f"(registration: correlation {comparison.alignment.correlation:.2f}, {'passed' if comparison.alignment.passed else 'CHECK'})"
    )
    for name, path in outcome.paths.items():
        print(f"{name:>21s}: {path}")
    return 0
