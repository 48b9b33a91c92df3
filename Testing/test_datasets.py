"""Finding scans in the common layouts, and the preprocessed-slice cache."""

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from ssae.io.cases import find_cases
from ssae.io.errors import SSAEError
from ssae.preprocessing.slices import PreprocessingSettings
from ssae.training.slice_cache import load_slice_stack


def _touch_volume(path, value=1.0):
    image = sitk.GetImageFromArray(np.full((4, 4, 4), value, np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def test_mslub_layout(small_cases):
    cases = find_cases(small_cases)
    assert [c.name for c in cases] == ["patient07", "patient19"]
    assert all(c.image.name == "flair.nii.gz" and c.label.name == "consensus_gt.nii.gz" and c.brain_mask is None for c in cases)


def test_brats_layout_and_flat_folder_and_csv(tmp_path):
    brats = tmp_path / "brats"
    for case in ("Brats18_A_1", "Brats18_B_2"):
        for suffix in ("flair", "t1", "seg", "brainmask"):
            _touch_volume(brats / case / f"{case}_{suffix}.nii.gz")
    cases = find_cases(brats)
    assert [c.image.name for c in cases] == ["Brats18_A_1_flair.nii.gz", "Brats18_B_2_flair.nii.gz"]
    assert cases[0].label.name.endswith("_seg.nii.gz") and cases[0].brain_mask.name.endswith("_brainmask.nii.gz")

    flat = tmp_path / "flat"
    for name in ("sub01_flair.nii.gz", "sub01_brainmask.nii.gz", "sub02_flair.nii.gz", "sub02_lesion.nii.gz"):
        _touch_volume(flat / name)
    cases = find_cases(flat)
    assert [(c.name, c.brain_mask is not None, c.label is not None) for c in cases] == [("sub01", True, False), ("sub02", False, True)]

    manifest = tmp_path / "cases.csv"
    manifest.write_text("case,image,label\nfirst,flat/sub01_flair.nii.gz,flat/sub02_lesion.nii.gz\n", encoding="utf-8")
    (case,) = find_cases(manifest)
    assert case.name == "first" and case.label == (flat / "sub02_lesion.nii.gz").resolve()


def test_brain_masks_from_another_folder(tmp_path):
    for case in ("s1", "s2"):
        _touch_volume(tmp_path / "scans" / case / "flair.nii.gz")
        _touch_volume(tmp_path / "masks" / f"{case}_brain.nrrd")
    cases = find_cases(tmp_path / "scans", tmp_path / "masks")
    assert [c.brain_mask.name for c in cases] == ["s1_brain.nrrd", "s2_brain.nrrd"]
    (tmp_path / "masks" / "s2_brain.nrrd").unlink()
    with pytest.raises(SSAEError, match="no brain mask for s2"):
        find_cases(tmp_path / "scans", tmp_path / "masks")


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(SSAEError, match="no scans"):
        find_cases(tmp_path)
    with pytest.raises(SSAEError, match="not found"):
        find_cases(tmp_path / "missing")


def test_cache_is_reused_and_rebuilt_when_a_scan_changes(small_cases, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_cases, data)
    settings = PreprocessingSettings(size=64)
    messages = []
    first = load_slice_stack(find_cases(data), settings, tmp_path / "cache", messages.append)
    assert any("preprocessing" in m for m in messages)
    messages.clear()
    again = load_slice_stack(find_cases(data), settings, tmp_path / "cache", messages.append)
    assert again.key == first.key and not any("preprocessing" in m for m in messages)
    assert isinstance(again.slices, np.memmap)
    assert np.array_equal(np.asarray(again.slices), np.asarray(first.slices))
    # lesion voxels are excluded from the loss, other brain voxels are not
    assert first.excluded_voxels > 0 and first.loss_mask.mean() > 0.9
    image = sitk.ReadImage(str(data / "patient07" / "flair.nii.gz"))
    sitk.WriteImage(image * 1.01, str(data / "patient07" / "flair.nii.gz"))
    changed = load_slice_stack(find_cases(data), settings, tmp_path / "cache", messages.append)
    assert changed.key != first.key
