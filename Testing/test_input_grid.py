"""Maps go back from the slice grid to the input voxels exactly as ITK's linear resampling would
put them there, through the registration's affine transform, only inside the brain."""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_volume, oblique_direction

from ssae.io.errors import SSAEError
from ssae.preprocessing.input_grid import InputGridSampler, to_input_grid_many


def _grid() -> sitk.Image:
    grid = sitk.Image([40, 40, 12], sitk.sitkUInt8)
    grid.SetSpacing((2.5, 2.5, 3.0))
    grid.SetOrigin((-48.0, -52.0, -15.0))
    grid.SetDirection(oblique_direction(10))
    return grid


def _reference() -> sitk.Image:
    return make_volume(
        np.zeros((30, 70, 60), np.float32), spacing=(1.4, 1.3, 1.9), origin=(-45.0, -40.0, -30.0), direction=oblique_direction(25)
    )


def _affine() -> sitk.AffineTransform:
    transform = sitk.AffineTransform(3)
    transform.SetMatrix([1.05, 0.08, 0.0, -0.05, 0.95, 0.03, 0.02, 0.0, 1.1])
    transform.SetTranslation((3.0, -4.0, 2.5))
    transform.SetCenter((1.0, 2.0, -3.0))
    return transform


@pytest.mark.parametrize("with_transform", [False, True])
def test_the_sampler_matches_itk_linear_resampling_inside_the_brain(with_transform):
    grid, reference = _grid(), _reference()
    transform = _affine() if with_transform else None
    rng = np.random.default_rng(0)
    maps = {"a": rng.random((12, 40, 40)).astype(np.float32), "b": rng.random((12, 40, 40)).astype(np.float32) * 5}
    brain = sitk.Cast(sitk.GetImageFromArray((rng.random((30, 70, 60)) > 0.3).astype(np.uint8)), sitk.sitkUInt8)
    brain.CopyInformation(reference)
    ours = to_input_grid_many(maps, grid, reference, transform, brain)
    inside = sitk.GetArrayFromImage(brain) > 0
    for name, array in maps.items():
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(grid)
        inverse = transform.GetInverse() if transform is not None else sitk.Transform()
        itk = sitk.GetArrayFromImage(sitk.Resample(image, reference, inverse, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        result = sitk.GetArrayFromImage(ours[name])
        assert ours[name].GetSize() == reference.GetSize() and ours[name].GetDirection() == reference.GetDirection()
        assert (result[~inside] == 0).all()
        assert np.abs(result[inside] - itk[inside]).max() < 1e-4 * array.max()
        assert (itk[inside] > 0).mean() > 0.2  # the grid overlaps the reference: the comparison means something


def test_a_non_affine_transform_is_refused():
    with pytest.raises(SSAEError, match="affine"):
        InputGridSampler(_grid(), _reference(), sitk.DisplacementFieldTransform(3), None)
