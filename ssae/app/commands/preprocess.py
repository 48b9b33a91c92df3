"""``ssae preprocess``: bias correction, registration to the atlas and its quality report,
for users who want to check the alignment before detection.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ssae.app.commands.common import warn
from ssae.io.errors import SSAEError


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    prep = subcommands.add_parser(
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
    prep.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ssae.io.cases import Case, check_output_apart, find_cases, is_dicom_folder, read_case_volumes, safe_case_name
    from ssae.io.volumes import volume_stem
    from ssae.io.writing import check_output_folder, refuse_existing, volume_bytes, write_json, write_volume
    from ssae.preprocessing.atlas import atlas_space_image, write_transform
    from ssae.preprocessing.bias_field import bias_correct
    from ssae.preprocessing.registration import align_to_atlas
    from ssae.preprocessing.registration_check import alignment_warnings

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
            warn(f"{case.name}: {warning}")
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
