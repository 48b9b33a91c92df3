"""Follow-up reading (``ssae compare``): two FLAIRs of one patient, what changed between them.

The pair with a known answer is made from a real scan: the follow-up is MSLUB patient 19 moved
by a rigid transform (the head in another position), with a new bright lesion added in the white
matter and scanner noise on both. The shipped raw clinical pair (Ljubljana patient 01, months
apart, oblique, 3-4 mm slices) checks the whole command on real follow-up data.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import cli_refuses

from ssae.app.cli import main
from ssae.detection.detector import Detector
from ssae.detection.followup import compare_scans
from ssae.io.errors import SSAEError
from ssae.preprocessing.pair_registration import affine_matrix, on_isotropic_grid
from ssae.preprocessing.pair_resampling import as_sharp_as_carried, carried_onto, interpolation_variance
from ssae.scoring.change import ChangeRule, lesion_changes, pair_normalised

LESION_RADIUS_MM = 5.0


def _healthy_spot(flair: sitk.Image, lesions: sitk.Image) -> tuple[int, int, int]:
    """A brain voxel (x, y, z) at least 12 mm inside the brain and 15 mm from every lesion of the
    consensus mask, nearest the brain's centre: where a new lesion is unambiguous."""
    from scipy import ndimage

    spacing = flair.GetSpacing()[::-1]
    brain = sitk.GetArrayFromImage(flair) > 0
    depth = ndimage.distance_transform_edt(brain, sampling=spacing)
    away = ndimage.distance_transform_edt(sitk.GetArrayFromImage(lesions) == 0, sampling=spacing)
    candidates = np.argwhere((depth >= 12) & (away >= 15))
    centre = np.argwhere(brain).mean(axis=0)
    z, y, x = candidates[np.argmin(np.linalg.norm((candidates - centre) * spacing, axis=1))]
    return int(x), int(y), int(z)


def _noisy(image: sitk.Image, seed: int) -> sitk.Image:
    values = sitk.GetArrayFromImage(image).astype(np.float32)
    brain = values > 0
    noise = np.random.default_rng(seed).normal(0.0, 0.03 * float(np.median(values[brain])), values.shape)
    out = sitk.GetImageFromArray(np.where(brain, values + noise, 0.0).astype(np.float32))
    out.CopyInformation(image)
    return out


def _moved(image: sitk.Image) -> tuple[sitk.Image, sitk.Euler3DTransform]:
    """The same head 6 degrees rotated and 4 mm shifted in the scanner, on a grid of its own."""
    centre = image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()])
    motion = sitk.Euler3DTransform(centre, math.radians(6), math.radians(-3), math.radians(4), (4.0, -3.0, 2.0))
    return sitk.Resample(image, image, motion, sitk.sitkLinear, 0.0, sitk.sitkFloat32), motion


def _with_lesion(image: sitk.Image, centre_mm: tuple[float, ...]) -> sitk.Image:
    values = sitk.GetArrayFromImage(image).astype(np.float32)
    zyx = np.indices(values.shape).astype(np.float64)
    points = np.stack([zyx[2], zyx[1], zyx[0]], axis=-1).reshape(-1, 3)
    physical = np.array(image.GetOrigin()) + (points * np.array(image.GetSpacing())) @ np.array(image.GetDirection()).reshape(3, 3).T
    inside = (np.linalg.norm(physical - np.array(centre_mm), axis=1) <= LESION_RADIUS_MM).reshape(values.shape)
    median = float(np.median(values[values > 0]))
    values[inside & (values > 0)] = 1.8 * median
    out = sitk.GetImageFromArray(values)
    out.CopyInformation(image)
    return out


