"""The ``ssae`` command line: train, adapt, calibrate, detect, evaluate, preprocess, info, demo.

Errors in the user's input end with one line on stderr and exit code 2, before any long work
where they can be known up front (flags, inputs, the output folder and its free space); an
interrupted training run exits with 130 after saving its resume state, an interrupted
detection with 130 and nothing under a final name.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

from . import __version__, defaults
from .arguments import (
    clip_value,
    fraction,
    nonnegative_float,
    nonnegative_int,
    odd_size,
    percentile,
    positive_float,
    positive_int,
    progress_log_path,
)
from .background import watch_stop_file
from .errors import SSAEError, TrainingInterrupted
from .operating_points import OPERATING_POINT_NAMES

EPILOG = "Every command accepts --help. Docs: README.md in the repository."
MAP_CHOICES = ("prior", "fused", "aggregated", "flair")


class _Parser(argparse.ArgumentParser):
    """argparse with the command line's error contract: one line on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ssae").strip()
        self.exit(2, f"ssae: error: {command + ': ' if command else ''}{message} (see --help)\n")


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N (default: auto)")


def _add_adaptation(parser: argparse.ArgumentParser, title: str) -> None:
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


def _add_operating_point(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--operating-point",
        choices=OPERATING_POINT_NAMES,
        help="the model card's label-free preset that turns the map into a mask, in healthy false-positive budgets (default: the card's, balanced)",
    )
    parser.add_argument(
        "--threshold",
        type=positive_float,
        help="a threshold in the map's own units instead of the operating point (its minimum lesion size still applies)",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ssae",
        description="Scale-space autoencoders for unsupervised anomaly segmentation in brain FLAIR MRI.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"ssae {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train",
        help="train a model on a folder of healthy scans",
        description=(
            "Train a scale-space (or plain) autoencoder on healthy FLAIR scans, level by level, calibrate its label-free "
            "thresholds and write one model file with its model card. The defaults are the shipped model's recipe."
        ),
    )
    train.add_argument("data", type=Path, help="folder of healthy scans (one subfolder per subject, or flat) or a CSV manifest")
    train.add_argument("-o", "--output", type=Path, required=True, help="model file to write (.safetensors)")
    train.add_argument(
        "--brain-masks",
        type=Path,
        help="folder of brain masks named after the subjects (else masks beside the scans, else a foreground mask)",
    )
    model = train.add_argument_group("model")
    model.add_argument(
        "--variant", choices=("dense", "spatial", "vae"), default="dense", help="bottleneck: dense AE, spatial AE or dense VAE"
    )
    model.add_argument(
        "--size",
        type=positive_int,
        default=defaults.TRAIN_SIZE,
        help=f"input size in pixels, a power of two (default: {defaults.TRAIN_SIZE})",
    )
    model.add_argument(
        "--levels",
        type=positive_int,
        default=defaults.TRAIN_LEVELS,
        help=f"pyramid levels; 1 trains a plain autoencoder (default: {defaults.TRAIN_LEVELS})",
    )
    model.add_argument(
        "--base-filters", type=positive_int, help="filters of the first convolution (default: 16 for scale-space, 32 for plain models)"
    )
    model.add_argument("--max-filters", type=positive_int, help="filter cap (default: 96 for scale-space, 128 for plain models)")
    model.add_argument("--latent-dim", type=positive_int, default=128, help="dense bottleneck size (default: 128)")
    prep = train.add_argument_group("preprocessing (stored in the model card; detection repeats it)")
    prep.add_argument(
        "--atlas",
        action=argparse.BooleanOptionalAction,
        default=defaults.TRAIN_ATLAS,
        help="register every scan to the MNI152 template and work on the atlas's slice grid (default: on)",
    )
    prep.add_argument(
        "--bias-correction",
        action=argparse.BooleanOptionalAction,
        default=defaults.TRAIN_BIAS_CORRECTION,
        help="N4 bias-field correction first (default: on)",
    )
    prep.add_argument(
        "--clip-max",
        type=clip_value,
        default=defaults.TRAIN_CLIP_MAX,
        help="upper clip of the normalised intensities, or 'none' to keep lesions brighter than the 98th percentile unsaturated (default: none)",
    )
    fit = train.add_argument_group("optimisation")
    fit.add_argument(
        "--epochs", type=positive_int, default=defaults.TRAIN_EPOCHS, help=f"maximum epochs per level (default: {defaults.TRAIN_EPOCHS})"
    )
    fit.add_argument(
        "--patience",
        type=positive_int,
        default=defaults.TRAIN_PATIENCE,
        help=f"early stopping: epochs without improvement (default: {defaults.TRAIN_PATIENCE})",
    )
    fit.add_argument("--batch-size", type=positive_int, default=8, help="slices per batch (default: 8)")
    fit.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    fit.add_argument("--val-fraction", type=fraction, default=0.2, help="share of subjects held out for validation (default: 0.2)")
    fit.add_argument("--seed", type=nonnegative_int, default=0, help="random seed, recorded in the model card (default: 0)")
    fit.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (default: on with CUDA, off on CPU)"
    )
    post = train.add_argument_group("detection settings stored in the model card")
    post.add_argument(
        "--threshold-percentile",
        type=percentile,
        default=99.9,
        help="label-free threshold: this percentile of healthy validation scores (default: 99.9)",
    )
    post.add_argument(
        "--score-map", choices=MAP_CHOICES, default=defaults.DEFAULT_SCORE_MAP, help="the map that draws the lesion mask (default: prior)"
    )
    post.add_argument(
        "--median-size", type=odd_size, default=5, help="3D median filter size in full-resolution voxels, 1 disables (default: 5)"
    )
    post.add_argument("--brain-erosion", type=nonnegative_int, default=2, help="in-plane erosion of the brain mask in pixels (default: 2)")
    post.add_argument("--min-lesion-mm3", type=nonnegative_float, default=10.0, help="drop mask components smaller than this (default: 10)")
    post.add_argument(
        "--prior-factor",
        type=positive_float,
        default=1.3,
        help="hyper-intensity prior: brighter than this times the scan's median brain intensity (default: 1.3)",
    )
    post.add_argument(
        "--prior-percentile", type=percentile, help="use the authors' prior instead: brighter than this percentile of the scan's brain"
    )
    post.add_argument("--fusion-exponent", type=nonnegative_float, default=6.0, help="fused map: aggregated x FLAIR^exponent (default: 6)")
    post.add_argument("--no-adapt-by-default", action="store_true", help="the model card does not ask detection to adapt to each scan")
    _add_adaptation(train, "scanner adaptation recorded in the model card (and used to calibrate its adapted thresholds)")
    run = train.add_argument_group("run")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run of the same output")
    run.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    run.add_argument("--cache-dir", type=Path, help="preprocessed-slice cache (default: $SSAE_CACHE_DIR or ~/.cache/ssae)")
    run.add_argument("--progress-log", type=progress_log_path, help="append JSON-lines progress events to this file")
    run.add_argument("--quiet", action="store_true", help="no progress bar on the terminal")
    _add_device(train)

    adapt = commands.add_parser(
        "adapt",
        help="adapt a model to a site's own scans",
        description=(
            "Fine-tune a copy of a model on a folder of a site's unlabelled scans (brain voxels above each scan's "
            "exclusion percentile left out of the loss) and write it as a new model file; the input model is never changed."
        ),
    )
    adapt.add_argument("model", type=Path, help="model file to start from (.safetensors)")
    adapt.add_argument("data", type=Path, help="folder of the site's scans or a CSV manifest")
    adapt.add_argument("-o", "--output", type=Path, required=True, help="adapted model file to write (.safetensors)")
    adapt.add_argument("--brain-masks", type=Path, help="folder of brain masks named after the scans")
    adapt.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    adapt.add_argument("--cache-dir", type=Path, help="preprocessed-slice cache (default: $SSAE_CACHE_DIR or ~/.cache/ssae)")
    adapt.add_argument("--progress-log", type=progress_log_path, help="append JSON-lines progress events (fraction, message; done) to this file")
    _add_adaptation(adapt, "adaptation")
    _add_device(adapt)

    calibrate = commands.add_parser(
        "calibrate",
        help="recalibrate a model's operating points on healthy scans",
        description=(
            "Measure how healthy brains score under a model (as trained and adapted to each scan, as detection runs) and "
            "write a copy of the model whose card holds the healthy tails, the percentile thresholds and the operating "
            "points. Use a site's own healthy controls, or the model's validation subjects (the default when DATA holds them)."
        ),
    )
    calibrate.add_argument("model", type=Path, help="model file to calibrate (.safetensors); it is never changed")
    calibrate.add_argument("data", type=Path, help="folder of healthy scans or a CSV manifest (lesion labels, where given, are left out)")
    calibrate.add_argument("-o", "--output", type=Path, required=True, help="calibrated model file to write (.safetensors)")
    calibrate.add_argument(
        "--subjects",
        help="comma-separated case names to calibrate on (default: the model's validation subjects if DATA has them all, else every case)",
    )
    calibrate.add_argument("--brain-masks", type=Path, help="folder of brain masks named after the cases")
    calibrate.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    calibrate.add_argument("--cache-dir", type=Path, help="preprocessed-slice cache (default: $SSAE_CACHE_DIR or ~/.cache/ssae)")
    _add_device(calibrate)

    detect = commands.add_parser(
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
    _add_operating_point(detect)
    detect.add_argument(
        "--adapt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="adapt a copy of the model to each scan before detecting (default: as the model card recommends)",
    )
    _add_adaptation(detect, "scanner adaptation (with --adapt)")
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
    _add_device(detect)

    evaluate = commands.add_parser(
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
    evaluate.add_argument("--overwrite", action="store_true", help="replace existing result files")
    _add_device(evaluate)

    prep = commands.add_parser(
        "preprocess",
        help="bias-correct and register raw scans to the atlas",
        description=(
            "N4 bias correction, registration to the MNI152 template and a brain mask for one scan or a folder of scans; "
            "writes the scan in atlas space, its brain mask on its own grid, the transform and a quality report."
        ),
    )
    prep.add_argument("input", type=Path, help="a FLAIR volume, a folder of scans or a CSV manifest")
    prep.add_argument("-o", "--output-dir", type=Path, required=True, help="folder for the results")
    prep.add_argument(
        "--brain-mask", type=Path, help="brain mask on the image's grid (single image only; else masks beside the scans are used)"
    )
    prep.add_argument("--brain-masks", type=Path, help="folder of brain masks named after the cases")
    prep.add_argument("--no-bias-correction", action="store_true", help="skip N4 bias-field correction")
    prep.add_argument("--overwrite", action="store_true", help="replace existing result files")

    info = commands.add_parser("info", help="print a model's card", description="Verify a model file's card and print it.")
    info.add_argument("model", type=Path, help="model file (.safetensors)")
    info.add_argument("--json", action="store_true", help="print the whole card as JSON")

    demo = commands.add_parser(
        "demo",
        help="run the built-in example end to end",
        description=(
            "Detect lesions in the MSLUB patient shipped with the repository with the shipped model, write maps, mask and "
            "figure, and score them against the consensus mask beside the intensity baselines."
        ),
    )
    demo.add_argument("-o", "--output-dir", type=Path, default=Path("demo-output"), help="folder for the results (default: ./demo-output)")
    demo.add_argument("--overwrite", action="store_true", help="replace results of an earlier demo run")
    _add_device(demo)
    return parser


def _adaptation_settings(args: argparse.Namespace, base):
    """The model card's (or the default) adaptation settings with the command line's changes."""
    from dataclasses import replace

    changes = {
        "epochs": args.adapt_epochs,
        "learning_rate": args.adapt_lr,
        "exclude_percentile": args.adapt_exclude_percentile,
        "seed": args.adapt_seed,
    }
    return replace(base, **{k: v for k, v in changes.items() if v is not None})


def _train(args: argparse.Namespace) -> None:
    from .datasets import default_cache_dir, find_cases, warn_if_labelled
    from .models import Architecture
    from .postprocessing import PostprocessingSettings
    from .preprocessing import PreprocessingSettings
    from .progress import ProgressLog, stderr_terminal
    from .training import TrainingConfig, train
    from .volume_io import check_output_folder

    scale_space = args.levels > 1
    arch = Architecture(
        variant=args.variant,
        size=args.size,
        levels=args.levels,
        base_filters=args.base_filters or (16 if scale_space else 32),
        max_filters=args.max_filters or (96 if scale_space else 128),
        latent_dim=args.latent_dim,
    )
    config = TrainingConfig(
        architecture=arch,
        preprocessing=PreprocessingSettings(size=args.size, atlas=args.atlas, bias_correction=args.bias_correction, clip_max=args.clip_max),
        postprocessing=PostprocessingSettings(
            median_size=args.median_size,
            median_per_level="scaled",
            brain_erosion=args.brain_erosion,
            prior_factor=None if args.prior_percentile is not None else args.prior_factor,
            prior_percentile=args.prior_percentile,
            fusion_exponent=args.fusion_exponent,
            min_lesion_mm3=args.min_lesion_mm3,
        ),
        max_epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        val_fraction=args.val_fraction,
        seed=args.seed,
        threshold_percentile=args.threshold_percentile,
        amp=args.amp,
        score_map=args.score_map,
        adaptation=_adaptation_settings(args, defaults.DEFAULT_ADAPTATION),
        adapt_by_default=not args.no_adapt_by_default,
    )
    cases = find_cases(args.data, args.brain_masks)
    warn_if_labelled(cases, _warn)
    check_output_folder(args.output.parent, 50_000_000)
    check_output_folder(args.cache_dir or default_cache_dir())
    progress = ProgressLog(args.progress_log, None if args.quiet else stderr_terminal())
    try:
        output = train(
            cases,
            config,
            args.output,
            device=args.device,
            resume=args.resume,
            overwrite=args.overwrite,
            cache_dir=args.cache_dir,
            progress=progress,
            data_summary={"dataset": _dataset_name(args.data)},
        )
    finally:
        progress.close()
    print(f"model written to {output}")


def _dataset_name(source: Path) -> str:
    """How model cards name a data set: the folder's or manifest's name, never a path."""
    return source.stem if source.is_file() else source.resolve().name


def _adapt(args: argparse.Namespace) -> None:
    from .adaptation import AdaptationSettings
    from .checkpoint import load_model
    from .datasets import default_cache_dir, find_cases
    from .devices import resolve_device
    from .progress import ProgressLog, stderr_terminal
    from .site_adaptation import adapt_to_site
    from .volume_io import check_output_folder, refuse_existing

    device = resolve_device(args.device)
    loaded = load_model(args.model, device)
    if args.output.resolve() == args.model.resolve():
        raise SSAEError("the adapted model must go to a new file; the model given is never changed")
    refuse_existing([args.output], args.overwrite)
    check_output_folder(args.output.parent, args.model.stat().st_size * 2)
    cases = find_cases(args.data, args.brain_masks)
    check_output_folder(args.cache_dir or default_cache_dir())
    base = loaded.card.adaptation.settings if loaded.card.adaptation is not None else AdaptationSettings()
    settings = _adaptation_settings(args, base)
    progress = ProgressLog(args.progress_log, stderr_terminal())
    try:
        report = adapt_to_site(
            loaded, cases, _dataset_name(args.data), settings, args.output, device, args.cache_dir, args.overwrite, progress
        )
        progress.event("done", model=str(args.output), duration_s=round(report.seconds, 1))
    finally:
        progress.close()
    print(
        f"adapted to {len(cases)} scan(s) in {report.seconds:.1f} s; masked loss per level "
        + ", ".join(f"{k}: {report.loss_before[k]:.5f} -> {report.loss_after[k]:.5f}" for k in report.loss_after)
    )
    print(f"model written to {args.output}")


def _calibrate(args: argparse.Namespace) -> None:
    from .calibration import calibrate_card
    from .checkpoint import load_model, save_model
    from .datasets import default_cache_dir, find_cases, load_slice_stack
    from .detection import Detector
    from .devices import resolve_device
    from .volume_io import check_output_folder, refuse_existing

    if args.output.resolve() == args.model.resolve():
        raise SSAEError("write the calibrated model to a new file; the model given is never changed")
    refuse_existing([args.output], args.overwrite)
    check_output_folder(args.output.parent, args.model.stat().st_size * 2)
    device = resolve_device(args.device)
    loaded = load_model(args.model, device)
    card = loaded.card
    cases = find_cases(args.data, args.brain_masks)
    check_output_folder(args.cache_dir or default_cache_dir())
    names = [c.name for c in cases]
    validation = list(card.training.get("data", {}).get("val_subjects") or [])
    if args.subjects:
        subjects = [name.strip() for name in args.subjects.split(",") if name.strip()]
        missing = [name for name in subjects if name not in names]
        if missing:
            raise SSAEError(f"--subjects names cases that {args.data} does not hold: {', '.join(missing)}")
    else:
        subjects = validation if validation and set(validation) <= set(names) else names
    chosen = [c for c in cases if c.name in subjects]
    stack = load_slice_stack(chosen, card.preprocessing, args.cache_dir, log=lambda m: print(m, file=sys.stderr))
    adaptation = card.adaptation.settings if card.adaptation is not None else defaults.DEFAULT_ADAPTATION
    enabled = card.adaptation.enabled if card.adaptation is not None else True
    percentile = card.calibration.percentile or 99.9
    detector = Detector(loaded.model, card, device)
    calibrate_card(card, detector, stack, subjects, percentile, adaptation, enabled, log=lambda m: print(m, file=sys.stderr))
    card.training = {**card.training, "calibration_data": {"dataset": _dataset_name(args.data), "subjects": subjects}}
    save_model(loaded.model, card, args.output, overwrite=args.overwrite)
    print(f"calibrated on {len(subjects)} healthy subject(s); model written to {args.output}")


def _detect(args: argparse.Namespace) -> int:
    from .batch import detect_cohort, detect_one, is_cohort
    from .detection import cached_detector

    detector = cached_detector(args.model, args.device, args.batch_size)
    if args.adapt is False and any(
        v is not None for v in (args.adapt_epochs, args.adapt_lr, args.adapt_exclude_percentile, args.adapt_seed)
    ):
        raise SSAEError("the --adapt-* settings need adaptation; drop --no-adapt")
    card_default = detector.default_adaptation()
    wanted = args.adapt if args.adapt is not None else card_default is not None
    base = card_default or (detector.card.adaptation.settings if detector.card.adaptation else defaults.DEFAULT_ADAPTATION)
    adaptation = _adaptation_settings(args, base) if wanted else None
    options = {
        "scales": not args.no_scales,
        "score_map": args.score_map,
        "threshold": args.threshold,
        "operating_point": args.operating_point,
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
            detector, args.image, args.output_dir, args.brain_masks, progress_log=args.progress_log, log=print, resume=args.resume, **options
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
    outcome = detect_one(detector, args.image, args.output_dir, args.brain_mask, progress_log=args.progress_log, **options)
    for warning in outcome.warnings:
        _warn(warning)
    stats = outcome.result.statistics
    adapted = f", adapted in {outcome.result.adaptation.seconds:.1f} s" if outcome.result.adaptation else ""
    rule = outcome.result.rule
    expected = rule.expected_false_positive_ml(outcome.result.brain_ml)
    healthy = f"; a healthy brain of this size would show about {expected:.2g} ml" if expected is not None else ""
    print(
        f"{stats.count} lesion(s), {stats.total_ml:.2f} ml: {outcome.result.score_map} map above {rule.threshold:.4g} "
        f"({rule.operating_point}{healthy}){adapted}"
    )
    for name, path in outcome.paths.items():
        print(f"{name:>12s}: {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> None:
    from .datasets import check_case_files, check_output_apart, find_cases
    from .detection import Detector
    from .evaluation import evaluate, report_paths, write_report
    from .lesion_metrics import RULE
    from .volume_io import check_output_folder, refuse_existing

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
    )
    for warning in report.warnings:
        _warn(warning)
    title = f"{detector.card.architecture.name} on {args.data.name} ({len(cases)} cases)"
    paths = write_report(report, args.output_dir, title, args.overwrite)
    print(f"{'map':24s}{'AUPRC':>8s}{'[DICE]':>9s}{'Dice@t':>9s}")
    for name, values in report.pooled.items():
        print(f"{name:24s}{_fmt(values.get('auprc')):>8s}{_fmt(values.get('best_dice')):>9s}{_fmt(values.get('dice_at_threshold')):>9s}")
    print("[DICE]: threshold chosen on the test labels (an upper bound); Dice@t: the map's percentile threshold")
    print(f"\nthe mask ({report.score_map} map, operating point {report.operating_point}) beside the label-free FLAIR rule, pooled:")
    print(f"{'':24s}{'Dice':>7s}{'sens':>7s}{'prec':>7s}{'F1':>7s}{'FP/scan':>9s}{'ml':>9s}{'true ml':>9s}")
    for name, counts in report.lesions.items():
        d = counts.to_dict()
        print(
            f"{name:24s}{_fmt(d['dice']):>7s}{_fmt(d['lesion_sensitivity']):>7s}{_fmt(d['lesion_precision']):>7s}{_fmt(d['lesion_f1']):>7s}"
            f"{_fmt(d['false_positive_lesions_per_case']):>9s}{d['mask_ml']:9.2f}{d['true_ml']:9.2f}"
        )
    print(f"lesions: {RULE}")
    for name, path in paths.items():
        print(f"{name:>10s}: {path}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _warn(message: str) -> None:
    print(f"ssae: warning: {message}", file=sys.stderr)


def _preprocess(args: argparse.Namespace) -> None:
    from .datasets import Case, check_output_apart, find_cases, is_dicom_folder, read_case_volumes, safe_case_name
    from .registration import align_to_atlas, alignment_warnings, atlas_space_image, bias_correct, write_transform
    from .volume_io import check_output_folder, refuse_existing, volume_bytes, volume_stem, write_json, write_volume

    if is_dicom_folder(args.input) or (args.input.is_file() and args.input.suffix.lower() != ".csv"):
        name = safe_case_name(args.input.name if args.input.is_dir() else volume_stem(args.input))
        cases = [Case(name=name, image=args.input, brain_mask=args.brain_mask)]
    else:
        if args.brain_mask:
            raise SSAEError("--brain-mask is for a single image; use --brain-masks for a folder")
        cases = find_cases(args.input, args.brain_masks)
    check_output_apart(args.output_dir, cases)
    names = ("atlas.nii.gz", "brainmask.nii.gz", "atlas_to_scan.tfm", "qc.json")
    refuse_existing([args.output_dir / f"{c.name}_{n}" for c in cases for n in names], args.overwrite)
    check_output_folder(args.output_dir, len(cases) * 30_000_000)
    for case in cases:
        image, brain, _ = read_case_volumes(case)
        check_output_folder(args.output_dir, 2 * volume_bytes(image))
        source = image if args.no_bias_correction else bias_correct(image, brain)
        alignment = align_to_atlas(source, brain)
        for warning in alignment_warnings(alignment):
            _warn(f"{case.name}: {warning}")
        out = {n: args.output_dir / f"{case.name}_{n}" for n in names}
        write_volume(atlas_space_image(source, alignment.transform), out["atlas.nii.gz"], args.overwrite)
        write_volume(alignment.brain_mask, out["brainmask.nii.gz"], args.overwrite)
        write_transform(alignment.transform, out["atlas_to_scan.tfm"], args.overwrite)
        report = {
            "case": case.name,
            "image": str(case.image),
            "bias_correction": not args.no_bias_correction,
            "seconds": round(alignment.seconds, 2),
            **alignment.quality.to_dict(),
        }
        write_json(report, out["qc.json"], args.overwrite)
        verdict = "ok" if alignment.quality.passed else "CHECK"
        print(
            f"{case.name}: {verdict} (template brain {alignment.quality.brain_inside_head:.0%} inside the head, "
            f"scales {', '.join(f'{v:.2f}' for v in alignment.quality.scales)}), {alignment.seconds:.1f} s"
        )


def _info(args: argparse.Namespace) -> None:
    import json

    from .card_file import verify_weights
    from .card_text import describe_card
    from .checkpoint import check_weights_fit_card, read_model_card

    card = read_model_card(args.model)
    verify_weights(args.model, card)
    check_weights_fit_card(args.model, card)
    print(json.dumps(card, indent=2) if args.json else describe_card(card))


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.output_dir, args.device, args.overwrite)


COMMANDS = {
    "train": _train,
    "adapt": _adapt,
    "calibrate": _calibrate,
    "detect": _detect,
    "evaluate": _evaluate,
    "preprocess": _preprocess,
    "info": _info,
    "demo": _demo,
}


def _terminate_as_interrupt(signum, frame) -> None:
    """SIGTERM (a GUI's Cancel, a scheduler's stop) unwinds like Ctrl-C: temporary files go."""
    raise KeyboardInterrupt


def run(argv: list[str]) -> int:
    """One command, start to finish, as an exit code (see the module doc); the process-wide
    set-up (signals, the stop file) is the caller's: :func:`main` or :mod:`ssae.worker`."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a flag refused with one line on stderr
        return int(exc.code or 0)
    try:
        return COMMANDS[args.command](args) or 0
    except TrainingInterrupted as exc:
        print(f"ssae: {exc}", file=sys.stderr)
        return 130
    except SSAEError as exc:
        print(f"ssae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssae: interrupted (files being written were removed)", file=sys.stderr)
        return 130


def interrupt_on_terminate() -> object | None:
    """SIGTERM and SIGINT unwind like Ctrl-C (training turns them into a saved resume state
    itself); returns the previous SIGTERM handler, None where signals cannot be set."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the parent's group ignores Ctrl-C
    except ValueError:  # not the main thread (embedded use): leave signals alone
        return None
    return previous


class ReaderMayLeave:
    """Standard output of a command line whose reader may go away (``ssae detect ... | head``):
    the command still finishes its work (results and tables written, the real exit code), only
    its printing stops. Without this the first line after ``head`` exits would end the run."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._leave()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._leave()

    def _leave(self) -> None:
        self._gone = True
        try:  # what is still buffered must not fail again when the interpreter exits
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    original = sys.stdout
    if original is not None and not isinstance(original, ReaderMayLeave):
        sys.stdout = ReaderMayLeave(original)
    previous = interrupt_on_terminate()
    watch_stop_file()  # a GUI's Cancel (ssae.background): behaves like Ctrl-C
    try:
        return run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        sys.stdout = original


if __name__ == "__main__":
    sys.exit(main())
