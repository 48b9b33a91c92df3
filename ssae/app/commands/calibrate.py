"""``ssae calibrate``: a copy of a model whose card holds healthy tails and operating points
measured on healthy scans (a site's controls, or the model's validation subjects).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssae.app.commands.common import add_device, dataset_name
from ssae.io.errors import SSAEError
from ssae.training import defaults


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    calibrate = subcommands.add_parser(
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
    add_device(calibrate)
    calibrate.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ssae.detection.detector import Detector
    from ssae.io.cases import check_case_files, find_cases
    from ssae.io.writing import check_output_file, check_output_folder
    from ssae.models.checkpoint import load_model, save_model
    from ssae.models.devices import resolve_device
    from ssae.training.calibration import calibrate_card
    from ssae.training.slice_cache import default_cache_dir, healthy_scans

    device = resolve_device(args.device)
    loaded = load_model(args.model, device)  # a missing or foreign model file is refused first
    card = loaded.card
    if args.output.resolve() == args.model.resolve():
        raise SSAEError("write the calibrated model to a new file; the model given is never changed")
    check_output_file(args.output, args.overwrite, args.model.stat().st_size * 2)
    cases = find_cases(args.data, args.brain_masks)
    check_output_folder(args.cache_dir or default_cache_dir())
    names = [c.name for c in cases]
    validation = list(card.training.get("data", {}).get("val_subjects") or [])
    if args.subjects:
        subjects = [name.strip() for name in args.subjects.split(",") if name.strip()]
        if not subjects:
            raise SSAEError(f"--subjects names no case: give comma-separated case names of {args.data}")
        missing = [name for name in subjects if name not in names]
        if missing:
            raise SSAEError(f"--subjects names cases that {args.data} does not hold: {', '.join(missing)}")
    else:
        subjects = validation if validation and set(validation) <= set(names) else names
    chosen = [c for c in cases if c.name in subjects]
    check_case_files(chosen)  # one bad scan is refused before the others' bias correction and registration
    adaptation = card.adaptation.settings if card.adaptation is not None else defaults.DEFAULT_ADAPTATION
    enabled = card.adaptation.enabled if card.adaptation is not None else True
    percentile = card.calibration.percentile or 99.9
    detector = Detector(loaded.model, card, device)
    cache_root = args.cache_dir or default_cache_dir()

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    calibrate_card(card, detector, lambda: healthy_scans(chosen, card.preprocessing, cache_root, log), percentile, adaptation, enabled, log=log)
    card.training = {**card.training, "calibration_data": {"dataset": dataset_name(args.data), "subjects": subjects}}
    save_model(loaded.model, card, args.output, overwrite=args.overwrite)
    print(f"calibrated on {len(subjects)} healthy subject(s); model written to {args.output}")
