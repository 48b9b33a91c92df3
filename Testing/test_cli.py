"""The command line end to end: outputs, and a clear one-line refusal of every bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import cli_refuses

from ssae.app.cli import main
from ssae.models.card import Calibration, ModelCard
from ssae.models.checkpoint import save_model
from ssae.models.networks import build_model
from ssae.models.settings import Architecture
from ssae.preprocessing.slices import PreprocessingSettings
from ssae.scoring.score_maps import PostprocessingSettings


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory) -> Path:
    """A valid model file with random weights: enough wherever the input is refused first."""
    arch = Architecture("dense", size=64, levels=2, base_filters=8, max_filters=16, latent_dim=8)
    card = ModelCard(
        arch, PreprocessingSettings(size=64), PostprocessingSettings(median_size=3), [0], {"prior": 0.1}, Calibration("test"), "prior"
    )
    torch.manual_seed(0)
    return save_model(build_model(arch), card, tmp_path_factory.mktemp("untrained") / "model.safetensors")


def _write(array, path, spacing=None):
    image = sitk.GetImageFromArray(array)
    if spacing:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def test_detect_writes_maps_mask_and_summary_on_the_input_grid(tiny_model, small_cases, tmp_path, capsys):
    image_path = small_cases / "patient19" / "flair.nii.gz"
    out = tmp_path / "out"
    assert main(["detect", str(tiny_model), str(image_path), "-o", str(out), "--format", "nrrd", "--figure", "--device", "cpu"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "flair_aggregated.nrrd",
            "flair_level0.nrrd",
            "flair_level1.nrrd",
            "flair_level2.nrrd",
            "flair_prior.nrrd",
            "flair_fused.nrrd",
            "flair_flair.nrrd",
            "flair_lesion_mask.nrrd",
            "flair_small_lesions.nrrd",
            "flair_lesions.csv",
            "flair_summary.json",
            "flair_figure.png",
        ]
    )
    reference = sitk.ReadImage(str(image_path))
    for name in names:
        if name.endswith(".nrrd"):
            output = sitk.ReadImage(str(out / name))
            assert output.GetSize() == reference.GetSize()
            assert np.allclose(output.GetOrigin(), reference.GetOrigin()) and np.allclose(output.GetDirection(), reference.GetDirection())
    summary = json.loads((out / "flair_summary.json").read_text(encoding="utf-8"))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "flair_lesion_mask.nrrd")))
    assert summary["total_volume_ml"] == pytest.approx(mask.sum() * np.prod(reference.GetSpacing()) / 1000, rel=1e-6)
    assert summary["files"]["score"] == str(out / "flair_prior.nrrd") and summary["score_map"] == "prior"
    assert summary["adaptation"]["settings"]["epochs"] >= 1  # the model card asks for adaptation: done on a copy
    score = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "flair_prior.nrrd")))
    below = mask.astype(bool) & ~(score > summary["threshold"])  # voxels the small-lesion rule added, nothing else
    small = summary["small_lesions"]
    assert not below.any() or (small is not None and small["added"] > 0 and small["threshold"] is not None)
    # the small lesions of the run's point (balanced) are exactly what its mask holds beyond the voxel mask
    bits = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "flair_small_lesions.nrrd")))
    balanced = (bits & summary["small_lesion_bits"]["balanced"]) > 0
    assert not (below & ~balanced).any() and not (balanced & ~mask.astype(bool)).any()
    assert "lesion(s)" in capsys.readouterr().out
    # A second run refuses to overwrite, and leaves the files as they were.
    before = (out / "flair_summary.json").read_bytes()
    cli_refuses(capsys, ["detect", tiny_model, image_path, "-o", out, "--format", "nrrd", "--figure"], "already exists")
    assert (out / "flair_summary.json").read_bytes() == before
    assert main(["detect", str(tiny_model), str(image_path), "-o", str(out), "--format", "nrrd", "--overwrite", "--threshold", "0.5"]) == 0


def test_info_and_evaluate(tiny_model, small_cases, tmp_path, capsys):
    assert main(["info", str(tiny_model)]) == 0
    text = capsys.readouterr().out
    assert "dense SSAE 64 px, 3 levels" in text and "threshold" in text and "level 0 (64 px" in text
    out = tmp_path / "eval"
    assert main(["evaluate", str(tiny_model), str(small_cases), "-o", str(out), "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["pooled"]) == {
        "aggregated",
        "level0",
        "level1",
        "level2",
        "prior",
        "fused",
        "flair",
        "raw FLAIR baseline",
        "strong FLAIR baseline",
    }
    for values in metrics["pooled"].values():
        assert 0 < values["auprc"] <= 1 and 0 < values["best_dice"] <= 1
    assert "dice_at_threshold" in metrics["pooled"]["prior"] and "dice_at_threshold" not in metrics["pooled"]["raw FLAIR baseline"]
    assert (out / "cases.csv").read_text(encoding="utf-8").count("\n") == 3 and (out / "pr_curve.png").stat().st_size > 1000


def test_bad_images_are_refused_with_one_line(untrained_model, tmp_path, capsys):
    out = tmp_path / "out"
    rng = np.random.default_rng(0)
    cases = {
        "2D": (_write(rng.random((32, 32)).astype(np.float32), tmp_path / "flat.nii.gz"), "2D"),
        "4D": (_write(rng.random((2, 8, 8, 8)).astype(np.float32), tmp_path / "four.nii.gz"), "components"),
        "constant": (_write(np.ones((8, 8, 8), np.float32), tmp_path / "const.nii.gz"), "constant"),
        "nan": (_write(np.where(rng.random((8, 8, 8)) > 0.5, np.nan, 1.0).astype(np.float32), tmp_path / "nan.mha"), "NaN"),
        "missing": (tmp_path / "missing.nii.gz", "not found"),
    }
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not an image")
    cases["unreadable"] = (garbage, "cannot read")
    for path, message in cases.values():
        cli_refuses(capsys, ["detect", untrained_model, path, "-o", out], message)
    assert not out.exists()


def test_brain_mask_with_other_geometry_is_refused(untrained_model, small_cases, tmp_path, capsys):
    image = sitk.ReadImage(str(small_cases / "patient07" / "flair.nii.gz"))
    mask = sitk.Cast(image > 0, sitk.sitkUInt8)
    mask.SetSpacing([s * 1.5 for s in image.GetSpacing()])
    sitk.WriteImage(mask, str(tmp_path / "mask.nii.gz"))
    cli_refuses(
        capsys,
        [
            "detect",
            untrained_model,
            small_cases / "patient07" / "flair.nii.gz",
            "--brain-mask",
            tmp_path / "mask.nii.gz",
            "-o",
            tmp_path / "o",
        ],
        "does not match",
    )


def test_bad_training_data_and_checkpoints(untrained_model, small_cases, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cli_refuses(capsys, ["train", tmp_path / "empty", "-o", tmp_path / "m.safetensors"], "no scans found")
    one = tmp_path / "one"
    one.mkdir()
    (one / "patient07").symlink_to(small_cases / "patient07")
    cli_refuses(capsys, ["train", one, "-o", tmp_path / "m.safetensors"], "at least 2 subjects")
    assert not (tmp_path / "m.safetensors").exists()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(untrained_model.read_bytes()[:5000])
    cli_refuses(capsys, ["info", truncated], "not an SSAE model file")
    cli_refuses(capsys, ["detect", truncated, small_cases / "patient07" / "flair.nii.gz", "-o", tmp_path / "o"], "SSAE model")
    cli_refuses(capsys, ["train", small_cases, "-o", untrained_model], "already exists")


def test_the_installed_command_exits_2_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ssae", "info", str(tmp_path / "none.safetensors")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == f"ssae: error: model file not found: {tmp_path / 'none.safetensors'}"


def test_demo_runs_on_the_shipped_model_and_data(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "raw FLAIR baseline" in printed and "strong FLAIR baseline" in printed and "demo_figure.png" in printed
    metrics = json.loads((out / "demo_metrics.json").read_text(encoding="utf-8"))["metrics"]
    for entry in metrics.values():
        assert 0 < entry["auprc"] <= 1 and 0 < entry["best_dice"] <= 1
    truth = sitk.ReadImage(str(Path(__file__).resolve().parent.parent / "Resources/SampleData/MSLUB/patient19/consensus_gt.nii.gz"))
    mask = sitk.ReadImage(str(out / "demo_lesion_mask.nii.gz"))
    assert mask.GetSize() == truth.GetSize() and np.allclose(mask.GetOrigin(), truth.GetOrigin())
    assert (out / "demo_figure.png").stat().st_size > 10000
