"""Bad inputs and faults: a clear error (exit 2) before the work, and nothing half-written.

Each test pins one defect found by trying bad inputs and faults as a user and an unlucky
hospital would (bench/fuzz.py runs the same cases, and more, as separate processes).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import cli_refuses

from ssae.app.cli import main
from ssae.io import writing as volume_io
from ssae.io.errors import SSAEError


def _final_files(folder: Path) -> list[str]:
    """Files under final names (hidden temporaries and staging folders excluded)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


@pytest.fixture(scope="module")
def flair(small_cases) -> Path:
    return small_cases / "patient19" / "flair.nii.gz"


# -- files that are not what they say --------------------------------------------------------------


def test_a_truncated_nifti_is_refused_by_detect_and_by_train(tiny_model, flair, small_cases, tmp_path, capsys):
    truncated = tmp_path / "t.nii.gz"
    truncated.write_bytes(flair.read_bytes()[: flair.stat().st_size // 2])
    cli_refuses(capsys, ["detect", tiny_model, truncated, "-o", tmp_path / "out"], "truncated")
    uncompressed = tmp_path / "u.nii"
    uncompressed.write_bytes(gzip.decompress(flair.read_bytes())[:-5000])
    cli_refuses(capsys, ["detect", tiny_model, uncompressed, "-o", tmp_path / "out"], "truncated")
    training = tmp_path / "train"
    shutil.copytree(small_cases, training)
    (training / "patient07" / "flair.nii.gz").write_bytes(truncated.read_bytes())
    cli_refuses(
        capsys, ["train", training, "-o", tmp_path / "m.safetensors", "--quiet", "--no-atlas", "--cache-dir", tmp_path / "c"], "truncated"
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_nan_and_infinite_voxels_are_refused_by_detect_and_preprocess(tiny_model, flair, tmp_path, capsys, bad):
    image = sitk.ReadImage(str(flair))
    array = sitk.GetArrayFromImage(image)
    array[10, 20, 30] = bad
    spoiled = sitk.GetImageFromArray(array)
    spoiled.CopyInformation(image)
    path = tmp_path / "spoiled.nii.gz"
    sitk.WriteImage(spoiled, str(path))
    cli_refuses(capsys, ["detect", tiny_model, path, "-o", tmp_path / "out"], "NaN or infinite")
    cli_refuses(capsys, ["preprocess", path, "-o", tmp_path / "prep"], "NaN or infinite")
    everything = sitk.GetImageFromArray(np.full_like(array, np.nan))
    everything.CopyInformation(image)
    sitk.WriteImage(everything, str(path))
    cli_refuses(capsys, ["detect", tiny_model, path, "-o", tmp_path / "out"], "(all of them)")


def test_a_folder_given_as_the_model_is_named_as_such(flair, tmp_path, capsys):
    cli_refuses(capsys, ["detect", tmp_path, flair, "-o", tmp_path / "out"], "is a folder")


def test_preprocess_explains_a_tiny_volume_and_an_empty_mask(flair, tmp_path, capsys):
    tiny = sitk.GetImageFromArray(np.random.default_rng(0).random((3, 4, 4)).astype(np.float32))
    sitk.WriteImage(tiny, str(tmp_path / "tiny.nii.gz"))
    err = cli_refuses(capsys, ["preprocess", tmp_path / "tiny.nii.gz", "-o", tmp_path / "p"], "")
    assert "itk::" not in err and "too small" in err
    image = sitk.ReadImage(str(flair))
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    sitk.WriteImage(empty, str(tmp_path / "empty_mask.nii.gz"))
    err = cli_refuses(capsys, ["preprocess", flair, "--brain-mask", tmp_path / "empty_mask.nii.gz", "-o", tmp_path / "p"], "empty")
    assert "itk::" not in err


# -- flags ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch-size", "-1"], "--batch-size"),
        (["--batch-size", "0"], "--batch-size"),
        (["--threshold", "nan"], "--threshold"),
        (["--threshold", "-1"], "--threshold"),
        (["--threshold", "0"], "--threshold"),
        (["--adapt-epochs", "0"], "--adapt-epochs"),
        (["--adapt-lr", "inf"], "--adapt-lr"),
    ],
)
def test_every_numeric_detect_flag_is_checked_before_any_work(tiny_model, flair, tmp_path, capsys, flags, message):
    started = time.perf_counter()
    cli_refuses(capsys, ["detect", tiny_model, flair, "-o", tmp_path / "out", *flags], message)
    assert time.perf_counter() - started < 2.0
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags", [["--lr", "nan"], ["--lr", "-1"], ["--epochs", "0"], ["--val-fraction", "1.5"], ["--median-size", "4"]])
def test_every_numeric_train_flag_is_checked(small_cases, tmp_path, capsys, flags):
    cli_refuses(capsys, ["train", small_cases, "-o", tmp_path / "m.safetensors", *flags], flags[0])


# -- where results go ----------------------------------------------------------------------------------


def test_an_unusable_output_folder_is_refused_before_the_computation(tiny_model, flair, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder", encoding="utf-8")
    for target, message in ((a_file, "is a file"), (Path("/proc/ssae-results"), "cannot write")):
        started = time.perf_counter()
        cli_refuses(capsys, ["detect", tiny_model, flair, "-o", target], message)
        assert time.perf_counter() - started < 5.0  # refused before preprocessing, adaptation and the model run


def test_a_write_that_leaves_an_incomplete_file_fails_and_leaves_nothing(tmp_path, monkeypatch):
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((20, 30, 40)).astype(np.float32))
    real_write = sitk.WriteImage

    def full_disk(img, path, *args, **kwargs):  # ITK's writer does not report every short write
        real_write(img, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) * 3 // 4])

    monkeypatch.setattr(volume_io.sitk, "WriteImage", full_disk)
    with pytest.raises(SSAEError, match="incomplete"):
        volume_io.write_volume(image, tmp_path / "map.nii.gz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a small tmpfs needs root")
def test_a_full_disk_is_refused_up_front_and_leaves_nothing(tiny_model, flair, tmp_path, capsys):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("this machine cannot mount a tmpfs")
    try:
        cli_refuses(capsys, ["detect", tiny_model, flair, "-o", mount / "out"], "not enough free space")
        assert _final_files(mount / "out") == []
        (mount / "filler").write_bytes(b"")
        with pytest.raises(SSAEError, match="disk is full|incomplete"):  # past the up-front check: the write itself fails
            volume_io.write_volume(sitk.ReadImage(str(flair)), mount / "big.nii")
        assert _final_files(mount) == ["filler"]
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_an_interrupted_detection_leaves_no_file_under_a_final_name(tiny_model, flair, tmp_path, capsys, monkeypatch):
    from ssae.detection import result_files as detection_files

    written = []
    real = detection_files.write_volume

    def interrupted_after_two(image, path):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        return real(image, path)

    monkeypatch.setattr(detection_files, "write_volume", interrupted_after_two)
    monkeypatch.setattr(detection_files, "ThreadPoolExecutor", _SerialPool)
    out = tmp_path / "out"
    assert main(["detect", str(tiny_model), str(flair), "-o", str(out), "--no-adapt"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert len(written) == 2 and out.exists() and list(out.iterdir()) == []  # no final file, no staging folder
    monkeypatch.undo()
    assert main(["detect", str(tiny_model), str(flair), "-o", str(out), "--no-adapt"]) == 0  # and nothing blocks a rerun


class _SerialPool:
    """A stand-in for ThreadPoolExecutor that runs in the calling thread (deterministic order)."""

    def __init__(self, max_workers: int) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def map(self, function, items):
        return [function(item) for item in items]


def test_a_failure_while_replacing_results_restores_the_old_ones(tmp_path, monkeypatch):
    from ssae.detection import result_files as detection_files

    final = {name: tmp_path / f"{name}.txt" for name in ("a", "b", "c")}
    for path in final.values():
        path.write_text("old", encoding="utf-8")
    staging = tmp_path / ".staging"
    staging.mkdir()
    staged = {}
    for name in final:
        staged[name] = staging / f"{name}.txt"
        staged[name].write_text("new", encoding="utf-8")
    real_replace = os.replace
    moves = []

    def failing_replace(source, target):
        if Path(target) == final["c"] and Path(source).parent == staging:
            raise OSError(28, "No space left on device")
        moves.append(target)
        real_replace(source, target)

    monkeypatch.setattr(detection_files.os, "replace", failing_replace)
    with pytest.raises(SSAEError, match="disk is full"):
        detection_files.move_into_place(staged, final, overwrite=True)
    assert {name: p.read_text(encoding="utf-8") for name, p in final.items()} == {"a": "old", "b": "old", "c": "old"}


# -- thresholds and JSON -------------------------------------------------------------------------------


def test_evaluate_on_labels_without_lesions_writes_null_not_nan(tiny_model, small_cases, tmp_path, capsys):
    data = tmp_path / "healthy-labels"
    for patient in ("patient07",):
        (data / patient).mkdir(parents=True)
        shutil.copy(small_cases / patient / "flair.nii.gz", data / patient / "flair.nii.gz")
        label = sitk.ReadImage(str(small_cases / patient / "consensus_gt.nii.gz")) * 0
        sitk.WriteImage(label, str(data / patient / "consensus_gt.nii.gz"))
    out = tmp_path / "eval"
    assert main(["evaluate", str(tiny_model), str(data), "-o", str(out), "--no-adapt", "--no-scales"]) == 0
    assert "undefined" in capsys.readouterr().err
    text = (out / "metrics.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    metrics = json.loads(text)
    assert metrics["pooled"]["prior"]["auprc"] is None and metrics["warnings"]


def test_json_can_never_carry_nan():
    with pytest.raises(AssertionError):
        volume_io.json_text({"x": float("nan")})


# -- intensities -----------------------------------------------------------------------------------------


def test_intensities_in_any_units_give_the_same_result(tiny_model, flair, tmp_path, capsys):
    from ssae.preprocessing.bias_field import bias_correct
    from ssae.preprocessing.registration_check import contrast_check

    image = sitk.Cast(sitk.ReadImage(str(flair)), sitk.sitkFloat32)
    corrected = sitk.GetArrayFromImage(bias_correct(image))
    huge = sitk.GetArrayFromImage(bias_correct(image * 1e30)) / 1e30
    assert np.allclose(huge, corrected, rtol=1e-3, atol=1e-3 * float(corrected.max()))
    z_scored = (image - 60.0) / 20.0  # negative values, as BraTS ships them
    assert "CT" not in contrast_check(z_scored * 1e30, sitk.Euler3DTransform())[1]
    sitk.WriteImage(image * 1e30, str(tmp_path / "huge.nii.gz"))
    runs = {}
    for name, path in (("plain", flair), ("huge", tmp_path / "huge.nii.gz")):
        out = tmp_path / name
        assert main(["detect", str(tiny_model), str(path), "-o", str(out), "--no-adapt", "--no-scales"]) == 0
        runs[name] = json.loads(next(out.glob("*_summary.json")).read_text(encoding="utf-8"))
    assert runs["huge"]["total_volume_ml"] == pytest.approx(runs["plain"]["total_volume_ml"], rel=0.02, abs=0.05)


def test_an_empty_brain_mask_is_a_clear_error(tiny_model, flair, tmp_path, capsys):
    from ssae.preprocessing.bias_field import bias_correct

    image = sitk.ReadImage(str(flair))
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    with pytest.raises(SSAEError, match="empty"):
        bias_correct(image, empty)
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    cli_refuses(capsys, ["detect", tiny_model, flair, "--brain-mask", tmp_path / "empty.nii.gz", "-o", tmp_path / "out"], "empty")


# -- a fresh clone's frictions ---------------------------------------------------------------------------


def test_demo_refuses_an_existing_output_before_any_work(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo_summary.json").write_text("{}", encoding="utf-8")
    started = time.perf_counter()
    cli_refuses(capsys, ["demo", "-o", out], "already exists")
    assert time.perf_counter() - started < 5.0


def test_train_defaults_are_the_shipped_models_recipe(repo):
    from ssae.app.cli import build_parser
    from ssae.models.checkpoint import read_model_card

    args = build_parser().parse_args(["train", "data", "-o", "m.safetensors"])
    config = read_model_card(repo / "Resources" / "Models" / "ssae-dense-nichart.safetensors")["training"]["config"]
    assert (args.size, args.levels, args.epochs, args.patience) == (
        config["architecture"]["size"],
        config["architecture"]["levels"],
        config["max_epochs"],
        config["patience"],
    )
    assert (args.atlas, args.bias_correction, args.clip_max) == (
        config["preprocessing"]["atlas"],
        config["preprocessing"]["bias_correction"],
        config["preprocessing"]["clip_max"],
    )
    assert args.score_map == config["score_map"]


def test_training_on_labelled_scans_warns_that_they_are_not_healthy(tiny_model, small_cases, capsys):
    assert main(["train", str(small_cases), "-o", str(tiny_model)]) == 2  # refused (the file exists), after the warning
    err = capsys.readouterr().err
    assert "warning" in err and "healthy" in err and "already exists" in err


def test_the_repository_ignores_what_the_commands_write_by_default(repo):
    ignored = (repo / ".gitignore").read_text(encoding="utf-8")
    for folder in ("/ssae-output/", "/demo-output/", "/ssae-evaluation/"):
        assert folder in ignored


def test_every_command_exits_2_without_traceback_as_a_process(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "ssae", "detect", "x.safetensors", "y.nii.gz", "--batch-size", "-1"], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_a_result_that_appears_meanwhile_is_never_clobbered(tmp_path):
    """Two runs writing the same results: the later one fails instead of replacing the other's."""
    from ssae.detection import result_files as detection_files

    staging = tmp_path / ".staging"
    staging.mkdir()
    final = {name: tmp_path / f"{name}.txt" for name in ("a", "b")}
    staged = {name: staging / f"{name}.txt" for name in final}
    for path in staged.values():
        path.write_text("mine", encoding="utf-8")
    final["b"].write_text("the other run's", encoding="utf-8")  # written after this run checked
    with pytest.raises(SSAEError, match="appeared while this run was writing"):
        detection_files.move_into_place(staged, final, overwrite=False)
    assert not final["a"].exists() and final["b"].read_text(encoding="utf-8") == "the other run's"