@pytest.fixture(scope="module")
def pair(small_cases, tmp_path_factory) -> dict:
    """Baseline, follow-up with a new lesion (moved), and where the lesion is."""
    root = tmp_path_factory.mktemp("pair")
    baseline = sitk.Cast(sitk.ReadImage(str(small_cases / "patient19" / "flair.nii.gz")), sitk.sitkFloat32)
    spot = _healthy_spot(baseline, sitk.ReadImage(str(small_cases / "patient19" / "consensus_gt.nii.gz")))
    centre = baseline.TransformIndexToPhysicalPoint(spot)
    moved, motion = _moved(baseline)
    # the lesion sits where the baseline's centre point went: motion maps follow-up -> baseline points
    lesion_centre = motion.GetInverse().TransformPoint(centre)
    followup = _noisy(_with_lesion(moved, lesion_centre), seed=2)
    paths = {"baseline": root / "baseline.nii.gz", "followup": root / "followup.nii.gz"}
    sitk.WriteImage(_noisy(baseline, seed=1), str(paths["baseline"]))
    sitk.WriteImage(followup, str(paths["followup"]))
    return {**paths, "lesion_mm": lesion_centre, "motion": motion, "root": root}


@pytest.fixture(scope="module")
def detector(tiny_model) -> Detector:
    return Detector.from_file(tiny_model, "cpu")


@pytest.fixture(scope="module")
def comparison(detector, pair):
    return compare_scans(detector, sitk.ReadImage(str(pair["baseline"])), sitk.ReadImage(str(pair["followup"])))


def test_a_lesion_that_appeared_is_found_where_it_appeared_and_nowhere_else(comparison, pair):
    """Its status is *new* or *enlarging*: which one depends on the tiny model's own baseline
    mask (its calibration is crude); the status rule itself is tested exactly below."""
    followup = sitk.ReadImage(str(pair["followup"]))
    mask = comparison.change_mask
    assert mask.GetSize() == followup.GetSize() and np.allclose(mask.GetOrigin(), followup.GetOrigin())
    assert np.allclose(mask.GetSpacing(), followup.GetSpacing()) and np.allclose(mask.GetDirection(), followup.GetDirection())
    labels = sitk.GetArrayFromImage(mask)
    assert set(np.unique(labels)) <= {0, 1, 2}
    increase = np.argwhere(labels == 1)[:, ::-1].astype(float)
    assert len(increase), [row.status for row in comparison.lesions]
    centre = np.mean([mask.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in increase], axis=0)
    assert np.linalg.norm(centre - np.array(pair["lesion_mm"])) < 3.0
    lesion_ml = 4 / 3 * math.pi * LESION_RADIUS_MM**3 / 1000
    increase_ml = len(increase) * float(np.prod(mask.GetSpacing())) / 1000
    assert 0.5 * lesion_ml < increase_ml < 1.5 * lesion_ml
    assert (labels == 2).sum() * float(np.prod(mask.GetSpacing())) / 1000 < 0.2 * lesion_ml
    grown = [row for row in comparison.lesions if row.increase_ml > 0]
    assert len(grown) == 1 and grown[0].status in ("new", "enlarging"), [(r.status, r.increase_ml) for r in comparison.lesions]


def _ras(lps: tuple[float, ...]) -> tuple[float, float, float]:
    return (-lps[0], -lps[1], lps[2])


def test_the_registration_recovers_the_head_motion(comparison, pair):
    assert comparison.alignment.passed and comparison.alignment.correlation > 0.8
    found, true = affine_matrix(comparison.alignment.transform), affine_matrix(pair["motion"])
    followup = sitk.ReadImage(str(pair["followup"]))
    brain = np.argwhere(sitk.GetArrayFromImage(followup) > 0)[::97, ::-1].astype(float)
    points = np.array([followup.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in brain])
    homogeneous = np.c_[points, np.ones(len(points))]
    error = np.linalg.norm((homogeneous @ found.T - homogeneous @ true.T)[:, :3], axis=1)
    assert error.mean() < 1.0 and error.max() < 2.5, (error.mean(), error.max())


def test_the_same_pair_read_backwards_calls_the_lesion_resolved(detector, pair):
    backwards = compare_scans(detector, sitk.ReadImage(str(pair["followup"])), sitk.ReadImage(str(pair["baseline"])))
    gone = [row for row in backwards.lesions if row.status in ("resolved", "shrinking")]
    assert gone and max(row.decrease_ml for row in gone) > 0.1
    assert (sitk.GetArrayFromImage(backwards.change_mask) == 2).any()


