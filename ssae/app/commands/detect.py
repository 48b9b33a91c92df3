"""``ssae detect``: maps, mask and lesion table for one scan or a cohort of scans."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssae.app.arguments import positive_int, progress_log_path
from ssae.app.commands.common import (
    MAP_CHOICES,
    add_adaptation,
    add_cohort_engine,
    add_device,
    add_operating_point,
    requested_adaptation,
    warn,
)
from ssae.io.errors import SSAEError


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    detect = subcommands.add_parser(
        "detect",
        help="anomaly maps and lesion mask for one volume or a cohort",
        description=(
            "Run a model on a FLAIR volume, or on every scan of a folder or CSV manifest (one result folder per scan "
            "and a cohort.csv); write the score maps, the lesion mask (all on the input's grid) and a JSON summary."
        ),
    )
    detect.add_argument("model", type=Path, help="model file (.safetensors)")
    detect.add_argument(
        "image", type=Path, help="FLAIR volume (NIfTI, NRRD, MHA, ... or a DICOM series folder), or a folder / CSV of scans"
    )
    detect.add_argument(
        "-o", "--output-dir", type=Path, default=Path("ssae-output"), help="folder for the results (default: ./ssae-output)"
    )
    detect.add_argument(
        "--brain-mask", type=Path, help="brain mask on the image's grid (one image only; default: the atlas's or a foreground mask)"
    )
    detect.add_argument("--brain-masks", type=Path, help="folder of brain masks named after the scans (cohorts)")
    detect.add_argument("--score-map", choices=MAP_CHOICES, help="the map that draws the mask (default: the model card's)")
    add_operating_point(detect)
    detect.add_argument(
        "--adapt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="adapt a copy of the model to each scan before detecting (default: as the model card recommends)",
    )
    add_adaptation(detect, "scanner adaptation (with --adapt)")
    detect.add_argument("--format", default="nii.gz", choices=("nii.gz", "nrrd", "nii", "mha"), help="output format (default: nii.gz)")
    detect.add_argument("--no-scales", action="store_true", help="no per-level maps (aggregated, prior, fused, flair and the mask only)")
    detect.add_argument("--figure", action="store_true", help="also write a PNG panel of the most anomalous slices")
    detect.add_argument("--batch-size", type=positive_int, help="slices per forward pass (default: chosen for the device)")
    detect.add_argument("--progress-log", type=progress_log_path, help="append JSON-lines progress events (fraction, message) to this file")
    detect.add_argument("--overwrite", action="store_true", help="replace existing result files")
    detect.add_argument(
        "--resume",
        action="store_true",
        help="a folder or CSV of scans: skip the scans whose complete result set is already in the output folder (an interrupted run)",
    )
    add_device(detect)
    add_cohort_engine(detect, "scan")
    detect.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ssae.detection.cohorts import detect_cohort, detect_one, is_cohort
    from ssae.detection.detector import cached_detector

    detector = cached_detector(args.model, args.device, args.batch_size)
    adaptation = requested_adaptation(args, detector)
    options = {
        "scales": not args.no_scales,
        "score_map": args.score_map,
        "threshold": args.threshold,
        "operating_point": args.operating_point,
        "min_lesion_mm3": args.min_lesion_mm3,
        "adaptation": adaptation,
        "fmt": args.format,
        "figure": args.figure,
        "overwrite": args.overwrite,
    }
    if is_cohort(args.image):
        if args.brain_mask:
            raise SSAEError("--brain-mask is for a single image; use --brain-masks for a folder or CSV of scans")
        if args.resume and args.overwrite:
            raise SSAEError("--resume keeps finished results and --overwrite redoes them: choose one")
        summary = detect_cohort(
            detector,
            args.image,
            args.output_dir,
            args.brain_masks,
            progress_log=args.progress_log,
            log=print,
            resume=args.resume,
            scheduler=args.scheduler,
            threads_per_scan=args.threads_per_scan,
            **options,
        )
        print(f"{summary.succeeded} of {summary.total} scan(s) done; cohort table: {summary.table}")
        if summary.failed:
            print(f"ssae: {summary.failed} scan(s) failed; their errors are in {summary.table}", file=sys.stderr)
            return 1
        return 0
    if args.brain_masks:
        raise SSAEError("--brain-masks is for a folder or CSV of scans; use --brain-mask for one image")
    if args.resume:
        raise SSAEError("--resume is for a folder or CSV of scans")
    if args.scheduler or args.threads_per_scan:
        raise SSAEError("--scheduler and --threads-per-scan are for a folder or CSV of scans")
    outcome = detect_one(detector, args.image, args.output_dir, args.brain_mask, progress_log=args.progress_log, **options)
    for warning in outcome.warnings:
        warn(warning)
    stats = outcome.result.statistics
    adapted = f", adapted in {outcome.result.adaptation.seconds:.1f} s" if outcome.result.adaptation else ""
    result = outcome.result
    rule = result.rule
    meaning = rule.healthy_meaning(result.brain_ml)
    small = result.small_lesions
    joined = f", {small.added} of them small lesions outside the voxel mask" if small is not None and small.added else ""
    print(
        f"{stats.count} lesion(s){joined}, {stats.total_ml:.2f} ml: {result.score_map} map above {rule.threshold:.4g} "
        f"({rule.operating_point}{'; on healthy brains: ' + meaning if meaning else ''}){adapted}"
    )
    for name, path in outcome.paths.items():
        print(f"{name:>12s}: {path}")
    return 0
