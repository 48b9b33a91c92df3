"""Which map should draw the lesion mask? The quality study behind the shipped defaults.

Every candidate (scanner adaptation settings x score map x hyper-intensity prior / fusion
settings x median size) is scored on three development sets, exactly as ``ssae evaluate``
scores (input grid, brain mask plus lesion voxels, pooled AUPRC and [DICE]):

* MSLUB: 2 MS patients, manual consensus masks;
* BraTS: 4 gliomas, manual tumour labels;
* NiChart WMH: the model's 4 held-out validation subjects, automatic WMH masks.

Choices are never made on the cases a figure is claimed for: each data set's figure comes from
the candidate chosen on the *other two* (leave one data set out); the criterion is the mean,
over those data sets, of min(AUPRC, [DICE]) relative to the raw FLAIR baseline. The default
shipped in the model card is the candidate chosen on all three. Both FLAIR baselines are
reported beside every row (raw: the scan thresholded inside its brain mask; strong: model grid,
eroded brain, ranked within the scan), with 95 % bootstrap intervals over cases.

    python bench/quality.py [--model Resources/Models/ssae-dense-nichart.safetensors]
                            [--compare-model old.safetensors] [--data ../shared/data]

Writes report/quality.md and report/quality/{candidates.csv,selection.json}; slow steps
(N4, registration, adaptation) are cached in report/quality/work. About 15 minutes on two
CPU cores from an empty cache.
"""

from __future__ import annotations

import argparse
import csv
import io
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
from ssae.evaluation.bootstrap import bootstrap_intervals
from ssae.io.cases import read_case_volumes
from ssae.io.resources import default_model_path
from ssae.preprocessing.input_grid import to_input_grid_many
from ssae.preprocessing.slices import prepare_volume
from ssae.scoring.baselines import flair_rule_mask, intensity_score, strong_intensity_score
from ssae.scoring.lesion_metrics import RULE, LesionCounts, lesion_counts
from ssae.scoring.metrics import average_precision, best_dice
from ssae.scoring.mask_drawing import draw_lesions
from ssae.scoring.score_maps import PostprocessingSettings, combined_maps, eroded_brain, input_grid_maps, residual_scores, score_maps
from ssae.training import defaults
from ssae.training.slice_cache import PREPROCESSING_VERSION

RAW, STRONG = "raw FLAIR baseline", "strong FLAIR baseline"


@dataclass(frozen=True)
class Candidate:
    adaptation: str
    map: str
    post: PostprocessingSettings

    @property
    def name(self) -> str:
        p = self.post
        detail = {
            "prior": f"factor {p.prior_factor:g}" if p.prior_factor is not None else f"p{p.prior_percentile:g}",
            "fused": f"exponent {p.fusion_exponent:g}",
        }.get(self.map, "")
        median = f"median {p.median_size}" + (f" {p.median_per_level}" if self.map.startswith("level") else "")
        return "; ".join(x for x in (f"adapt {self.adaptation}", self.map, detail, median) if x)


def candidates(base: PostprocessingSettings) -> list[Candidate]:
    out = []
    for adaptation in ADAPTATIONS:
        for median in (3, 5):
            post = replace(base, median_size=median)
            out.append(Candidate(adaptation, "aggregated", post))
            for factor in (1.2, 1.3, 1.4):
                out.append(Candidate(adaptation, "prior", replace(post, prior_factor=factor, prior_percentile=None)))
            for pct in (90.0, 95.0):
                out.append(Candidate(adaptation, "prior", replace(post, prior_factor=None, prior_percentile=pct)))
            for exponent in (2.0, 4.0, 6.0, 8.0):
                out.append(Candidate(adaptation, "fused", replace(post, fusion_exponent=exponent)))
        for per_level in ("same", "scaled"):
            out.append(Candidate(adaptation, "level1", replace(base, median_size=5, median_per_level=per_level)))
    out.append(Candidate("none", "flair", base))
    return out


def on_input_grid(dev: DevCase, grid_map: np.ndarray) -> np.ndarray:
    p = dev.prepared
    back = to_input_grid_many({"m": grid_map}, p.grid, dev.image, p.transform, p.brain_mask)["m"]
    return sitk.GetArrayFromImage(back)[dev.counted]