def test_each_lesion_gets_its_status_from_both_time_points():
    reference = sitk.Image([40, 40, 10], sitk.sitkUInt8)
    reference.SetSpacing((1.0, 1.0, 2.0))
    shape = (10, 40, 40)
    labels, before, now = np.zeros(shape, np.uint8), np.zeros(shape, bool), np.zeros(shape, bool)
    labels[2:4, 2:6, 2:6] = 1  # brighter where nothing was: new
    now[2:4, 2:6, 2:6] = True
    before[2:4, 12:16, 12:16] = now[2:4, 12:18, 12:16] = True  # grew by two columns: enlarging
    labels[2:4, 16:18, 12:16] = 1
    before[6:8, 2:8, 20:26] = now[6:8, 2:5, 20:26] = True  # lost half: shrinking
    labels[6:8, 5:8, 20:26] = 2
    before[6:8, 20:24, 30:34] = True  # gone: resolved
    labels[6:8, 20:24, 30:34] = 2
    before[1:3, 30:34, 30:34] = now[1:3, 30:34, 30:34] = True  # unchanged: stable
    rows = lesion_changes(labels, now, before, reference)
    assert sorted(r.status for r in rows) == ["enlarging", "new", "resolved", "shrinking", "stable"]
    by_status = {r.status: r for r in rows}
    assert by_status["new"].baseline_ml == 0 and by_status["new"].followup_ml == pytest.approx(32 * 2 / 1000)
    assert by_status["resolved"].followup_ml == 0 and by_status["resolved"].decrease_ml == pytest.approx(32 * 2 / 1000)
    assert by_status["enlarging"].followup_ml > by_status["enlarging"].baseline_ml
    assert by_status["stable"].increase_ml == by_status["stable"].decrease_ml == 0
    assert rows[-1].status == "stable"  # the largest changes come first


@pytest.mark.parametrize("kind", ["half a voxel off on a 2.5 mm grid", "0.6 x + 100", "z-scored copy on a 2.5 mm grid"])
def test_a_scan_compared_with_itself_shows_no_new_lesion(detector, small_cases, kind):
    """No change, only resampling, another intensity offset and scale, or intensities centred
    near zero: at most one new or enlarging lesion (the sharper scan must not look brighter)."""
    scan = sitk.Cast(sitk.ReadImage(str(small_cases / "patient19" / "flair.nii.gz")), sitk.sitkFloat32)
    if kind.startswith("half"):
        baseline, followup = on_isotropic_grid(scan, 2.5, 1.25), on_isotropic_grid(scan, 2.5)
    elif kind.startswith("0.6"):
        baseline, followup = scan * 0.6 + 100.0, scan
    else:
        values = sitk.GetArrayFromImage(scan)
        scored = sitk.GetImageFromArray((values - values.mean()) / values.std())
        scored.CopyInformation(scan)
        baseline, followup = on_isotropic_grid(scored, 2.5), on_isotropic_grid(scored, 2.5)
    comparison = compare_scans(detector, baseline, followup)
    assert comparison.counts["new"] + comparison.counts["enlarging"] <= 1, comparison.counts
    assert comparison.change_ml()["increase_ml"] < 0.1 and comparison.change_ml()["decrease_ml"] < 0.1, comparison.change_ml()


