"""The reproduction harness: a small run end to end, bootstrap intervals, the intensity baseline."""

from __future__ import annotations

import csv

import numpy as np
import SimpleITK as sitk

from ssae.evaluation.bootstrap import bootstrap_intervals
from ssae.evaluation.reproduction import run_suite
from ssae.evaluation.reproduction_plan import Profile
from ssae.evaluation.reproduction_report import CSV_COLUMNS
from ssae.preprocessing.slices import PreprocessingSettings, prepare_volume
from ssae.scoring.baselines import intensity_score
from ssae.scoring.metrics import average_precision, best_dice


def test_three_models_two_cases_give_a_well_formed_report(small_cases, tmp_path):
    profile = Profile(
        "test", ssae_size=64, ssae_levels=2, plain_sizes=(32, 64), max_epochs=1, patience=1, variants=("dense",), threshold_percentile=99.0
    )
    paths = run_suite(small_cases, {"mslub": (small_cases, "manual")}, tmp_path / "report", profile, log=lambda m: None)
    with open(paths["csv"], encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == CSV_COLUMNS
    models = {(r["model"], r["map"]) for r in rows}
    assert {
        ("SSAE dense", "aggregated"),
        ("SSAE dense", "64 px"),
        ("SSAE dense", "32 px"),
        ("AE dense 32", "aggregated"),
        ("AE dense 64", "aggregated"),
        ("AE dense", "aggregated"),  # the plain AEs' residuals summed across sizes
        ("FLAIR intensity", "-"),
    } <= models
    for row in rows:
        assert row["cases"] == "2" and row["dataset"] == "mslub"
        auprc, low, high = float(row["auprc"]), float(row["auprc_ci_low"]), float(row["auprc_ci_high"])
        assert 0 < auprc <= 1 and 0 <= low <= high <= 1
    assert rows[0]["dice_at_threshold"] != ""  # the SSAE's calibrated threshold was used
    table = paths["markdown"].read_text(encoding="utf-8")
    assert "| SSAE dense | aggregated |" in table and "bootstrap" in table
    for figure in ("fidelity", "pr_curves", "panels"):
        assert paths[figure].read_bytes().startswith(b"\x89PNG")
    # a second run reuses every trained model
    before = {p: p.stat().st_mtime for p in (tmp_path / "report" / "work" / "models").glob("*.safetensors")}
    run_suite(small_cases, {"mslub": (small_cases, "manual")}, tmp_path / "report", profile, log=lambda m: None)
    assert before == {p: p.stat().st_mtime for p in (tmp_path / "report" / "work" / "models").glob("*.safetensors")}


def test_bootstrap_intervals_contain_the_point_estimates():
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(6):
        labels = rng.random(4000) < 0.03
        scores = rng.normal(size=4000) + 1.5 * labels
        cases.append((scores, labels))
    pooled_scores = np.concatenate([c[0] for c in cases])
    pooled_labels = np.concatenate([c[1] for c in cases])
    intervals = bootstrap_intervals(cases, np.random.default_rng(1), resamples=300)
    low, high = intervals["auprc"]
    assert low <= average_precision(pooled_scores, pooled_labels) <= high and high - low < 0.3
    low, high = intervals["best_dice"]
    assert low <= best_dice(pooled_scores, pooled_labels).dice <= high


def test_intensity_baseline_is_perfect_when_the_lesion_is_the_only_hyperintensity():
    z, y, x = np.mgrid[0:40, 0:64, 0:64]
    brain = ((x - 32) / 26.0) ** 2 + ((y - 32) / 28.0) ** 2 + ((z - 20) / 17.0) ** 2 < 1
    lesion = (x - 40) ** 2 + (y - 30) ** 2 + (z - 22) ** 2 < 16
    array = np.where(brain, 100.0 + np.random.default_rng(0).uniform(-5, 5, brain.shape), 0.0)
    array[lesion] = 180.0
    image = sitk.GetImageFromArray(array.astype(np.float32))
    prepared = prepare_volume(image, PreprocessingSettings(size=64))
    score = intensity_score(image, prepared)
    counted = sitk.GetArrayFromImage(prepared.brain_mask).astype(bool) | lesion
    assert best_dice(score[counted], lesion[counted]).dice == 1.0
    assert average_precision(score[counted], lesion[counted]) == 1.0
