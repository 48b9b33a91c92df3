"""How well does ``ssae compare`` find what changed between two FLAIRs of one MS patient?

Data: the development pairs of ``../shared/data/longitudinal`` (two raw clinical FLAIRs per
patient, months apart, and an expert lesion-change mask in the set's common space with each
study's affine into it). For each pair, ``ssae compare``'s engine runs once (both detections
with the model card's adaptation, the rigid registration); then every candidate change rule is
applied to the registered pair, its change labelmap (1 or 2: the masks mark changed voxels
without saying which way) is carried into the common space with the follow-up's expert affine
(nearest neighbour) and scored against the change mask:

* voxel Dice;
* lesion-wise, by the MSSEG rule every lesion count of the project uses
  (ssae.scoring.lesion_metrics): true change lesions are the 26-connected components of the mask
  with at least 10 voxels of the common grid; a change lesion is found only by predicted changes
  that cover enough of it and lie mostly on it, a predicted change that lies mostly elsewhere is
  a false positive; sensitivity, precision, F1, false-positive changes per pair.

Candidates differ only in the parts of the rule with a free constant (ssae.scoring.change): the
threshold in noise SDs and the in-plane registration tolerance; drift scale, the lesion-like
intensity factor (the model card's prior factor) and the minimum size stay at their reasoned
values. Each also runs *on the follow-up's lesions*: a new or enlarging change is kept only
where it touches the follow-up's lesion mask as detection draws it (the voxel mask joined by the
small lesions of ssae.scoring.small_lesions), the question being whether the detection's path,
small lesions included, finds new lesions better than the change rule alone. Beside them the classic baseline: subtraction of the same registered, bias-corrected,
brain-median-normalised scans, |follow-up - baseline| > K inside the same brain, with the same
minimum size. Protocol: each pair's figures come from the rule (and K) chosen on the *other*
pair (highest lesion F1, then Dice); the shipped default is the rule chosen on both.

No-change pairs: the same scan twice, as a reader meets it when nothing changed, for each of the
development pairs' first studies and the shipped MSLUB patient 19: resampled half a voxel off on
a 2.5 mm grid; moved (2 degrees, 3 mm) and resampled on its own grid; stored with another
intensity offset and scale (0.6 x + 100); z-scored and copied, on a 2.5 mm grid. Every change
found there is false: new and enlarging lesions per pair are reported with the shipped rule
(goal: at most one). The data hold no scan-rescan pair.

    python bench/followup.py [--data ../shared/data/longitudinal] [--model FILE] [--no-change-only]

Writes report/followup.md (about 10 minutes on two CPU cores).
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from ssae.detection.detector import Detector
from ssae.detection.followup import PairOnGrid, apply_rule, compare_scans
from ssae.io.resources import default_model_path, resources_dir
from ssae.io.writing import write_text
from ssae.preprocessing.pair_registration import on_isotropic_grid
from ssae.scoring.change import ChangeRule
from ssae.scoring.lesion_metrics import MSSEG, lesion_counts

CONNECTED = np.ones((3, 3, 3), dtype=bool)
MIN_TRUE_VOXELS = 10
Z_VALUES = (2.0, 2.5, 3.0, 3.5)
TOLERANCES = (0, 1)
K_VALUES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8)


@dataclass
class Scores:
    dice: float
    sensitivity: float
    precision: float
    f1: float
    false_positives: int
    found: int
    true: int
    predicted: int

    def key(self) -> tuple[float, float]:
        return (self.f1, self.dice)

    def cells(self) -> str:
        return (
            f"{self.dice:.3f} | {self.sensitivity:.2f} ({self.found}/{self.true}) / {self.precision:.2f} / **{self.f1:.2f}** | "
            f"{self.false_positives}"
        )


def read_expert_affine(path: Path) -> sitk.AffineTransform:
    """The data set's study-to-common affine (an ITK matrix-offset transform, maybe in a composite)."""
    transform = sitk.ReadTransform(str(path))
    if isinstance(transform, sitk.CompositeTransform) or transform.GetName() == "CompositeTransform":
        transform = sitk.CompositeTransform(transform).GetNthTransform(0)
    parameters, fixed = transform.GetParameters(), transform.GetFixedParameters()
    return sitk.AffineTransform(parameters[:9], parameters[9:12], fixed[:3])


