"""The ``ssae`` command line: train, detect, evaluate, info, demo.

Errors in the user's input end with one line on stderr and exit code 2; an interrupted
training run exits with 130 after saving its resume state.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .errors import SSAEError, TrainingInterrupted

EPILOG = "Every command accepts --help. Docs: README.md in the repository."


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N (default: auto)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssae",
        description="Scale-space autoencoders for unsupervised anomaly segmentation in brain FLAIR MRI.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"ssae {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train",
        help="train a model on a folder of healthy scans",
        description="Train a scale-space (or plain) autoencoder on healthy FLAIR scans, level by level, and write one model file with its model card.",
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
        "--variant",
        choices=("dense", "spatial", "vae"),
        default="dense",
        help="bottleneck: dense AE, spatial AE or dense VAE (default: dense)",
    )
    model.add_argument("--size", type=int, default=256, help="input size in pixels, a power of two (default: 256)")
    model.add_argument("--levels", type=int, default=4, help="pyramid levels; 1 trains a plain single-resolution autoencoder (default: 4)")
    model.add_argument(
        "--base-filters", type=int, help="filters of the first convolution (default: 16 for scale-space, 32 for plain models)"
    )
    model.add_argument("--max-filters", type=int, help="filter cap (default: 96 for scale-space, 128 for plain models)")
    model.add_argument("--latent-dim", type=int, default=128, help="dense bottleneck size (default: 128)")
    prep = train.add_argument_group("preprocessing (stored in the model card; detection repeats it)")
    prep.add_argument(
        "--atlas",
        action="store_true",
        help="register every scan to the MNI152 template and work on the atlas's slice grid (for raw scans with skull and any orientation)",
    )
    prep.add_argument("--bias-correction", action="store_true", help="N4 bias-field correction before everything else")
    fit = train.add_argument_group("optimisation")
    fit.add_argument("--epochs", type=int, default=100, help="maximum epochs per level (default: 100)")
    fit.add_argument("--patience", type=int, default=5, help="early stopping: epochs without validation improvement (default: 5)")
    fit.add_argument("--batch-size", type=int, default=8, help="slices per batch (default: 8)")
    fit.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    fit.add_argument("--val-fraction", type=float, default=0.2, help="share of subjects held out for validation (default: 0.2)")
    fit.add_argument("--seed", type=int, default=0, help="random seed, recorded in the model card (default: 0)")
    fit.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (default: on with CUDA, off on CPU)"
    )
    post = train.add_argument_group("detection settings stored in the model card")
    post.add_argument(
        "--threshold-percentile",
        type=float,
        default=99.9,
        help="label-free threshold: this percentile of healthy validation scores (default: 99.9)",
    )
    post.add_argument("--median-size", type=int, default=5, help="3D median filter size in voxels, 1 disables (default: 5)")
    post.add_argument("--brain-erosion", type=int, default=2, help="in-plane erosion of the brain mask in pixels (default: 2)")
    post.add_argument("--min-lesion-mm3", type=float, default=10.0, help="drop mask components smaller than this (default: 10)")
    post.add_argument("--hyperintensity-prior", action="store_true", help="zero scores below the 90th brain intensity percentile")
    run = train.add_argument_group("run")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run of the same output")
    run.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    run.add_argument("--cache-dir", type=Path, help="preprocessed-slice cache (default: $SSAE_CACHE_DIR or ~/.cache/ssae)")
    run.add_argument("--progress-log", type=Path, help="append JSON-lines progress events to this file")
    run.add_argument("--quiet", action="store_true", help="no progress bar on the terminal")
    _add_device(train)

    detect = commands.add_parser(
        "detect",
        help="anomaly maps and lesion mask for one volume",
        description="Run a model on one FLAIR volume; write residual maps per level, the aggregated score, the lesion mask (all on the input's grid) and a JSON summary.",
    )
    detect.add_argument("model", type=Path, help="model file (.safetensors)")
    detect.add_argument("image", type=Path, help="FLAIR volume (NIfTI, NRRD, MHA, ... or a DICOM series folder)")
    detect.add_argument(
        "-o", "--output-dir", type=Path, default=Path("ssae-output"), help="folder for the results (default: ./ssae-output)"
    )
    detect.add_argument("--brain-mask", type=Path, help="brain mask on the image's grid (default: robust foreground mask)")
    detect.add_argument("--threshold", type=float, help="lesion threshold (default: the model's calibrated threshold)")
    detect.add_argument("--format", default="nii.gz", choices=("nii.gz", "nrrd", "nii", "mha"), help="output format (default: nii.gz)")
    detect.add_argument("--no-scales", action="store_true", help="write only the aggregated map and the mask")
    detect.add_argument("--figure", action="store_true", help="also write a PNG panel of the most anomalous slices")
    detect.add_argument("--batch-size", type=int, help="slices per forward pass (default: chosen for the device)")
    detect.add_argument("--progress-log", type=Path, help="append JSON-lines progress events (fraction, message) to this file")
    detect.add_argument("--overwrite", action="store_true", help="replace existing result files")
    _add_device(detect)

    evaluate = commands.add_parser(
        "evaluate",
        help="metrics on a labelled test set",
        description="Detect on every labelled scan of a data set and write AUPRC, [DICE], Dice at the calibrated threshold (per case and pooled), the intensity baseline, and a PR curve.",
    )
    evaluate.add_argument("model", type=Path, help="model file (.safetensors)")
    evaluate.add_argument(
        "data", type=Path, help="folder of labelled scans (MSLUB, BraTS layouts) or a CSV manifest (image, label, brain_mask)"
    )
    evaluate.add_argument(
        "-o", "--output-dir", type=Path, default=Path("ssae-evaluation"), help="folder for metrics.json, cases.csv, pr_curve.png"
    )
    evaluate.add_argument("--brain-masks", type=Path, help="folder of brain masks named after the cases")
    evaluate.add_argument("--threshold", type=float, help="threshold for Dice at threshold (default: the model's calibrated threshold)")
    evaluate.add_argument("--no-scales", action="store_true", help="evaluate only the aggregated map")
    evaluate.add_argument("--overwrite", action="store_true", help="replace existing result files")
    _add_device(evaluate)

    prep = commands.add_parser(
        "preprocess",
        help="bias-correct and register raw scans to the atlas",
        description="N4 bias correction, registration to the MNI152 template and a brain mask for one scan or a folder of scans; writes the scan in atlas space, its brain mask on its own grid, the transform and a quality report.",
    )
    prep.add_argument("input", type=Path, help="a FLAIR volume, a folder of scans or a CSV manifest")
    prep.add_argument("-o", "--output-dir", type=Path, required=True, help="folder for the results")
    prep.add_argument(
        "--brain-mask", type=Path, help="brain mask on the image's grid (single image only; else masks beside the scans are used)"
    )
    prep.add_argument("--brain-masks", type=Path, help="folder of brain masks named after the cases")
    prep.add_argument("--no-bias-correction", action="store_true", help="skip N4 bias-field correction")
    prep.add_argument("--overwrite", action="store_true", help="replace existing result files")

    info = commands.add_parser("info", help="print a model's card", description="Print the model card of a model file.")
    info.add_argument("model", type=Path, help="model file (.safetensors)")
    info.add_argument("--json", action="store_true", help="print the whole card as JSON")

    demo = commands.add_parser(
        "demo",
        help="run the built-in example end to end",
        description="Detect lesions in the MSLUB patient shipped with the repository with the shipped model, write maps, mask and figure, and score them against the consensus mask beside the intensity baseline.",
    )
    demo.add_argument("-o", "--output-dir", type=Path, default=Path("demo-output"), help="folder for the results (default: ./demo-output)")
    demo.add_argument("--overwrite", action="store_true", help="replace results of an earlier demo run")
    _add_device(demo)
    return parser


def _train(args: argparse.Namespace) -> None:
    from .datasets import find_cases
    from .models import Architecture
    from .postprocessing import PostprocessingSettings
    from .preprocessing import PreprocessingSettings
    from .progress import ProgressLog, stderr_terminal
    from .training import TrainingConfig, train

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
        preprocessing=PreprocessingSettings(size=args.size, atlas=args.atlas, bias_correction=args.bias_correction),
        postprocessing=PostprocessingSettings(
            median_size=args.median_size,
            brain_erosion=args.brain_erosion,
            hyperintensity_prior=args.hyperintensity_prior,
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
    )
    cases = find_cases(args.data, args.brain_masks)
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
            data_summary={"source": str(args.data)},
        )
    finally:
        progress.close()
    print(f"model written to {output}")


def _detect(args: argparse.Namespace) -> None:
    from .detection import Detector
    from .detection_files import detection_summary, output_paths, write_detection
    from .figures import detection_figure
    from .progress import ProgressLog
    from .volume_io import read_mask, read_volume, refuse_existing, volume_stem

    detector = Detector.from_file(args.model, args.device, args.batch_size)
    stem = volume_stem(args.image)
    levels = [] if args.no_scales else list(range(detector.card.architecture.levels))
    planned = list(output_paths(args.output_dir, stem, args.format, levels, atlas=detector.card.preprocessing.atlas).values())
    if args.figure:
        planned.append(args.output_dir / f"{stem}_figure.png")
    refuse_existing(planned, args.overwrite)  # before spending time on detection
    image = read_volume(args.image)
    mask = read_mask(args.brain_mask, image, "brain mask") if args.brain_mask else None
    progress = ProgressLog(args.progress_log) if args.progress_log else None
    report = (lambda fraction, message: progress.event("progress", fraction=round(fraction, 4), message=message)) if progress else None
    result = detector.detect(image, mask, threshold=args.threshold, scales=not args.no_scales, progress=report)
    _report_alignment(result.prepared.alignment, detector.card.modality)
    method = detector.card.threshold.method if args.threshold is None else "given on the command line"
    summary = detection_summary(result, str(args.image), detector.card.architecture.name, method)
    paths = write_detection(result, args.output_dir, stem, args.format, summary, args.overwrite)
    if args.figure:
        paths["figure"] = detection_figure(
            result,
            args.output_dir / f"{stem}_figure.png",
            f"{detector.card.architecture.name}: {args.image.name}",
            overwrite=args.overwrite,
        )
    if progress:
        progress.event("done", files={name: str(path) for name, path in paths.items()})
        progress.close()
    stats = result.statistics
    print(f"{stats.count} lesion(s), {stats.total_ml:.2f} ml at threshold {result.threshold:.4g}")
    for name, path in paths.items():
        print(f"{name:>12s}: {path}")


def _evaluate(args: argparse.Namespace) -> None:
    from .datasets import find_cases
    from .detection import Detector
    from .evaluation import evaluate, write_report
    from .volume_io import refuse_existing

    refuse_existing([args.output_dir / n for n in ("metrics.json", "cases.csv", "pr_curve.png")], args.overwrite)
    detector = Detector.from_file(args.model, args.device)
    cases = find_cases(args.data, args.brain_masks)
    report = evaluate(detector, cases, threshold=args.threshold, scales=not args.no_scales, log=lambda m: print(m, file=sys.stderr))
    paths = write_report(
        report, args.output_dir, f"{detector.card.architecture.name} on {args.data.name} ({len(cases)} cases)", args.overwrite
    )
    print(f"{'map':22s}{'AUPRC':>8s}{'[DICE]':>9s}{'Dice@t':>9s}")
    for name, values in report.pooled.items():
        at = values.get("dice_at_threshold")
        print(f"{name:22s}{values['auprc']:8.3f}{values['best_dice']:9.3f}{'-' if at is None else format(at, '.3f'):>9s}")
    print("[DICE]: threshold chosen on the test labels (upper bound); Dice@t: the model's label-free threshold")
    for name, path in paths.items():
        print(f"{name:>10s}: {path}")


def _warn(message: str) -> None:
    print(f"ssae: warning: {message}", file=sys.stderr)


def _report_alignment(alignment, modality: str = "FLAIR") -> None:
    """Warnings for a doubtful registration or an unexpected contrast (the run goes on)."""
    if alignment is None:
        return
    quality = alignment.quality
    if not quality.passed:
        _warn(f"registration check failed: {quality.message}; inspect the results before trusting them")
    if quality.contrast_warning:
        _warn(f"the model expects {modality}, but {quality.contrast_warning}")


def _preprocess(args: argparse.Namespace) -> None:
    from .datasets import Case, find_cases, read_case_volumes
    from .registration import align_to_atlas, atlas_space_image, bias_correct, write_transform
    from .volume_io import refuse_existing, volume_stem, write_json, write_volume

    if args.input.is_file() and args.input.suffix.lower() != ".csv":
        cases = [Case(name=volume_stem(args.input), image=args.input, brain_mask=args.brain_mask)]
    else:
        if args.brain_mask:
            raise SSAEError("--brain-mask is for a single image; use --brain-masks for a folder")
        cases = find_cases(args.input, args.brain_masks)
    names = ("atlas.nii.gz", "brainmask.nii.gz", "atlas_to_scan.tfm", "qc.json")
    refuse_existing([args.output_dir / f"{c.name}_{n}" for c in cases for n in names], args.overwrite)
    for case in cases:
        image, brain, _ = read_case_volumes(case)
        source = image if args.no_bias_correction else bias_correct(image, brain)
        alignment = align_to_atlas(source, brain)
        _report_alignment(alignment)
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
            f"{case.name}: {verdict} (template brain {alignment.quality.brain_inside_head:.0%} inside the head, scales {', '.join(f'{v:.2f}' for v in alignment.quality.scales)}), {alignment.seconds:.1f} s"
        )


def _info(args: argparse.Namespace) -> None:
    from .checkpoint import read_model_card

    card = read_model_card(args.model)
    if args.json:
        print(json.dumps(card, indent=2))
        return
    training = card.get("training", {})
    data = training.get("data", {})
    lines = [
        f"{card['name']}  ({card['parameters']:,} parameters, {card.get('modality', 'FLAIR')})",
        card.get("description") or "",
        f"input: {card['preprocessing']['size']} px, {card['architecture']['levels']} level(s), orientation {card['preprocessing'].get('orientation')}, "
        f"{card['preprocessing']['percentile']:g}th-percentile normalisation",
        f"threshold: {card['threshold']['value']:.5g} ({card['threshold']['method']})",
        f"aggregated levels: {card['aggregated_levels']}; post-processing: {card['postprocessing']}",
        f"trained on: {data.get('source', '?')} ({data.get('subjects', '?')} subjects, {data.get('train_slices', '?')} training / {data.get('val_slices', '?')} validation slices)",
        f"epochs per level: {training.get('epochs_per_level')}; best validation loss: {training.get('best_val_loss_per_level')}",
        f"validation l1 per level: {card.get('fidelity', {}).get('l1_per_level')}",
        f"seed {training.get('seed')}, device {training.get('device')}, {training.get('duration_s')} s; versions {card.get('versions')}",
        "layers:",
        *("  " + line for line in card.get("layers", [])),
    ]
    print("\n".join(line for line in lines if line))


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.output_dir, args.device, args.overwrite)


COMMANDS = {"train": _train, "detect": _detect, "evaluate": _evaluate, "preprocess": _preprocess, "info": _info, "demo": _demo}


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except TrainingInterrupted as exc:
        print(f"ssae: {exc}", file=sys.stderr)
        return 130
    except SSAEError as exc:
        print(f"ssae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssae: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
