"""``ssae train``: a model from a folder of healthy scans, with the shipped model's recipe as defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssae.app.arguments import (
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
from ssae.app.commands.common import MAP_CHOICES, adaptation_settings, add_adaptation, add_device, dataset_name, warn
from ssae.training import defaults


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    train = subcommands.add_parser(
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
    add_adaptation(train, "scanner adaptation recorded in the model card (and used to calibrate its adapted thresholds)")
    job = train.add_argument_group("run")
    job.add_argument("--resume", action="store_true", help="continue an interrupted run of the same output")
    job.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    job.add_argument("--cache-dir", type=Path, help="preprocessed-slice cache (default: $SSAE_CACHE_DIR or ~/.cache/ssae)")
    job.add_argument("--progress-log", type=progress_log_path, help="append JSON-lines progress events to this file")
    job.add_argument("--quiet", action="store_true", help="no progress bar on the terminal")
    add_device(train)
    train.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ssae.io.cases import check_case_files, find_cases, warn_if_labelled
    from ssae.io.progress import ProgressLog, stderr_terminal
    from ssae.io.writing import check_output_file, check_output_folder
    from ssae.models.settings import Architecture
    from ssae.preprocessing.slices import PreprocessingSettings
    from ssae.scoring.score_maps import PostprocessingSettings
    from ssae.training.config import TrainingConfig
    from ssae.training.slice_cache import default_cache_dir
    from ssae.training.trainer import train

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
        adaptation=adaptation_settings(args, defaults.DEFAULT_ADAPTATION),
        adapt_by_default=not args.no_adapt_by_default,
    )
    cases = find_cases(args.data, args.brain_masks)
    warn_if_labelled(cases, warn)
    check_case_files(cases)  # one bad scan is refused before the others are preprocessed
    check_output_file(args.output, True, 50_000_000)  # an existing model: the trainer's --resume / --overwrite decide
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
            data_summary={"dataset": dataset_name(args.data)},
        )
    finally:
        progress.close()
    print(f"model written to {output}")