def score(predicted_common: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> Scores:
    """The MSSEG rule of ssae.scoring.lesion_metrics, true change lesions of at least MIN_TRUE_VOXELS voxels."""
    rule = replace(MSSEG, min_true_mm3=MIN_TRUE_VOXELS * float(np.prod(spacing)) - 1e-9)
    counts = lesion_counts(predicted_common > 0, truth > 0, spacing, rule)
    sensitivity = counts.sensitivity if counts.true_lesions else 0.0
    precision = 0.0 if np.isnan(counts.precision) else counts.precision
    f1 = 0.0 if np.isnan(counts.f1) else counts.f1
    dice = 1.0 if np.isnan(counts.dice) else counts.dice
    return Scores(dice, sensitivity, precision, f1, counts.false_positive_lesions, counts.found, counts.true_lesions, counts.mask_lesions)


def on_followup_lesions(labels: np.ndarray, lesions: np.ndarray) -> np.ndarray:
    """``labels`` with the new-or-enlarging changes that touch no follow-up lesion removed."""
    components, _ = ndimage.label(labels == 1, structure=CONNECTED)
    touching = np.unique(components[(components > 0) & lesions])
    kept = labels.copy()
    kept[(components > 0) & ~np.isin(components, touching)] = 0
    return kept


def subtraction_labels(pair: PairOnGrid, k: float, min_mm3: float) -> np.ndarray:
    changed = pair.brain & (np.abs(pair.followup - pair.baseline) > k)
    labels, _ = ndimage.label(changed, structure=CONNECTED)
    sizes = np.bincount(labels.ravel()) * float(np.prod(pair.reference.GetSpacing()))
    keep = sizes >= min_mm3
    keep[0] = False
    return keep[labels].astype(np.uint8)


def moved_on_own_grid(image: sitk.Image) -> sitk.Image:
    """``image`` turned by about 2 degrees and shifted 3 mm, resampled on its own grid."""
    motion = sitk.Euler3DTransform()
    motion.SetCenter(image.TransformContinuousIndexToPhysicalPoint([n / 2 for n in image.GetSize()]))
    motion.SetRotation(*np.radians((2.0, -1.5, 1.0)))
    motion.SetTranslation((3.0, -2.0, 1.5))
    return sitk.Resample(image, image, motion, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def z_scored(image: sitk.Image) -> sitk.Image:
    """``image`` minus the mean over its brighter part, divided by its SD (a common export)."""
    values = sitk.GetArrayFromImage(image).astype(np.float32)
    foreground = values > np.percentile(values, 60)
    result = sitk.GetImageFromArray((values - values[foreground].mean()) / values[foreground].std())
    result.CopyInformation(image)
    return result


def no_change_pairs(scan: sitk.Image) -> dict[str, tuple[sitk.Image, sitk.Image]]:
    """(baseline, follow-up) pairs of one scan in which nothing changed."""
    scan = sitk.Cast(scan, sitk.sitkFloat32)
    return {
        "resampled half a voxel off, 2.5 mm grid": (on_isotropic_grid(scan, 2.5, 1.25), on_isotropic_grid(scan, 2.5)),
        "moved 2 degrees, 3 mm": (moved_on_own_grid(scan), scan),
        "intensities 0.6 x + 100": (scan * 0.6 + 100.0, scan),
        "z-scored copy, 2.5 mm grid": (on_isotropic_grid(z_scored(scan), 2.5), on_isotropic_grid(z_scored(scan), 2.5)),
    }


def no_change_lines(detector: Detector, rule: ChangeRule, scans: dict[str, Path]) -> list[str]:
    """The report's table of false changes on no-change pairs, printed row by row as it runs."""
    lines = [
        "## No-change pairs: every change is false",
        "",
        "| scan | pair | false new | false enlarging | shrinking / resolved | increase ml | decrease ml | registration correlation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    worst = 0
    for name, path in scans.items():
        for kind, (baseline, followup) in no_change_pairs(sitk.ReadImage(str(path))).items():
            comparison = compare_scans(detector, baseline, followup, adaptation=detector.default_adaptation(), rule=rule)
            counts, volumes = comparison.counts, comparison.change_ml()
            worst = max(worst, counts["new"])
            lines.append(
                f"| {name} | {kind} | {counts['new']} | {counts['enlarging']} | {counts['shrinking']} / {counts['resolved']} | "
                f"{volumes['increase_ml']:.2f} | {volumes['decrease_ml']:.2f} | {comparison.alignment.correlation:.3f} |"
            )
            print(lines[-1], flush=True)
    lines += ["", f"At most {worst} false new lesion(s) on any no-change pair (goal: at most one).", ""]
    return lines


def _markdown(paragraph: str) -> str:
    """A docstring paragraph as one markdown paragraph, bullets kept on their own lines."""
    return re.sub(r"\n(?!\* )\s*", " ", paragraph.strip()).replace("``", "`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "longitudinal")
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=REPO / "report" / "followup.md")
    parser.add_argument("--no-change-only", action="store_true", help="only the no-change pairs (printed, no report written)")
    args = parser.parse_args()
    started = time.perf_counter()
    detector = Detector.from_file(args.model, args.device)
    default = ChangeRule(brighter_than=detector.card.postprocessing.prior_factor or ChangeRule.brighter_than)
    patients = sorted(p.name for p in args.data.iterdir() if (p / "gt.nii.gz").is_file())
    unchanged_scans = {f"{p} study 1": args.data / p / "study1_FLAIR.nii.gz" for p in patients}
    unchanged_scans["MSLUB patient 19 (shipped)"] = resources_dir() / "SampleData" / "MSLUB" / "patient19" / "flair.nii.gz"
    no_change = no_change_lines(detector, default, unchanged_scans)
    if args.no_change_only:
        return
    rules = {f"z {z:g}, tolerance {t}": ChangeRule(z=z, tolerance_voxels=t, brighter_than=default.brighter_than) for z in Z_VALUES for t in TOLERANCES}
    candidates = {**rules, **{f"{name}, on the follow-up's lesions": rule for name, rule in rules.items()}}
    ours: dict[str, dict[str, Scores]] = {name: {} for name in candidates}
    subtraction: dict[float, dict[str, Scores]] = {k: {} for k in K_VALUES}
    facts: dict[str, str] = {}
    for patient in patients:
        folder = args.data / patient
        t0 = time.perf_counter()
        baseline = sitk.ReadImage(str(folder / "study1_FLAIR.nii.gz"))
        followup = sitk.ReadImage(str(folder / "study2_FLAIR.nii.gz"))
        comparison = compare_scans(detector, baseline, followup, adaptation=detector.default_adaptation(), rule=default)
        truth_image = sitk.ReadImage(str(folder / "gt.nii.gz"))
        truth = sitk.GetArrayFromImage(truth_image)
        to_common = read_expert_affine(folder / "study2_FLAIR_to_common_space.txt")

        def in_common(labels: np.ndarray) -> np.ndarray:
            image = sitk.GetImageFromArray(labels.astype(np.uint8))
            image.CopyInformation(followup)
            return sitk.GetArrayFromImage(sitk.Resample(image, truth_image, to_common, sitk.sitkNearestNeighbor, 0))

        spacing = truth_image.GetSpacing()
        for name, rule in rules.items():
            labels = apply_rule(comparison.on_grid, rule).labels
            ours[name][patient] = score(in_common(labels), truth, spacing)
            on_lesions = on_followup_lesions(labels, comparison.on_grid.followup_lesions)
            ours[f"{name}, on the follow-up's lesions"][patient] = score(in_common(on_lesions), truth, spacing)
        for k in K_VALUES:
            subtraction[k][patient] = score(in_common(subtraction_labels(comparison.on_grid, k, default.min_change_mm3)), truth, spacing)
        alignment = comparison.alignment
        facts[patient] = (
            f"registration correlation {alignment.correlation:.2f}, brain overlap {alignment.brain_overlap:.3f}; "
            f"noise {comparison.noise:.3f} x brain median; {time.perf_counter() - t0:.0f} s"
        )
        print(patient, facts[patient], flush=True)

    def chosen(table: dict, on: list[str]):
        return max(table, key=lambda c: tuple(np.mean([table[c][p].key()[i] for p in on]) for i in range(2)))

    lines = [
        "# Follow-up study: what changed between two FLAIRs of one patient",
        "",
        f"Generated by `python bench/followup.py` (do not edit by hand). Model: `{args.model.name}`; machine: "
        f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.python_version()}; {time.perf_counter() - started:.0f} s.",
        "",
        *(_markdown(paragraph) + "\n" for paragraph in __doc__.split("\n\n")[1:5]),
        "",
        "Pairs: " + "; ".join(f"{p} ({facts[p]})" for p in patients) + ".",
        "",
        "## Held out: each pair with the rule chosen on the other",
        "",
        "| pair | rule chosen on the other pair | Dice | lesion sens. (found) / prec. / F1 | false-positive changes | "
        "subtraction K chosen on the other | Dice | lesion sens. (found) / prec. / F1 | false-positive changes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for patient in patients:
        others = [p for p in patients if p != patient]
        rule_name, k = chosen(ours, others), chosen(subtraction, others)
        lines.append(f"| {patient} | {rule_name} | {ours[rule_name][patient].cells()} | K {k:g} | {subtraction[k][patient].cells()} |")
    rule_name, k = chosen(ours, patients), chosen(subtraction, patients)
    shipped = (
        "the shipped default"
        if candidates[rule_name] == default and not rule_name.endswith("lesions")
        else f"NOT the shipped default ({default.describe()})"
    )
    lines += [
        "",
        f"**Chosen on both pairs**: {rule_name}, i.e. {candidates[rule_name].describe()}; this is {shipped}. "
        f"Subtraction chosen on both: K {k:g}.",
        "",
        *no_change,
        "## Every candidate on every pair",
        "",
        "| candidate | " + " | ".join(f"{p}: Dice \\| sens. / prec. / F1 \\| FP" for p in patients) + " |",
        "|---|" + "---|" * len(patients),
    ]
    for name in candidates:
        lines.append(f"| ssae compare, {name} | " + " | ".join(ours[name][p].cells().replace(" | ", " \\| ") for p in patients) + " |")
    for k in K_VALUES:
        lines.append(f"| subtraction, K {k:g} | " + " | ".join(subtraction[k][p].cells().replace(" | ", " \\| ") for p in patients) + " |")
    write_text("\n".join(lines) + "\n", args.output, overwrite=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
