"""Raw clinical FLAIR to the atlas and back: registration accuracy, inverse mapping, checks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO

from ssae.app.cli import main
from ssae.io.errors import SSAEError
from ssae.preprocessing.atlas import load_atlas
from ssae.preprocessing.input_grid import to_input_grid_many
from ssae.preprocessing.registration import align_to_atlas
from ssae.preprocessing.registration_check import contrast_check
from ssae.preprocessing.slices import PreprocessingSettings, prepare_volume, resample_to_grid

CLINICAL = REPO / "Resources" / "SampleData" / "ClinicalRaw" / "patient01_study1_FLAIR.nii.gz"


@pytest.fixture(scope="module")
def clinical_small(tmp_path_factory) -> Path:
    """The raw clinical FLAIR (skull, oblique, 4 mm slices) at half its in-plane resolution."""
    image = sitk.ReadImage(str(CLINICAL))
    size = [image.GetSize()[0] // 2, image.GetSize()[1] // 2, image.GetSize()[2]]
    reference = sitk.Image(size, image.GetPixelID())
    reference.SetSpacing([image.GetSpacing()[0] * 2, image.GetSpacing()[1] * 2, image.GetSpacing()[2]])
    reference.SetDirection(image.GetDirection())
    reference.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([0.5, 0.5, 0.0]))
    path = tmp_path_factory.mktemp("clinical") / "raw_flair.nii.gz"
    sitk.WriteImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0), str(path))
    return path


@pytest.fixture(scope="module")
def atlas_model(tmp_path_factory, small_cases, tiny_config) -> Path:
    """A small 2-level SSAE trained on atlas-registered slices (short: geometry is what counts here)."""
    from ssae.io.cases import find_cases
    from ssae.models.settings import Architecture
    from ssae.training.trainer import train

    config = replace(
        tiny_config,
        architecture=Architecture("dense", size=64, levels=2, base_filters=8, max_filters=32, latent_dim=32),
        preprocessing=PreprocessingSettings(size=64, atlas=True),
        max_epochs=3,
        patience=3,
    )
    out = tmp_path_factory.mktemp("atlas_model") / "atlas.safetensors"
    train(find_cases(small_cases), config, out, device="cpu", cache_dir=tmp_path_factory.mktemp("atlas_cache"))
    return out


def test_raw_clinical_flair_goes_through_preprocess_and_detect_onto_its_own_grid(clinical_small, atlas_model, tmp_path, capsys):
    assert main(["preprocess", str(clinical_small), "-o", str(tmp_path / "pre")]) == 0
    assert "raw_flair: ok" in capsys.readouterr().out
    transform = sitk.ReadTransform(str(tmp_path / "pre" / "raw_flair_atlas_to_scan.tfm"))
    assert transform.GetDimension() == 3
    assert main(["detect", str(atlas_model), str(clinical_small), "-o", str(tmp_path / "det"), "--device", "cpu"]) == 0
    reference = sitk.ReadImage(str(clinical_small))
    for name in ("aggregated", "level0", "level1", "lesion_mask", "brainmask"):
        output = sitk.ReadImage(str(tmp_path / "det" / f"raw_flair_{name}.nii.gz"))
        assert output.GetSize() == reference.GetSize()
        assert np.allclose(output.GetSpacing(), reference.GetSpacing(), atol=1e-5)
        assert np.allclose(output.GetOrigin(), reference.GetOrigin(), atol=1e-4)
        assert np.allclose(output.GetDirection(), reference.GetDirection(), atol=1e-6)
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "det" / "raw_flair_brainmask.nii.gz"))).astype(bool)
    volume_ml = brain.sum() * np.prod(reference.GetSpacing()) / 1000
    assert 900 < volume_ml < 1900  # an adult brain, not the head
    assert (tmp_path / "det" / "raw_flair_atlas_to_scan.tfm").exists()


def _rotated(image: sitk.Image, degrees: float) -> tuple[sitk.Image, sitk.Euler3DTransform]:
    """The same voxels placed in a rotated position: physical point p moves to Q(p)."""
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    q = sitk.Euler3DTransform(centre, np.deg2rad(degrees), np.deg2rad(-degrees / 2), np.deg2rad(degrees / 3), (4.0, -6.0, 3.0))
    rotation = np.array(q.GetMatrix()).reshape(3, 3)
    moved = sitk.Image(image)
    moved.SetDirection(tuple((rotation @ np.array(image.GetDirection()).reshape(3, 3)).ravel()))
    moved.SetOrigin(q.TransformPoint(image.GetOrigin()))
    return moved, q


def test_a_known_oblique_rotation_is_recovered_within_two_millimetres(small_cases):
    image = sitk.ReadImage(str(small_cases / "patient07" / "flair.nii.gz"))
    moved, q = _rotated(image, 15.0)
    original = align_to_atlas(image).transform
    rotated = align_to_atlas(moved).transform
    brain = sitk.GetArrayViewFromImage(load_atlas().brain)
    k, j, i = np.nonzero(brain)
    sample = np.random.default_rng(0).choice(len(i), 2000, replace=False)
    errors = []
    for s in sample:
        p = load_atlas().brain.TransformIndexToPhysicalPoint([int(i[s]), int(j[s]), int(k[s])])
        expected = np.array(q.TransformPoint(original.TransformPoint(p)))
        errors.append(np.linalg.norm(np.array(rotated.TransformPoint(p)) - expected))
    assert np.mean(errors) < 2.0, np.mean(errors)  # the scan's voxels are 2 mm


def test_a_lesion_goes_to_the_atlas_grid_and_back_to_the_same_place(small_cases):
    image = sitk.ReadImage(str(small_cases / "patient19" / "flair.nii.gz"))
    prepared = prepare_volume(image, PreprocessingSettings(size=64, atlas=True))
    lesion = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    lesion[30:36, 40:46, 28:34] = 1
    label = sitk.GetImageFromArray(lesion)
    label.CopyInformation(image)
    on_grid = resample_to_grid(label, prepared.grid, label=True, transform=prepared.transform)
    assert on_grid.any()
    back = to_input_grid_many({"lesion": on_grid.astype(np.float32)}, prepared.grid, image, prepared.transform, None)["lesion"]
    back = sitk.GetArrayFromImage(back) > 0.5
    before = np.array(np.nonzero(lesion)).mean(axis=1)
    after = np.array(np.nonzero(back)).mean(axis=1)
    assert np.abs(before - after).max() < 1.5  # voxels (2 mm)
    assert 2 * (back & lesion.astype(bool)).sum() / (back.sum() + lesion.sum()) > 0.5


def test_contrast_check_recognises_flair_and_warns_for_t2_like_and_ct_like_scans(small_cases):
    image = sitk.Cast(sitk.ReadImage(str(small_cases / "patient07" / "flair.nii.gz")), sitk.sitkFloat32)
    transform = align_to_atlas(image).transform
    medians, warning = contrast_check(image, transform)
    assert warning == "" and medians["csf"] < medians["grey_matter"], medians
    brain = image != 0
    t2_like = sitk.Cast(brain, sitk.sitkFloat32) * (sitk.Cast(image, sitk.sitkFloat32) * -1.0 + 200.0)  # CSF now brightest
    assert "T2" in contrast_check(t2_like, transform)[1]
    ct_like = image - 1000.0
    assert "CT" in contrast_check(ct_like, transform)[1]


def test_a_volume_without_a_head_is_refused():
    rng = np.random.default_rng(0)
    array = np.zeros((40, 60, 60), np.float32)
    array[5:35, 10:20, 10:50] = 100 + rng.random((30, 10, 40))  # a slab, not a head
    phantom = sitk.GetImageFromArray(array)
    phantom.SetSpacing((2.0, 2.0, 2.0))
    with pytest.raises(SSAEError, match="registration"):
        align_to_atlas(phantom)


def test_slicer_logic_shows_atlas_results_and_the_registration_transform(clinical_small, atlas_model):
    from headless_slicer import headless_scene
    from SSAEAnomalyLib import AnomalyLogic, update_volume_node_from_image

    scene, _ = headless_scene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "raw FLAIR")
    update_volume_node_from_image(volume, sitk.ReadImage(str(clinical_small)))
    logic = AnomalyLogic(scene)
    logic.parameters.input_volume, logic.parameters.model_path, logic.parameters.device = volume, str(atlas_model), "cpu"
    logic.detect()
    assert logic.registration is not None and logic.registration["passed"]
    transforms = scene.GetNodesByClass("vtkMRMLLinearTransformNode")
    assert transforms.GetNumberOfItems() == 1
    node = logic.parameters.result_volume("aggregated")
    assert node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()


def test_a_given_brain_mask_guides_the_registration_and_is_kept(small_cases):
    image = sitk.ReadImage(str(small_cases / "patient19" / "flair.nii.gz"))
    mask = sitk.Cast(image != 0, sitk.sitkUInt8)
    alignment = align_to_atlas(image, mask)
    assert alignment.quality.passed, alignment.quality.message
    assert np.array_equal(sitk.GetArrayFromImage(alignment.brain_mask), sitk.GetArrayFromImage(mask))
    unguided = align_to_atlas(image).transform
    point = load_atlas().brain.TransformContinuousIndexToPhysicalPoint([98.0, 116.0, 94.0])
    assert np.linalg.norm(np.array(alignment.transform.TransformPoint(point)) - np.array(unguided.TransformPoint(point))) < 4.0


@pytest.mark.parametrize("scale", [1.0, 1e30])
def test_bias_correction_keeps_the_head_intensities_of_a_raw_scan_in_any_units(scale):
    """N4 on the raw clinical FLAIR (skull, strong field) corrects, it does not wipe out the
    signal: with a +1 offset before the logarithm at unit scale, the head's median fell to 0.39
    of the input and 35 % of the head went negative, and registration failed on such scans."""
    from ssae.preprocessing.bias_field import bias_correct
    from ssae.preprocessing.foreground import foreground_mask

    image = sitk.Cast(sitk.ReadImage(str(CLINICAL)), sitk.sitkFloat32) * scale
    head = sitk.GetArrayFromImage(foreground_mask(image)) > 0
    before = sitk.GetArrayFromImage(image)[head]
    after = sitk.GetArrayFromImage(bias_correct(image))[head]
    assert 0.8 < np.median(after) / np.median(before) < 1.25
    assert (after < 0).mean() < 0.05
