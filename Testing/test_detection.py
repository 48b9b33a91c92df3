"""Detection on real MRI: lesions score high, outputs live on the input's own grid."""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_direction

from ssae.detection.detector import DetectionCancelled, Detector
from ssae.io.volumes import read_mask, read_volume
from ssae.models.checkpoint import read_model_card


@pytest.fixture(scope="module")
def detector(tiny_model):
    return Detector.from_file(tiny_model, "cpu")


def _with_inserted_lesion(image: sitk.Image) -> tuple[sitk.Image, np.ndarray]:
    array = sitk.GetArrayFromImage(image)
    brain = array != 0
    zs, ys, xs = np.nonzero(brain)
    centre = np.array([(zs.min() + zs.max()) // 2, (ys.min() + ys.max()) // 2, xs.min() + (xs.max() - xs.min()) // 4])
    z, y, x = np.indices(array.shape)
    lesion = ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= 3.5**2) & brain
    array = array.copy()
    array[lesion] = 1.4 * np.percentile(array[brain], 99.5)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out, lesion


def test_inserted_hyperintense_lesion_scores_far_above_healthy_tissue(detector, small_cases, tiny_model):
    subject = read_model_card(tiny_model)["training"]["data"]["train_subjects"][0]  # anatomy the model has learnt
    image = read_volume(small_cases / subject / "flair.nii.gz")
    truth = sitk.GetArrayFromImage(read_mask(small_cases / subject / "consensus_gt.nii.gz", image, "label")).astype(bool)
    spoiled, lesion = _with_inserted_lesion(image)
    result = detector.detect(spoiled)
    score = sitk.GetArrayFromImage(result.maps["aggregated"])
    brain = sitk.GetArrayFromImage(result.prepared.brain_mask).astype(bool)
    healthy = brain & ~lesion & ~truth
    inside = float(score[lesion].mean())
    outside = float(score[healthy].mean())
    assert inside > 5 * outside, (inside, outside)
    assert inside > np.percentile(score[healthy], 99)
    # Without the insertion the same place is unremarkable.
    clean = sitk.GetArrayFromImage(detector.detect(image).maps["aggregated"])
    assert float(clean[lesion].mean()) < 0.5 * inside


def test_every_output_has_the_input_geometry_for_an_oblique_anisotropic_volume(detector, small_cases):
    image = read_volume(small_cases / "patient19" / "flair.nii.gz")
    image.SetDirection(oblique_direction(20))
    image.SetSpacing((1.7, 2.3, 3.1))
    image.SetOrigin((12.5, -40.0, 33.0))
    result = detector.detect(image)
    outputs = [result.mask, *result.maps.values()]
    assert result.levels == [0, 1, 2]
    assert set(result.maps) == {"aggregated", "level0", "level1", "level2", "prior", "fused", "flair"}
    for output in outputs:
        assert output.GetSize() == image.GetSize()
        assert output.GetSpacing() == image.GetSpacing()
        assert output.GetOrigin() == image.GetOrigin()
        assert output.GetDirection() == image.GetDirection()
    brain = sitk.GetArrayFromImage(result.prepared.brain_mask).astype(bool)
    for name, score in result.maps.items():
        assert (sitk.GetArrayFromImage(score)[~brain] == 0).all(), name  # scores stay in the brain
    mask = sitk.GetArrayFromImage(result.mask).astype(bool)
    above = sitk.GetArrayFromImage(result.score) > result.threshold
    if result.small_lesions is None or result.small_lesions.added == 0:
        assert not (mask & ~above).any()
    else:  # what is not above the threshold is a small lesion: bright on the scan's own voxels, away from the rim
        ratio = result.intensities.values / np.median(result.intensities.values[result.intensities.brain])
        assert np.all(ratio[mask & ~above] > 1.0) and np.all(result.intensities.depth_mm[mask & ~above] > 0)


def test_threshold_drives_the_mask_and_cancel_stops(detector, small_cases):
    image = read_volume(small_cases / "patient19" / "flair.nii.gz")
    calibrated = detector.card.threshold_for("aggregated")
    low = detector.detect(image, threshold=calibrated * 0.5, scales=False, score_map="aggregated")
    high = detector.detect(image, threshold=calibrated * 2.0, scales=False, score_map="aggregated")
    assert low.statistics.total_ml > high.statistics.total_ml
    assert not low.levels
    with pytest.raises(DetectionCancelled):
        detector.detect(image, should_cancel=lambda: True)