def test_the_baseline_is_matched_to_the_follow_up_s_intensity_scale():
    rng = np.random.default_rng(0)
    followup = rng.normal(100.0, 20.0, (20, 30, 30)).astype(np.float32)
    brain = np.ones(followup.shape, dtype=bool)
    same = pair_normalised(followup, followup, brain)
    rescaled = pair_normalised(followup, 0.6 * followup + 100.0, brain)
    assert np.allclose(same[1], rescaled[1], atol=1e-4) and np.allclose(same[0], same[1])
    shifted = pair_normalised(followup - 150.0, followup - 150.0, brain)  # centred below zero, like a z-scored scan
    assert float(np.median(shifted[0])) == pytest.approx(1.0) and float(np.percentile(shifted[0], 0.5)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(SSAEError, match="constant"):
        pair_normalised(followup, np.full(followup.shape, 5.0, np.float32), brain)


def test_the_follow_up_is_made_as_sharp_as_the_carried_baseline():
    grid = sitk.Image([40, 40, 30], sitk.sitkFloat32)
    grid.SetSpacing((2.5, 2.5, 2.5))
    shifted = sitk.Image(grid)
    shifted.SetOrigin((1.25, 1.25, 1.25))
    brain = np.ones((30, 40, 40), dtype=bool)
    identity = sitk.Euler3DTransform()
    assert np.allclose(interpolation_variance(grid, grid, identity, brain), 0.0)
    assert np.allclose(interpolation_variance(grid, shifted, identity, brain), 0.25)
    centre = np.array(grid.TransformIndexToPhysicalPoint((20, 20, 15)))

    def blob_on(image: sitk.Image) -> sitk.Image:  # a 3 mm (SD) bright spot at one physical place
        zyx = np.indices((30, 40, 40)).reshape(3, -1)[::-1].T
        points = np.array(image.GetOrigin()) + zyx * 2.5
        values = 100.0 * np.exp(-np.sum((points - centre) ** 2, axis=1) / (2 * 3.0**2))
        result = sitk.GetImageFromArray(values.reshape(30, 40, 40).astype(np.float32))
        result.CopyInformation(image)
        return result

    followup, baseline = blob_on(grid), blob_on(shifted)
    carried = float(sitk.GetArrayFromImage(carried_onto(baseline, followup, identity)).max())
    matched = float(sitk.GetArrayFromImage(as_sharp_as_carried(followup, baseline, identity, brain)).max())
    assert carried < 90.0  # linear interpolation half a voxel off flattens the spot
    assert abs(matched - carried) < 0.25 * (100.0 - carried), (carried, matched)  # the follow-up's spot no longer stands out


def test_the_change_rule_refuses_nonsense():
    for bad in ({"z": 0}, {"z": float("nan")}, {"tolerance_voxels": -1}, {"min_change_mm3": -5}, {"drift_mm": 0}, {"min_step": -0.1}):
        with pytest.raises(SSAEError):
            ChangeRule(**bad)


def test_compare_writes_a_complete_set_on_the_followup_grid_and_refuses_to_overwrite(tiny_model, pair, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", str(tiny_model), str(pair["baseline"]), str(pair["followup"]), "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "new" in printed and "registration" in printed
    summary = json.loads(next(out.glob("*_change_summary.json")).read_text(encoding="utf-8"))
    assert set(summary["files"]) == {"change", "change_mask", "baseline_on_followup", "transform", "changes", "summary"}
    assert all(Path(path).is_file() for path in summary["files"].values())
    followup = sitk.ReadImage(str(pair["followup"]))
    for name in ("change", "change_mask", "baseline_on_followup"):
        image = sitk.ReadImage(summary["files"][name])
        assert image.GetSize() == followup.GetSize() and np.allclose(image.GetOrigin(), followup.GetOrigin())
    with open(summary["files"]["changes"], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for status in ("new", "enlarging", "stable", "shrinking", "resolved"):
        assert summary[status] == sum(row["status"] == status for row in rows)
    assert summary["registration"]["passed"] is True and "NaN" not in next(out.glob("*_change_summary.json")).read_text(encoding="utf-8")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    cli_refuses(capsys, ["compare", tiny_model, pair["baseline"], pair["followup"], "-o", out, "--device", "cpu"], "already exists")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_bad_pairs_are_refused_before_any_work(tiny_model, pair, tmp_path, capsys):
    flat = sitk.Image([40, 40], sitk.sitkFloat32) + 1.0
    sitk.WriteImage(flat, str(tmp_path / "slice.nii.gz"))
    out = tmp_path / "out"
    cli_refuses(capsys, ["compare", tiny_model, pair["baseline"], tmp_path / "slice.nii.gz", "-o", out], "3D")
    cli_refuses(capsys, ["compare", tiny_model, pair["baseline"], pair["baseline"], "-o", out], "same file")
    cli_refuses(capsys, ["compare", tiny_model, pair["baseline"], tmp_path / "missing.nii.gz", "-o", out], "missing.nii.gz")
    cli_refuses(capsys, ["compare", tiny_model, pair["baseline"], pair["followup"], "--change-z", "0"], "--change-z")
    cli_refuses(capsys, ["compare", tiny_model, pair["baseline"], "-o", out], "pairs")
    assert not out.exists()


def test_two_different_patients_are_flagged(detector, small_cases):
    one = sitk.ReadImage(str(small_cases / "patient07" / "flair.nii.gz"))
    other = sitk.ReadImage(str(small_cases / "patient19" / "flair.nii.gz"))
    comparison = compare_scans(detector, one, other)
    assert not comparison.alignment.passed
    assert any("one patient" in warning for warning in comparison.warnings), comparison.warnings


def test_a_csv_of_pairs_keeps_going_past_a_bad_pair(tiny_model, pair, tmp_path, capsys):
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        f"pair,baseline,followup\ngood,{pair['baseline']},{pair['followup']}\nbad,{pair['baseline']},{tmp_path / 'gone.nii.gz'}\n",
        encoding="utf-8",
    )
    out = tmp_path / "results"
    assert main(["compare", str(tiny_model), str(manifest), "-o", str(out), "--device", "cpu"]) == 1
    with open(out / "comparisons.csv", newline="", encoding="utf-8") as handle:
        rows = {row["pair"]: row for row in csv.DictReader(handle)}
    assert rows["good"]["status"] == "ok" and int(rows["good"]["new"]) + int(rows["good"]["enlarging"]) == 1
    assert rows["bad"]["status"] == "error" and "gone.nii.gz" in rows["bad"]["error"]
    assert (out / "good").is_dir() and not (out / "bad").exists()


def test_slicer_compares_the_selected_volume_with_a_prior_scan_in_the_background(tiny_model, pair):
    """SSAE Anomaly's *Compare with a prior scan* on a real MRML scene, through the worker."""
    from headless_slicer import headless_scene
    from SSAEAnomalyLib import AnomalyLogic, update_volume_node_from_image

    from ssae.app.processes import wait_for

    scene, _ = headless_scene()
    volumes = {}
    for name in ("baseline", "followup"):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"FLAIR {name}")
        update_volume_node_from_image(node, sitk.ReadImage(str(pair[name])))
        node.CreateDefaultDisplayNodes()
        volumes[name] = node
    logic = AnomalyLogic(scene)
    params = logic.parameters
    params.input_volume, params.model_path, params.device = volumes["followup"], str(tiny_model), "cpu"
    try:
        with pytest.raises(SSAEError, match="same volume"):
            logic.followup.start(volumes["followup"])
        job = logic.followup.start(volumes["baseline"])
        params.input_volume = volumes["baseline"]  # the panel changes while the job runs: the job keeps its own inputs
        assert wait_for(job.command, timeout_s=300) == 0, "\n".join(job.command.new_lines())
        nodes = logic.followup.load(job)
    finally:
        logic.close_worker(kill=True)
    assert not job.workdir.exists()
    segmentation = nodes.segmentation.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == [
        "New or enlarging",
        "Shrinking or resolved",
    ]
    assert nodes.segmentation.GetName().startswith("FLAIR followup changes since FLAIR baseline")
    followup = volumes["followup"]
    for node in (nodes.change, nodes.baseline):
        assert node.GetImageData().GetDimensions() == followup.GetImageData().GetDimensions()
        assert np.allclose(node.GetOrigin(), followup.GetOrigin()) and np.allclose(node.GetSpacing(), followup.GetSpacing())
    assert nodes.table.GetNumberOfRows() == sum(int(nodes.summary[s]) for s in ("new", "enlarging", "stable", "shrinking", "resolved"))
    composite = scene.GetNodesByClass("vtkMRMLSliceCompositeNode").GetItemAsObject(0)
    if composite is not None:
        assert composite.GetBackgroundVolumeID() == followup.GetID() and composite.GetForegroundVolumeID() == nodes.baseline.GetID()
