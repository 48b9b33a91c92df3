"""Which label-free rule should draw the mask a reader counts lesions on?

The map study (bench/quality.py) chose the map; this study chooses how it becomes a mask,
without labels at detection time, and scores the *mask*: voxel Dice beside the map's oracle
[DICE], and lesion-wise sensitivity (overall and per size band) / precision / F1 and false
lesions per scan, counted with the MSSEG rule that merging cannot inflate
(ssae.scoring.lesion_metrics.RULE). Every candidate is the engine's own rule
(ssae.scoring.mask_drawing.draw_lesions) on the model card's map after the card's scanner
adaptation, on each scan's own grid:

* the voxel mask: the threshold that a healthy false-positive budget of healthy brain voxels
  exceeds (the card's adapted healthy tail, measured on the healthy subjects' own grids), with
  hysteresis seeds at a stricter budget or without;
* joined, or not, by small lesions (ssae.scoring.small_lesions): compact bright spots of the
  scan's own voxels, far enough from fluid and deep enough below the brain's surface, at least as
  bright as a share of the median brightness of the scan's own voxel-mask lesions, and, in a scan
  where the voxel mask found none, as bright as only a few spots of a healthy brain;
* the label-free FLAIR rule every user could apply instead: brain z-score of the FLAIR > K,
  components of at least 10 mm3.

Protocol (as the map study): no choice is scored on the data set it was made on. Each data set's
figure comes from the candidate chosen on the other two; the shipped default is the candidate
chosen on all three. A mask must first get the lesion *volume* right, then count lesions well:
the criterion is the highest mean lesion F1 among the candidates whose Dice reaches 0.85 x the
oracle [DICE] of the card's map on every choosing data set (where none does, the best worst
Dice/[DICE]). The two other presets are the
default moved along one axis each: *sensitive* keeps small lesions down to 0.1 less brightness
(more small lesions, more false ones: what a reader counting MS lesions wants); *specific*
halves the healthy budget and leaves small lesions out.

    python bench/operating_point.py [--model FILE] [--data ../shared/data]

Writes report/operating_point.md and report/operating_point/{candidates.csv,selection.json};
needs a model card calibrated on the scans' own grids (``ssae calibrate``, format 4). About 30
minutes on two CPU cores with bench/quality.py's cache (report/quality/work) in place.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from devsets import ADAPTATIONS, DevCase, load_cases, residuals_for, weights_digest

from ssae.detection.detector import Detector, small_lesion_evidence
from ssae.io.resources import default_model_path
from ssae.scoring.baselines import flair_rule_mask
from ssae.scoring.lesion_metrics import BAND_NAMES, RULE, LesionCounts, lesion_counts
from ssae.scoring.lesions import label_lesions
from ssae.scoring.mask_drawing import SmallLesionEvidence, draw_lesions
from ssae.scoring.metrics import best_dice
from ssae.scoring.operating_points import MaskRule, OperatingPoint
from ssae.scoring.score_maps import input_grid_maps, score_maps
from ssae.scoring.small_lesions import SmallLesionRule, small_lesion_mask

BUDGETS = (0.015, 0.02, 0.03)
SEEDS = (None, 0.001, 0.0005)
BRIGHTNESS = (0.95, 1.0, 1.05, 1.1)
FALLBACKS = (None, 20)
MIN_CSF_MM = (3.0, 4.0, 5.0)
MIN_DEPTH_MM = (3.0, 5.0)
FLAIR_K = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5)
CRITERION = "highest mean lesion F1 with Dice >= 0.85 x [DICE] on every choosing data set (else the best worst Dice/[DICE])"
DICE_FLOOR = 0.85


@dataclass
class Scan:
    """One development case as the study needs it, on its own grid."""

    dataset: str
    name: str
    score: sitk.Image  # the card's map
    evidence: SmallLesionEvidence
    truth: np.ndarray
    counted: np.ndarray  # brain mask plus lesion voxels: the voxels a Dice or [DICE] is measured on
    image: sitk.Image
    brain_mask: sitk.Image

    @property
    def spacing(self) -> tuple[float, ...]:
        return self.score.GetSpacing()


@dataclass(frozen=True)
class Candidate:
    """A rule of the study: a voxel mask (budget, seeds) and, or not, a small-lesion rule."""

    budget: float
    seed: float | None
    small: SmallLesionRule | None

    @property
    def name(self) -> str:
        seeds = f"; seeds at {_pct(self.seed)}" if self.seed else ""
        if self.small is None:
            return f"healthy {_pct(self.budget)}{seeds}"
        s = self.small
        fallback = f", fallback {s.fallback_budget}/brain" if s.fallback_budget else ""
        return f"healthy {_pct(self.budget)}{seeds}; small >= {s.brightness:g} x lesions, csf {s.min_csf_mm:g}, depth {s.min_depth_mm:g}{fallback}"

    def point(self) -> OperatingPoint:
        return OperatingPoint(self.budget, self.seed, 0.0, self.small)


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g} %"


def prepare_scans(detector: Detector, devs: list[DevCase], work: Path, digest: str, log) -> list[Scan]:
    card = detector.card
    post = card.postprocessing
    key = next(k for k, v in ADAPTATIONS.items() if v == card.adaptation.settings)
    scans = []
    for dev in devs:
        log(f"maps of {dev.dataset} {dev.case.name}")
        residuals = residuals_for(detector, dev, key, work, digest, {})
        p = dev.prepared
        maps, intensities = input_grid_maps(score_maps(residuals, p.intensities, p.brain, post), p, post)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(dev.case.label))) > 0
        scans.append(
            Scan(
                dataset=dev.dataset,
                name=dev.case.name,
                score=maps[card.score_map],
                evidence=small_lesion_evidence(intensities),
                truth=truth,
                counted=intensities.brain | truth,
                image=dev.image,
                brain_mask=p.brain_mask,
            )
        )
    return scans


def oracle_dice(scans: list[Scan], dataset: str) -> float:
    mine = [s for s in scans if s.dataset == dataset]
    scores = np.concatenate([sitk.GetArrayViewFromImage(s.score)[s.counted] for s in mine])
    return best_dice(scores, np.concatenate([s.truth[s.counted] for s in mine])).dice


def score_candidates(scans: list[Scan], card, log) -> dict[str, dict[str, LesionCounts]]:
    """Lesion counts per candidate and data set (pooled over its cases)."""
    tail = card.healthy_tails["adapted"][card.score_map]
    healthy = card.healthy_candidates
    table: dict[str, dict[str, LesionCounts]] = {}
    smalls: list[SmallLesionRule | None] = [None] + [
        SmallLesionRule(brightness=b, fallback_budget=f, min_csf_mm=c, min_depth_mm=d)
        for b, f, c, d in itertools.product(BRIGHTNESS, FALLBACKS, MIN_CSF_MM, MIN_DEPTH_MM)
    ]
    for budget, seed in itertools.product(BUDGETS, SEEDS):
        if seed is not None and seed >= budget:
            continue
        threshold, seed_threshold = tail.threshold_at(budget), tail.threshold_at(seed) if seed else None
        log(f"voxel mask at {_pct(budget)}, seeds {seed}")
        voxel_masks = [sitk.GetArrayFromImage(label_lesions(s.score, threshold, 0.0, seed_threshold)) > 0 for s in scans]
        for small in smalls:
            candidate = Candidate(budget, seed, small)
            fallback = healthy.fallback_threshold(small) if small is not None else None
            per: dict[str, LesionCounts] = {}
            for scan, voxel in zip(scans, voxel_masks):
                mask = voxel
                if small is not None:
                    extra, _ = small_lesion_mask(scan.evidence.candidates, scan.evidence.ratio, voxel, small, fallback)
                    mask = voxel | extra
                per[scan.dataset] = per.get(scan.dataset, LesionCounts()) + lesion_counts(mask, scan.truth, scan.spacing)
            table[candidate.name] = per
            CANDIDATES[candidate.name] = candidate
    for k in FLAIR_K:
        per = {}
        for scan in scans:
            mask = sitk.GetArrayFromImage(flair_rule_mask(scan.image, scan.brain_mask, k, 10.0)) > 0
            per[scan.dataset] = per.get(scan.dataset, LesionCounts()) + lesion_counts(mask, scan.truth, scan.spacing)
        table[f"FLAIR z > {k:g}; >= 10 mm3"] = per
    return table


CANDIDATES: dict[str, Candidate] = {}


def choose(table, oracle, datasets: list[str], family: list[str]) -> str:
    """The candidate the criterion picks on ``datasets`` (see the module doc)."""
    worst = {c: min(table[c][d].dice / oracle[d] for d in datasets) for c in family}
    qualified = [c for c in family if worst[c] >= DICE_FLOOR]
    if not qualified:
        return max(family, key=lambda c: worst[c])
    return max(qualified, key=lambda c: np.mean([table[c][d].f1 for d in datasets]))


def presets(balanced: Candidate) -> dict[str, Candidate]:
    """The three presets: the chosen rule with 0.1 less small-lesion brightness (without seeds
    where it has no small-lesion rule), the chosen rule, and half its budget without small lesions."""
    small = balanced.small
    return {
        "sensitive": Candidate(balanced.budget, balanced.seed, replace(small, brightness=round(small.brightness - 0.1, 2)))
        if small
        else Candidate(balanced.budget, None, None),
        "balanced": balanced,
        "specific": Candidate(balanced.budget / 2, balanced.seed if balanced.seed and balanced.seed < balanced.budget / 2 else None, None),
    }


def verify_with_the_engine(scans: list[Scan], card, candidate: Candidate, table: dict) -> None:
    """The study's shortcut (voxel masks computed once per budget) draws exactly the engine's masks."""
    point = candidate.point()
    tail = card.healthy_tails["adapted"][card.score_map]
    fallback = card.healthy_candidates.fallback_threshold(point.small_lesions) if point.small_lesions else None
    rule = MaskRule(
        tail.threshold_at(point.healthy_fpr), tail.threshold_at(point.seed_fpr) if point.seed_fpr else None, 0.0, "study", "study",
        small_lesions=point.small_lesions, small_lesion_fallback=fallback,
    )
    per: dict[str, LesionCounts] = {}
    for scan in scans:
        labels, _ = draw_lesions(scan.score, rule, scan.evidence)
        per[scan.dataset] = per.get(scan.dataset, LesionCounts()) + lesion_counts(sitk.GetArrayViewFromImage(labels) > 0, scan.truth, scan.spacing)
    for dataset, counts in per.items():
        expected = table[candidate.name][dataset]
        if (counts.found, counts.false_positive_lesions, round(counts.mask_ml, 6)) != (expected.found, expected.false_positive_lesions, round(expected.mask_ml, 6)):
            raise SystemExit(f"the study's masks and the engine's differ for {candidate.name} on {dataset}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model calibrated on the scans' own grids (default: the shipped model)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=REPO / "report")
    args = parser.parse_args()
    torch.set_num_threads(2)
    log = lambda m: print(m, flush=True)  # noqa: E731
    started = time.time()
    model_path = args.model or default_model_path()
    detector = Detector.from_file(model_path, "cpu")
    card = detector.card
    if card.healthy_tails_grid != "input" or card.healthy_candidates is None:
        raise SystemExit(f"{model_path} was not calibrated on the scans' own grids; calibrate it first: ssae calibrate {model_path} <healthy scans> -o ...")
    work = args.output / "quality" / "work"
    digest = weights_digest(model_path)
    devs = load_cases(args.data, card.training["data"]["val_subjects"], detector, work, log)
    scans = prepare_scans(detector, devs, work, digest, log)
    datasets = list(dict.fromkeys(s.dataset for s in scans))
    oracle = {ds: oracle_dice(scans, ds) for ds in datasets}
    table = score_candidates(scans, card, log)
    ours = [c for c in table if not c.startswith("FLAIR")]
    flair = [c for c in table if c.startswith("FLAIR")]
    held = {ds: choose(table, oracle, [d for d in datasets if d != ds], ours) for ds in datasets}
    chosen = presets(CANDIDATES[choose(table, oracle, datasets, ours)])
    held_presets = {ds: presets(CANDIDATES[held[ds]]) for ds in datasets}
    for preset in chosen.values():
        if preset.name not in table:
            table[preset.name] = _evaluate_one(scans, card, preset)
    for ds_presets in held_presets.values():
        for preset in ds_presets.values():
            if preset.name not in table:
                table[preset.name] = _evaluate_one(scans, card, preset)
    verify_with_the_engine(scans, card, chosen["balanced"], table)
    flair_held = {ds: choose(table, oracle, [d for d in datasets if d != ds], flair) for ds in datasets}
    flair_all = choose(table, oracle, datasets, flair)
    selection = {
        "model": model_path.name,
        "datasets": {ds: [s.name for s in scans if s.dataset == ds] for ds in datasets},
        "lesion_rule": RULE,
        "criterion": CRITERION,
        "oracle_dice": oracle,
        "chosen_on_all": {name: c.name for name, c in chosen.items()},
        "operating_points": {name: c.point().to_dict() for name, c in chosen.items()},
        "chosen_without": {ds: {name: c.name for name, c in p.items()} for ds, p in held_presets.items()},
        "flair_rule_chosen_without": flair_held,
        "flair_rule_chosen_on_all": flair_all,
        "healthy_false_lesions_per_brain": (card.operating_points or {}).get("healthy_false_lesions"),
        "seconds": round(time.time() - started, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.python_version()}",
    }
    out = args.output / "operating_point"
    out.mkdir(parents=True, exist_ok=True)
    (out / "candidates.csv").write_text(candidates_csv(table, datasets), encoding="utf-8")
    (out / "selection.json").write_text(json.dumps(selection, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (args.output / "operating_point.md").write_text(markdown(table, datasets, oracle, selection), encoding="utf-8")
    for preset, candidate in chosen.items():
        log(f"{preset}: chosen on all three: {candidate.name}")
        for ds in datasets:
            name = held_presets[ds][preset].name
            c = table[name][ds]
            log(f"  {ds} held out: {name} -> Dice {c.dice:.3f} ({c.dice / oracle[ds]:.2f} x [DICE]), lesion F1 {c.f1:.2f}")
    log(f"FLAIR rule chosen on all three: {flair_all}")
    log(f"written: {args.output / 'operating_point.md'} ({time.time() - started:.0f} s)")


def _evaluate_one(scans: list[Scan], card, candidate: Candidate) -> dict[str, LesionCounts]:
    tail = card.healthy_tails["adapted"][card.score_map]
    threshold, seed = tail.threshold_at(candidate.budget), tail.threshold_at(candidate.seed) if candidate.seed else None
    fallback = card.healthy_candidates.fallback_threshold(candidate.small) if candidate.small else None
    per: dict[str, LesionCounts] = {}
    for scan in scans:
        mask = sitk.GetArrayFromImage(label_lesions(scan.score, threshold, 0.0, seed)) > 0
        if candidate.small is not None:
            extra, _ = small_lesion_mask(scan.evidence.candidates, scan.evidence.ratio, mask, candidate.small, fallback)
            mask = mask | extra
        per[scan.dataset] = per.get(scan.dataset, LesionCounts()) + lesion_counts(mask, scan.truth, scan.spacing)
    CANDIDATES[candidate.name] = candidate
    return per


def _row(counts: LesionCounts, oracle: float) -> list[str]:
    bands = " / ".join("-" if np.isnan(v) else f"{v:.2f}" for v in counts.band_sensitivity().values())
    return [
        f"{counts.dice:.3f} ({counts.dice / oracle:.2f})",
        f"{counts.sensitivity:.2f} / {0 if np.isnan(counts.precision) else counts.precision:.2f} / **{counts.f1:.2f}**",
        bands,
        f"{counts.false_positive_lesions_per_case:.1f}",
        f"{counts.mask_ml:.1f} / {counts.true_ml:.1f}",
    ]


def candidates_csv(table, datasets) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    fields = ("dice", "lesion_sensitivity", "lesion_precision", "lesion_f1", "false_positive_lesions_per_case", "mask_ml", "true_ml")
    writer.writerow(["candidate"] + [f"{ds} {f}" for ds in datasets for f in fields] + [f"{ds} sensitivity {b}" for ds in datasets for b in BAND_NAMES])
    for name, per in table.items():
        values = []
        for ds in datasets:
            d = per[ds].to_dict()
            values += ["" if d[f] is None else f"{d[f]:.4f}" for f in fields]
        for ds in datasets:
            values += ["" if v is None else f"{v:.4f}" for v in per[ds].to_dict()["sensitivity_by_size"].values()]
        writer.writerow([name, *values])
    return buffer.getvalue()


HEADER = (
    "| data set | rule chosen on the other two | Dice (x [DICE]) | lesion sens. / prec. / F1 | sens. by size ("
    + " / ".join(BAND_NAMES)
    + ") | FP lesions per scan | mask / true ml |"
)


def markdown(table, datasets, oracle, selection) -> str:
    lines = [
        "# Operating-point study: which label-free rule draws the mask a reader counts lesions on",
        "",
        f"Generated by `python bench/operating_point.py` (do not edit by hand). Model: `{selection['model']}`; "
        f"machine: {selection['machine']}; {selection['seconds']:.0f} s.",
        "",
        "Every figure is the *mask* on the input grid, pooled over the data set's cases: voxel Dice beside the map's oracle [DICE] "
        "(threshold picked on the test labels, an upper bound), and lesion-wise counts. Lesion rule: " + selection["lesion_rule"] + ".",
        "",
        "Data sets: "
        + "; ".join(f"{ds} ({', '.join(n)})" for ds, n in selection["datasets"].items())
        + ". Oracle [DICE] of the map: "
        + ", ".join(f"{ds} {v:.3f}" for ds, v in oracle.items())
        + ".",
        "",
        "**Protocol.** No choice is scored on the data set it was made on: each row below uses the rule chosen on the other two "
        "data sets; the shipped default (balanced) is the rule chosen on all three. Criterion: " + selection["criterion"] + ". "
        "Sensitive is the balanced rule with small lesions down to 0.1 less brightness; specific halves its "
        "healthy budget and leaves small lesions out. False lesions per healthy brain, as calibration measured them on the "
        f"model's healthy validation subjects: {selection['healthy_false_lesions_per_brain']}.",
        "",
    ]
    for preset, chosen_name in selection["chosen_on_all"].items():
        lines += [f"## {preset}", "", f"Chosen on all three: **{chosen_name}**.", "", HEADER, "|---|---|---|---|---|---|---|"]
        for ds in datasets:
            name = selection["chosen_without"][ds][preset]
            lines.append(f"| {ds} | {name} | " + " | ".join(_row(table[name][ds], oracle[ds])) + " |")
        lines += ["", "The rule chosen on all three, on each data set (not held out):", "", HEADER, "|---|---|---|---|---|---|---|"]
        for ds in datasets:
            lines.append(f"| {ds} | {chosen_name} | " + " | ".join(_row(table[chosen_name][ds], oracle[ds])) + " |")
        lines.append("")
    lines += [
        "## The label-free FLAIR rule (brain z-score > K), chosen the same way",
        "",
        f"Chosen on all three: {selection['flair_rule_chosen_on_all']}.",
        "",
        HEADER,
        "|---|---|---|---|---|---|---|",
    ]
    for ds in datasets:
        name = selection["flair_rule_chosen_without"][ds]
        lines.append(f"| {ds} | {name} | " + " | ".join(_row(table[name][ds], oracle[ds])) + " |")
    lines += ["", "## Every candidate (pooled per data set: Dice (x [DICE]); lesion sens. / prec. / F1; sens. by size; FP lesions per scan; mask / true ml)", ""]
    lines.append("| candidate | " + " | ".join(datasets) + " |")
    lines.append("|---|" + "---|" * len(datasets))
    for name in sorted(table):
        lines.append(f"| {name} | " + " | ".join("; ".join(_row(table[name][ds], oracle[ds])) for ds in datasets) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