def pooled(per_case: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    scores = np.concatenate([s for s, _ in per_case])
    labels = np.concatenate([lab for _, lab in per_case])
    return average_precision(scores, labels), best_dice(scores, labels).dice


def lodo(table: dict[str, dict[str, tuple[float, float]]], datasets: list[str]) -> dict[str, str]:
    """For each held-out data set, the candidate chosen on the others; and the one chosen on all."""

    def gain(name: str, ds: str) -> float:
        ap, dice = table[name][ds]
        raw_ap, raw_dice = table[RAW][ds]
        return min(ap / raw_ap, dice / raw_dice)

    names = [n for n in table if n not in (RAW, STRONG)]
    choice = {held: max(names, key=lambda n: np.mean([gain(n, d) for d in datasets if d != held])) for held in datasets}
    choice["all"] = max(names, key=lambda n: np.mean([gain(n, d) for d in datasets]))
    return choice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model to study (default: the shipped model)")
    parser.add_argument("--compare-model", type=Path, help="a second model (e.g. trained with clipped intensities): key rows only")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=REPO / "report")
    args = parser.parse_args()
    torch.set_num_threads(2)
    log = lambda m: print(m, flush=True)  # noqa: E731
    started = time.time()
    model_path = args.model or default_model_path()
    detector = Detector.from_file(model_path, "cpu")
    card = detector.card
    work = args.output / "quality" / "work"
    digest = weights_digest(model_path)
    devs = load_cases(args.data, card.training["data"]["val_subjects"], detector, work, log)
    datasets = list(dict.fromkeys(d.dataset for d in devs))
    base = card.postprocessing
    cands = candidates(base)
    adapt_seconds: dict[str, list[float]] = {}
    score_seconds: list[float] = []
    by_name = {c.name: c for c in cands}

    def case_scores(dev: DevCase, names: list[str]) -> dict[str, np.ndarray]:
        """Scores of the counted voxels of one case, for the named candidates and baselines.

        Median filtering depends only on (adaptation, median settings): it runs once per such
        pair; the prior and fusion variants are cheap products on top. All grid maps go back to
        the input grid together, as components of vector images.
        """
        residuals = {key: residuals_for(detector, dev, key, work, digest, adapt_seconds) for key in ADAPTATIONS}
        inside = eroded_brain(dev.prepared.brain, base.brain_erosion)
        out, filtered, grid_maps = {}, {}, {}
        for name in names:
            if name == RAW:
                out[name] = intensity_score(dev.image, dev.prepared)[dev.counted]
            elif name == STRONG:
                grid_maps[name] = strong_intensity_score(dev.prepared, base.brain_erosion)
            else:
                cand = by_name[name]
                key = (cand.adaptation, cand.post.median_size, cand.post.median_per_level)
                if key not in filtered:
                    t0 = time.perf_counter()
                    filtered[key] = residual_scores(residuals[cand.adaptation], inside, cand.post)
                    score_seconds.append(time.perf_counter() - t0)
                scores = filtered[key]
                if cand.map in scores:
                    grid_maps[name] = scores[cand.map]
                else:
                    grid_maps[name] = combined_maps(scores["aggregated"], dev.prepared.intensities, dev.prepared.brain, inside, cand.post)[
                        cand.map
                    ]
        keys = list(grid_maps)
        for start in range(0, len(keys), 16):
            chunk = {k: grid_maps[k] for k in keys[start : start + 16]}
            p = dev.prepared
            for name, image in to_input_grid_many(chunk, p.grid, dev.image, p.transform, p.brain_mask).items():
                out[name] = sitk.GetArrayViewFromImage(image)[dev.counted].copy()
        return out

    # Pass 1: pooled metrics of every candidate, one data set at a time (bounded memory).
    all_names = [RAW, STRONG, *by_name]
    table: dict[str, dict[str, tuple[float, float]]] = {name: {} for name in all_names}
    for ds in datasets:
        collected: dict[str, list] = {name: [] for name in all_names}
        for dev in (d for d in devs if d.dataset == ds):
            log(f"scoring {ds} {dev.case.name}")
            for name, values in case_scores(dev, all_names).items():
                collected[name].append((values, dev.labels))
        for name in all_names:
            table[name][ds] = pooled(collected[name])
        del collected
    choice = lodo(table, datasets)
    default_name = choice["all"]
    default = by_name[default_name]

    # Pass 2: bootstrap intervals over cases for the rows the report shows.
    rng = np.random.default_rng(0)
    shown = list(dict.fromkeys([RAW, STRONG, default_name, *(choice[d] for d in datasets)]))
    per_case: dict[str, dict[str, list]] = {name: {} for name in shown}
    combined_seconds = []
    for dev in devs:
        for name, values in case_scores(dev, shown).items():
            per_case[name].setdefault(dev.dataset, []).append((values, dev.labels))
        inside = eroded_brain(dev.prepared.brain, default.post.brain_erosion)
        aggregated = dev.prepared.intensities  # any [slices, size, size] float map: the cost does not depend on the values
        t0 = time.perf_counter()
        combined_maps(aggregated, dev.prepared.intensities, dev.prepared.brain, inside, default.post)
        combined_seconds.append(time.perf_counter() - t0)
    intervals = {name: {ds: bootstrap_intervals(per_case[name][ds], rng, 1000) for ds in datasets} for name in shown}

    # The mask every user gets: the card's map at the card's default operating point, beside the
    # label-free FLAIR rule, scored on the whole input grid (Dice and lesion-wise counts).
    masks: dict[str, dict[str, LesionCounts]] = {"mask": {}, "FLAIR rule": {}}
    card_adaptation = card.adaptation.settings if card.adaptation and card.adaptation.enabled else None
    card_key = next((k for k, v in ADAPTATIONS.items() if v == card_adaptation), None)
    card_name = Candidate(card_key, card.score_map, base).name if card_key is not None else None
    rule = card.mask_rule(card.score_map, adapted=card_adaptation is not None)
    flair_rule = defaults.FLAIR_RULE
    if card_name in by_name:
        for dev in devs:
            residuals = residuals_for(detector, dev, card_key, work, digest, adapt_seconds)
            p = dev.prepared
            maps, intensities = input_grid_maps(score_maps(residuals, p.intensities, p.brain, base), p, base)
            evidence = small_lesion_evidence(intensities) if rule.small_lesions is not None else None
            truth = sitk.GetArrayFromImage(read_case_volumes(dev.case, need_label=True)[2]).astype(bool)
            drawn = sitk.GetArrayFromImage(draw_lesions(maps[card.score_map], rule, evidence)[0]) > 0
            flair = sitk.GetArrayFromImage(flair_rule_mask(dev.image, p.brain_mask, flair_rule["k"], flair_rule["min_lesion_mm3"])) > 0
            for name, mask in (("mask", drawn), ("FLAIR rule", flair)):
                masks[name][dev.dataset] = masks[name].get(dev.dataset, LesionCounts()) + lesion_counts(mask, truth, dev.image.GetSpacing())

    compare = {}
    if args.compare_model:
        other = Detector.from_file(args.compare_model, "cpu")
        other_digest = weights_digest(args.compare_model)
        for key in dict.fromkeys(("none", default.adaptation)):
            for map_name in dict.fromkeys(("aggregated", default.map)):
                rows = {}
                for ds in datasets:
                    cases = []
                    for dev in (d for d in devs if d.dataset == ds):
                        corrected = sitk.ReadImage(str(work / f"corrected-v{PREPROCESSING_VERSION}" / f"{dev.case.name}.nii.gz"))
                        settings = replace(other.card.preprocessing, bias_correction=False)
                        prepared = prepare_volume(corrected, settings, read_case_volumes(dev.case)[1], dev.prepared.alignment)
                        other_dev = DevCase(dev.dataset, dev.case, dev.image, prepared, dev.counted, dev.labels)
                        res = residuals_for(other, other_dev, key, work, other_digest, {})
                        maps = score_maps(res, dev.prepared.intensities, dev.prepared.brain, default.post)
                        cases.append((on_input_grid(dev, maps[map_name]), dev.labels))
                    rows[ds] = pooled(cases)
                ours = Candidate(key, map_name, default.post).name
                compare[ours] = (
                    {args.compare_model.name: rows, model_path.name: table[ours]} if ours in table else {args.compare_model.name: rows}
                )

    out = args.output / "quality"
    out.mkdir(parents=True, exist_ok=True)
    write_csv(table, datasets, out / "candidates.csv")
    selection = {
        "model": str(model_path.name),
        "datasets": {ds: [d.case.name for d in devs if d.dataset == ds] for ds in datasets},
        "criterion": "mean over data sets of min(AUPRC, [DICE]) relative to the raw FLAIR baseline",
        "chosen_without": {ds: choice[ds] for ds in datasets},
        "default": default_name,
        "default_settings": {"adaptation": default.adaptation, "map": default.map, "postprocessing": default.post.to_dict()},
        "adaptation_seconds_mean": {k: float(np.mean(v)) for k, v in adapt_seconds.items() if v},
        "residual_scores_seconds_mean": float(np.mean(score_seconds)),
        "prior_fusion_flair_seconds_mean": float(np.mean(combined_seconds)),
        "mask_at_operating_point": {name: {ds: c.to_dict() for ds, c in per.items()} for name, per in masks.items()},
        "card_score_map": card_name,
        "operating_point": rule.to_dict(),
        "flair_rule": flair_rule,
        "lesion_rule": RULE,
        "compare_model": str(args.compare_model.name) if args.compare_model else None,
        "compare": compare,
        "seconds": round(time.time() - started, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.python_version()}",
    }
    (out / "selection.json").write_text(json.dumps(selection, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (args.output / "quality.md").write_text(markdown(table, datasets, choice, intervals, selection, cands), encoding="utf-8")
    log(f"default: {default_name}")
    for ds in datasets:
        log(
            f"{ds}: chosen on the others: {choice[ds]} -> AUPRC {table[choice[ds]][ds][0]:.3f} / [DICE] {table[choice[ds]][ds][1]:.3f} "
            f"(raw FLAIR {table[RAW][ds][0]:.3f} / {table[RAW][ds][1]:.3f}, strong {table[STRONG][ds][0]:.3f} / {table[STRONG][ds][1]:.3f})"
        )
    log(f"written: {args.output / 'quality.md'} ({time.time() - started:.0f} s)")


def write_csv(table, datasets, path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["candidate"] + [f"{ds} {m}" for ds in datasets for m in ("AUPRC", "[DICE]")])
    for name, values in table.items():
        writer.writerow([name] + [f"{values[ds][i]:.4f}" for ds in datasets for i in (0, 1)])
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _cell(table, intervals, name, ds) -> str:
    ap, dice = table[name][ds]
    ci = intervals.get(name, {}).get(ds)
    if ci is None:
        return f"{ap:.3f} / {dice:.3f}"
    return f"{ap:.3f} [{ci['auprc'][0]:.2f}, {ci['auprc'][1]:.2f}] / {dice:.3f} [{ci['best_dice'][0]:.2f}, {ci['best_dice'][1]:.2f}]"


def markdown(table, datasets, choice, intervals, selection, cands) -> str:
    lines = [
        "# Quality study: which map draws the lesion mask",
        "",
        "Generated by `python bench/quality.py` (do not edit by hand). "
        f"Model: `{selection['model']}`; machine: {selection['machine']}; {selection['seconds']:.0f} s.",
        "",
        "Pooled AUPRC / [DICE] on the input grid (brain mask plus lesion voxels), 95 % bootstrap intervals over cases where shown. "
        "[DICE] picks its threshold on the test labels (an upper bound). Data sets: "
        + "; ".join(f"{ds} ({', '.join(names)})" for ds, names in selection["datasets"].items())
        + ".",
        "",
        f"**Selection rule** (no choice is made on the cases a figure is claimed for): {selection['criterion']}. Each data set's "
        "row below uses the candidate chosen on the other two data sets (leave one data set out); the shipped default is the "
        "candidate chosen on all three.",
        "",
        "## Held-out result per data set",
        "",
        "| data set | candidate chosen on the other two | this candidate on the data set | raw FLAIR baseline | strong FLAIR baseline |",
        "|---|---|---|---|---|",
    ]
    for ds in datasets:
        lines.append(
            f"| {ds} | {choice[ds]} | {_cell(table, intervals, choice[ds], ds)} | {_cell(table, intervals, RAW, ds)} | {_cell(table, intervals, STRONG, ds)} |"
        )
    lines += [
        "",
        f"**Shipped default** (chosen on all three): {choice['all']}.",
        "",
        "| data set | default | raw FLAIR | strong FLAIR |",
        "|---|---|---|---|",
    ]
    for ds in datasets:
        lines.append(
            f"| {ds} | {_cell(table, intervals, choice['all'], ds)} | {_cell(table, intervals, RAW, ds)} | {_cell(table, intervals, STRONG, ds)} |"
        )
    op = selection["operating_point"]
    lines += [
        "",
        f"**The mask a user gets**: the card's map `{selection['card_score_map']}` at the model card's default operating point "
        f"({op['method']}; threshold {op['threshold']:.4g}), beside the label-free FLAIR rule (brain z-score > "
        f"{selection['flair_rule']['k']:g}, lesions >= {selection['flair_rule']['min_lesion_mm3']:g} mm3), pooled per data set on the "
        f"input grid. Lesions: {selection['lesion_rule']}. NiChart WMH are the calibration subjects themselves (their WMH voxels "
        "left out of the calibration), so their figures are not independent of it; how the operating point was chosen, with "
        "held-out figures: report/operating_point.md.",
        "",
        "| data set | mask Dice (x [DICE]) | lesion sens. / prec. / F1 | FP lesions per scan | mask / true ml | FLAIR rule Dice | FLAIR rule lesion F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for ds in datasets:
        m = selection["mask_at_operating_point"]["mask"].get(ds)
        f = selection["mask_at_operating_point"]["FLAIR rule"].get(ds)
        if m is None:
            continue
        oracle = table[choice["all"]][ds][1]
        lines.append(
            f"| {ds} | {m['dice']:.3f} ({m['dice'] / oracle:.2f}) | {m['lesion_sensitivity']:.2f} / {m['lesion_precision'] or 0:.2f} / "
            f"{m['lesion_f1']:.2f} | {m['false_positive_lesions_per_case']:.1f} | {m['mask_ml']:.1f} / {m['true_ml']:.1f} | "
            f"{f['dice']:.3f} | {f['lesion_f1']:.2f} |"
        )
    lines += [
        "",
        "## Cost",
        "",
        "| step | seconds per scan (mean, this machine) |",
        "|---|---|",
    ]
    for key, value in selection["adaptation_seconds_mean"].items():
        lines.append(f"| adaptation {key} | {value:.1f} |")
    lines.append(
        f"| residual maps: positive part, median filters, eroded brain (slice grid) | {selection['residual_scores_seconds_mean']:.2f} |"
    )
    lines.append(f"| prior, fused and FLAIR maps on top (slice grid) | {selection['prior_fusion_flair_seconds_mean']:.3f} |")
    if selection["compare"]:
        lines += [
            "",
            f"## Intensity clipping: `{selection['model']}` vs `{selection['compare_model']}`",
            "",
            "Same data, same post-processing and FLAIR intensities; only the model differs.",
            "",
            "| candidate | model | " + " | ".join(datasets) + " |",
            "|---|---|" + "---|" * len(datasets),
        ]
        for name, rows in selection["compare"].items():
            for model, values in rows.items():
                lines.append(f"| {name} | {model} | " + " | ".join(f"{values[ds][0]:.3f} / {values[ds][1]:.3f}" for ds in datasets) + " |")
    lines += ["", "## Every candidate", "", "| candidate | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for name in sorted(table, key=lambda n: (n not in (RAW, STRONG), n)):
        lines.append(f"| {name} | " + " | ".join(f"{table[name][ds][0]:.3f} / {table[name][ds][1]:.3f}" for ds in datasets) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
