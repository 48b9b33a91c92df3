"""``ssae adapt``: a copy of a model fine-tuned on a site's own unlabelled scans."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssae.app.arguments import progress_log_path
from ssae.app.commands.common import adaptation_settings, add_adaptation, add_device, dataset_name
from ssae.io.errors import SSAEError


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    adapt = subcommands.add_parser(
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
    adapt.add_argument(
        "--progress-log", type=progress_log_path, help="append JSON-lines progress events (fraction, message; done) to this file"
    )
    add_adaptation(adapt, "adaptation")
    add_device(adapt)
    adapt.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ssae.io.cases import check_case_files, find_cases
    from ssae.io.progress import ProgressLog, stderr_terminal
    from ssae.io.writing import check_output_file, check_output_folder
    from ssae.models.checkpoint import load_model
    from ssae.models.devices import resolve_device
    from ssae.models.settings import AdaptationSettings
    from ssae.training.site_adaptation import adapt_to_site
    from ssae.training.slice_cache import default_cache_dir

    device = resolve_device(args.device)
    loaded = load_model(args.model, device)
    if args.output.resolve() == args.model.resolve():
        raise SSAEError("the adapted model must go to a new file; the model given is never changed")
    check_output_file(args.output, args.overwrite, args.model.stat().st_size * 2)
    cases = find_cases(args.data, args.brain_masks)
    check_case_files(cases)
    check_output_folder(args.cache_dir or default_cache_dir())
    base = loaded.card.adaptation.settings if loaded.card.adaptation is not None else AdaptationSettings()
    settings = adaptation_settings(args, base)
    progress = ProgressLog(args.progress_log, stderr_terminal())
    try:
        report = adapt_to_site(
            loaded, cases, dataset_name(args.data), settings, args.output, device, args.cache_dir, args.overwrite, progress
        )
        progress.event("done", model=str(args.output), duration_s=round(report.seconds, 1))
    finally:
        progress.close()
    print(
        f"adapted to {len(cases)} scan(s) in {report.seconds:.1f} s; masked loss per level "
        + ", ".join(f"{k}: {report.loss_before[k]:.5f} -> {report.loss_after[k]:.5f}" for k in report.loss_after)
    )
    print(f"model written to {args.output}")
