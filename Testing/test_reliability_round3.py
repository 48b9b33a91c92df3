"""Nothing silently wrong (round 3): calibration that refuses before it works, presets and
thresholds that cannot both be meant, files compared as files, pairs whose results sit beside
them. Each test pins a class of defect; bench/fuzz.py runs the same cases as separate processes.
"""

from __future__ import annotations

import gzip
import os
import shutil
import time
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import cli_refuses

from ssae.detection.followup_runs import find_pairs
from ssae.io.errors import SSAEError
from ssae.io.volumes import read_mask


def _healthy(small_cases, folder: Path) -> Path:
    """Two scans in a folder of their own (labels left out: calibration data are healthy)."""
    for case in ("patient07", "patient19"):
        (folder / case).mkdir(parents=True)
        shutil.copy(small_cases / case / "flair.nii.gz", folder / case / "flair.nii.gz")
    return folder


def test_calibrate_refuses_a_missing_model_and_empty_subjects_before_any_work(tiny_model, small_cases, tmp_path, capsys):
    data = _healthy(small_cases, tmp_path / "healthy")
    out = tmp_path / "calibrated.safetensors"
    cli_refuses(capsys, ["calibrate", tmp_path / "gone.safetensors", data, "-o", out], "gone.safetensors")
    cli_refuses(capsys, ["calibrate", tiny_model, data, "-o", out, "--subjects", ","], "--subjects names no case")
    assert not out.exists()


def test_calibrate_refuses_a_folder_as_its_output_at_once(tiny_model, small_cases, tmp_path, capsys):
    data = _healthy(small_cases, tmp_path / "healthy")
    (tmp_path / "models").mkdir()
    started = time.perf_counter()
    cli_refuses(capsys, ["calibrate", tiny_model, data, "-o", tmp_path / "models", "--overwrite", "--device", "cpu"], "is a folder")
    assert time.perf_counter() - started < 10  # before bias correction and registration, not after
    assert not any((tmp_path / "models").iterdir())


def test_one_truncated_scan_is_refused_before_the_others_are_worked_on(tiny_model, small_cases, tmp_path, capsys):
    data = _healthy(small_cases, tmp_path / "healthy")
    scan = data / "patient19" / "flair.nii.gz"
    raw = gzip.decompress(scan.read_bytes())
    scan.write_bytes(gzip.compress(raw[: len(raw) * 2 // 3]))
    started = time.perf_counter()
    calibrate = ["calibrate", tiny_model, data, "-o", tmp_path / "c.safetensors", "--subjects", "patient07,patient19"]
    for command in (calibrate, ["adapt", tiny_model, data, "-o", tmp_path / "a.safetensors"]):
        cli_refuses(capsys, [*command, "--device", "cpu", "--cache-dir", tmp_path / "cache"], "patient19")
    assert time.perf_counter() - started < 20
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npz"))


def test_a_named_operating_point_and_a_threshold_are_not_both_accepted(tiny_model, small_cases, tmp_path, capsys):
    from ssae.app.cli import main

    code = main(["detect", str(tiny_model), str(small_cases / "patient19" / "flair.nii.gz"), "--operating-point", "specific", "--threshold", "0.5"])
    assert code == 2 and "not allowed with" in capsys.readouterr().err


def test_a_hard_link_to_the_baseline_is_the_same_file(tiny_model, small_cases, tmp_path, capsys):
    scan = small_cases / "patient19" / "flair.nii.gz"
    copy = tmp_path / "baseline.nii.gz"
    shutil.copy(scan, copy)
    os.link(copy, tmp_path / "followup.nii.gz")
    cli_refuses(capsys, ["compare", tiny_model, copy, tmp_path / "followup.nii.gz", "-o", tmp_path / "out"], "same file")
    assert not (tmp_path / "out").exists()


def test_a_single_comparison_is_not_written_among_its_scans(tiny_model, small_cases, tmp_path, capsys):
    """Decided: results beside the scans would be taken for scans by the next run over the folder."""
    scans = tmp_path / "patient"
    scans.mkdir()
    for name in ("study1", "study2"):
        shutil.copy(small_cases / "patient19" / "flair.nii.gz", scans / f"{name}.nii.gz")
    cli_refuses(capsys, ["compare", tiny_model, scans / "study1.nii.gz", scans / "study2.nii.gz", "-o", scans], "apart from the scans")


def test_pair_folders_results_and_unclear_folders(small_cases, tmp_path):
    """Result folders and folders without scans are not pairs; every folder that holds one scan
    or three is named, before any work."""
    pairs = tmp_path / "pairs"
    scan = small_cases / "patient19" / "flair.nii.gz"
    for name, count in (("a", 2), ("b", 3), ("c", 1), ("notes", 0)):
        (pairs / name).mkdir(parents=True)
        for index in range(count):
            shutil.copy(scan, pairs / name / f"study{index}.nii.gz")
    (pairs / "changes").mkdir()
    (pairs / "changes" / "comparisons.csv").write_text("pair,status\n", encoding="utf-8")
    with pytest.raises(SSAEError, match=r"b \(3\), c \(1\)"):
        find_pairs(pairs)
    shutil.rmtree(pairs / "b")
    shutil.rmtree(pairs / "c")
    assert [pair.name for pair in find_pairs(pairs)] == ["a"]


def test_labels_with_negative_values_and_masks_turned_another_way_are_refused_saying_why(small_cases, tmp_path):
    """Decided: -1 (often "unknown") is neither background nor lesion; the geometry error names
    the direction too."""
    scan = sitk.ReadImage(str(small_cases / "patient19" / "flair.nii.gz"))
    label = sitk.Cast(sitk.ReadImage(str(small_cases / "patient19" / "consensus_gt.nii.gz")), sitk.sitkInt16)
    sitk.WriteImage(label - 1, str(tmp_path / "minus.nii.gz"))
    with pytest.raises(SSAEError, match="negative values"):
        read_mask(tmp_path / "minus.nii.gz", scan, "lesion label")
    turned = sitk.Image(label)
    turned.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(turned, str(tmp_path / "turned.nii.gz"))
    with pytest.raises(SSAEError, match="direction"):
        read_mask(tmp_path / "turned.nii.gz", scan, "lesion label")


def test_a_grid_nifti_cannot_hold_is_refused_before_detection_and_nrrd_is_named(tiny_model, small_cases, tmp_path, capsys):
    scan = sitk.ReadImage(str(small_cases / "patient19" / "flair.nii.gz"))
    scan.SetOrigin((1e5 + 0.1234, -1e5 + 0.4321, 0.0))
    sitk.WriteImage(scan, str(tmp_path / "far.nrrd"))
    started = time.perf_counter()
    cli_refuses(capsys, ["detect", tiny_model, tmp_path / "far.nrrd", "-o", tmp_path / "out", "--device", "cpu", "--no-adapt"], "--format nrrd")
    assert time.perf_counter() - started < 10 and not (tmp_path / "out").exists()
