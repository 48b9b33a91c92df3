"""``ssae evaluate``: the model's maps and mask scored on a labelled data set beside the FLAIR
baselines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssae.app.commands.common import add_device, add_min_lesion_size, fmt, warn
from ssae.scoring.operating_points import OPERATING_POINT_NAMES
from ssae.training import defaults


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    evaluate = subcommands.add_parser(
        "evaluate",
        help="metrics on a labelled test set",
        description=(
            "Detect on every labelled scan of a data set and write AUPRC, [DICE], Dice at the label-free threshold (per case "
            "and pooled) for every score map and both intensity baselines, and a PR curve."
        ),
    )
    evaluate.add_argument("model", type=Path, help="model file (.safetensors)")
    evaluate.add_argument(
        "data", type=Path, help="folder of labelled scans (MSLUB, BraTS layouts) or a CSV manifest (image, label, brain_mask)"
    )
    evaluate.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=Path("ssae-evaluation"),
        help="folder for metrics.json, cases.csv, pr_curve.png (default: ./ssae-evaluation)",
    )
    evaluate.add_argument("--brain-masks", type=Path, help="folder of brain masks named after the cases")
    evaluate.add_argument(
        "--adapt", action=argparse.BooleanOptionalAction, default=None, help="adapt to each scan (default: as the model card recommends)"
    )
    evaluate.add_argument("--no-scales", action="store_true", help="no per-level maps")
    evaluate.add_argument(
        "--operating-point", choices=OPERATING_POINT_NAMES, help="the preset that draws the mask being scored (default: the model card's)"
    )
    add_min_lesion_size(evaluate)
    evaluate.add_argument("--overwrite", action="store_true", help="replace existing result files")
    add_device(evaluate)
    evaluate.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ssae.detection.detector import Detector
    from ssae.evaluation.labelled_sets import evaluate, report_paths, write_report
    from ssae.io.cases import check_case_files, check_output_apart, find_cases
    from ssae.io.writing import check_output_folder, refuse_existing
    from ssae.scoring.lesion_metrics import BAND_NAMES, RULE

    refuse_existing(list(report_paths(args.output_dir).values()), args.overwrite)
    check_output_folder(args.output_dir, 10_000_000)
    cases = find_cases(args.data, args.brain_masks)
    check_output_apart(args.output_dir, cases)
    check_case_files(cases, need_label=True)  # every label on its image's grid and a real mask, before any detection
    detector = Detector.from_file(args.model, args.device)
    adaptation = detector.default_adaptation() if args.adapt is not False else None
    if args.adapt and adaptation is None:
        adaptation = detector.card.adaptation.settings if detector.card.adaptation else defaults.DEFAULT_ADAPTATION
    report = evaluate(
        detector,
        cases,
        adaptation=adaptation,
        scales=not args.no_scales,
        log=lambda m: print(m, file=sys.stderr),
        operating_point=args.operating_point,
        min_lesion_mm3=args.min_lesion_mm3,
    )
    for warning in report.warnings:
        warn(warning)
    title = f"{detector.card.architecture.name} on {args.data.name} ({len(cases)} cases)"
    paths = write_report(report, args.output_dir, title, args.overwrite)
    print(f"{'map':24s}{'AUPRC':>8s}{'[DICE]':>9s}{'Dice@t':>9s}")
    for name, values in report.pooled.items():
        print(f"{name:24s}{fmt(values.get('auprc')):>8s}{fmt(values.get('best_dice')):>9s}{fmt(values.get('dice_at_threshold')):>9s}")
    print("[DICE]: threshold chosen on the test labels (an upper bound); Dice@t: the map's percentile threshold")
    print(f"\nthe mask ({report.score_map} map, operating point {report.operating_point}) beside the label-free FLAIR rule, pooled:")
    bands = "".join(f"{'sens ' + band.replace(' mm3', ''):>13s}" for band in BAND_NAMES)
    print(f"{'':24s}{'Dice':>7s}{'found':>9s}{'sens':>7s}{'prec':>7s}{'F1':>7s}{bands}{'FP/scan':>9s}{'ml':>9s}{'true ml':>9s}")
    for name, counts in report.lesions.items():
        d = counts.to_dict()
        found = f"{d['found']}/{d['true_lesions']}"
        by_size = "".join(f"{fmt(v):>13s}" for v in d["sensitivity_by_size"].values())
        print(
            f"{name:24s}{fmt(d['dice']):>7s}{found:>9s}{fmt(d['lesion_sensitivity']):>7s}{fmt(d['lesion_precision']):>7s}"
            f"{fmt(d['lesion_f1']):>7s}{by_size}{fmt(d['false_positive_lesions_per_case']):>9s}{d['mask_ml']:9.2f}{d['true_ml']:9.2f}"
        )
    print(f"lesions: {RULE}")
    for name, path in paths.items():
        print(f"{name:>10s}: {path}")
