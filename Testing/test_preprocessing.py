"""From any scanner geometry to the slice grid and back, on real MRI."""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_volume, oblique_direction

from ssae.io.errors import SSAEError
from ssae.io.volumes import read_volume
from ssae.preprocessing.foreground import foreground_mask
from ssae.preprocessing.input_grid import to_input_grid_many
from ssae.preprocessing.slices import (
    PreprocessingSettings,
    intensity_normalisation,
    prepare_volume,
    resample_to_grid,
)

SETTINGS = PreprocessingSettings(size=64)


@pytest.fixture(scope="module")
def flair(mslub_dir):
    return read_volume(mslub_dir / "patient07" / "flair.nii.gz")


def test_slices_are_normalised_brain_only_and_square(flair):
    prepared = prepare_volume(flair, SETTINGS)
    assert prepared.slices.shape[1:] == (64, 64)
    assert prepared.slices.dtype == np.float32
    assert 0.0 <= prepared.slices.min() and prepared.slices.max() <= 1.0
    assert (prepared.slices[~prepared.brain] == 0).all()
    brain_values = prepared.slices[prepared.brain]
    assert abs(np.mean(brain_values >= 0.999) - 0.02) < 0.015  # ~2 % clipped at the 98th percentile


def test_orientation_of_the_file_does_not_change_the_slices(flair):
    """Flipping and permuting the storage order (with a matching direction matrix) is the same scan."""
    flipped = sitk.Flip(flair, [True, False, True])
    permuted = sitk.PermuteAxes(flair, [1, 0, 2])
    reference = prepare_volume(flair, SETTINGS).slices
    for variant in (flipped, permuted):
        slices = prepare_volume(variant, SETTINGS).slices
        assert slices.shape == reference.shape
        assert np.abs(slices - reference).mean() < 1e-3


def test_maps_come_back_onto_an_oblique_anisotropic_grid_at_the_right_place():
    """A lesion-like blob, taken to the slice grid and back, lands on its own voxels again."""
    z, y, x = np.mgrid[0:30, 0:90, 0:80]
    head = ((x - 40) / 35.0) ** 2 + ((y - 45) / 40.0) ** 2 + ((z - 15) / 16.0) ** 2 < 1
    blob = ((x - 55) ** 2 + (y - 40) ** 2) / 36.0 + ((z - 14) ** 2) / 4.0 < 1
    rng = np.random.default_rng(0)
    array = np.where(head, 100 + 10 * rng.random(head.shape), 0) + 80 * blob
    image = make_volume(array.astype(np.float32), spacing=(0.7, 0.8, 3.5), origin=(-20.0, 15.0, 7.0), direction=oblique_direction(25))
    blob_image = make_volume(blob.astype(np.uint8), spacing=(0.7, 0.8, 3.5), origin=(-20.0, 15.0, 7.0), direction=oblique_direction(25))
    prepared = prepare_volume(image, SETTINGS)
    on_grid = resample_to_grid(blob_image, prepared.grid, label=True)
    assert on_grid.any()
    back = to_input_grid_many({"blob": on_grid.astype(np.float32)}, prepared.grid, image, None, None)["blob"]
    assert back.GetSize() == image.GetSize()
    assert back.GetSpacing() == image.GetSpacing()
    assert back.GetOrigin() == image.GetOrigin()
    assert back.GetDirection() == image.GetDirection()
    returned = sitk.GetArrayFromImage(back) > 0.5
    overlap = (returned & blob).sum() / blob.sum()
    assert overlap > 0.7 and (returned & ~blob).sum() < 0.5 * blob.sum()


def test_negative_z_scored_intensities_are_shifted_not_clipped_away():
    values = np.random.default_rng(1).normal(0, 1, 10000)
    offset, scale = intensity_normalisation(values, 98.0)
    normalised = (values - offset) / scale
    assert offset < 0
    assert np.mean(normalised <= 0) < 0.01 and np.mean(normalised >= 1) == pytest.approx(0.02, abs=0.005)


def test_foreground_mask_of_a_skull_stripped_scan_keeps_dark_csf(flair):
    mask = sitk.GetArrayFromImage(foreground_mask(flair)).astype(bool)
    nonzero = sitk.GetArrayFromImage(flair) != 0
    dice = 2 * (mask & nonzero).sum() / (mask.sum() + nonzero.sum())
    assert dice > 0.99


def test_empty_brain_mask_is_refused(flair):
    empty = sitk.Image(flair.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(flair)
    with pytest.raises(SSAEError, match="empty"):
        prepare_volume(flair, SETTINGS, empty)


def test_a_dicom_series_folder_reads_like_the_volume_it_came_from(tmp_path):
    rng = np.random.default_rng(0)
    array = (rng.random((6, 32, 40)) * 1000).astype(np.int16)
    image = make_volume(array, spacing=(0.8, 0.9, 3.0), origin=(-10.0, 20.0, 5.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        for tag, value in (
            ("0020|000e", series),
            ("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k))))),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0020|0013", str(k + 1)),
            ("0008|0060", "MR"),
        ):
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"slice{k:03d}.dcm"))
        writer.Execute(slice_image)
    loaded = read_volume(tmp_path)
    assert loaded.GetSize() == image.GetSize()
    assert np.allclose(loaded.GetSpacing(), image.GetSpacing(), atol=1e-3)
    assert np.allclose(loaded.GetOrigin(), image.GetOrigin(), atol=1e-3)
    assert np.array_equal(sitk.GetArrayFromImage(loaded), array)
