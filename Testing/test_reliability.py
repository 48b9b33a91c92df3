"""Nothing outside -o, nothing silently wrong (round 2): the worker, cohorts, adapt, evaluate and
odd geometry. Each test pins a class of defect found by a hostile but realistic user; bench/fuzz.py
runs the same cases as separate processes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import cli_refuses

from ssae.app.cli import main
from ssae.app.processes import wait_for
from ssae.app.worker_client import DetectionWorker
from ssae.detection.detector import cached_detector
from ssae.io.cases import find_cases
from ssae.io.errors import SSAEError


@pytest.fixture(scope="module")
def flair(small_cases) -> Path:
    return small_cases / "patient19" / "flair.nii.gz"


def _scans(small_cases, folder: Path) -> Path:
    shutil.copytree(small_cases, folder)
    return folder


# -- the worker ---------------------------------------------------------------------------------------


def test_worker_jobs_take_paths_and_survive_a_closed_worker(tiny_model, flair, tmp_path):
    worker = DetectionWorker()
    try:
        with pytest.raises(SSAEError, match="text or paths"):
            worker.submit(["info", 3.5])
        assert not worker.busy  # the refused job left no "busy" state behind
        job = worker.submit(["info", Path(tiny_model)])
        assert wait_for(job, timeout_s=120) == 0 and any("dense SSAE" in line for line in job.new_lines())
        worker.close()
        again = worker.submit(["info", Path(tiny_model)])  # a fresh worker, not a ValueError and a stuck "busy"
        assert wait_for(again, timeout_s=120) == 0 and worker.starts == 2
    finally:
        worker.kill()


def test_a_model_replaced_with_the_same_size_and_time_is_noticed(tiny_model, tmp_path):
    path = tmp_path / "model.safetensors"
    shutil.copy2(tiny_model, path)
    first = cached_detector(path, "cpu")
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])  # other weights, same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p or rsync -a leave it
    with pytest.raises(SSAEError, match="do not match the model card"):
        cached_detector(path, "cpu")
    shutil.copy2(tiny_model, path)
    assert cached_detector(path, "cpu").card.thresholds == first.card.thresholds


def test_the_worker_without_its_pipes_says_so():
    done = subprocess.run([sys.executable, "-m", "ssae.app.worker"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0  # end of input: the worker ends quietly
    closed = subprocess.run(
        [sys.executable, "-c", "import sys; sys.stdin.close(); sys.stdin = None; from ssae.app.worker import serve; sys.exit(serve())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert closed.returncode == 2 and "needs its standard input" in closed.stderr and "Traceback" not in closed.stderr


# -- cohorts: names, manifests, output folders ----------------------------------------------------------


def test_case_names_from_a_manifest_stay_inside_the_output_folder(tiny_model, flair, tmp_path, capsys):
    manifest = tmp_path / "scans.csv"
    manifest.write_text(f"case,image\n../escaped,{flair}\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["detect", str(tiny_model), str(manifest), "-o", str(out), "--no-adapt", "--device", "cpu"]) == 0
    assert not (tmp_path / "escaped").exists()
    folders = [p.name for p in out.iterdir() if p.is_dir()]
    assert folders == ["escaped"] and (out / "escaped").resolve().parent == out.resolve()


def test_manifests_in_every_common_encoding_and_with_empty_cells(flair, tmp_path, capsys):
    text = f"case,image\npatiënt,{flair}\n"
    for encoding in ("utf-8-sig", "utf-16", "cp1252"):
        path = tmp_path / f"{encoding}.csv"
        path.write_bytes(text.encode(encoding))
        (case,) = find_cases(path)
        assert case.name == "pati_nt" and case.image == flair.resolve()
    empty = tmp_path / "empty.csv"
    empty.write_text(f"case,image\na,{flair}\nb,\n", encoding="utf-8")
    with pytest.raises(SSAEError, match="line 3: the image cell is empty"):
        find_cases(empty)


def test_an_output_folder_that_is_or_holds_the_input_is_refused(tiny_model, small_cases, tmp_path, capsys):
    scans = _scans(small_cases, tmp_path / "scans")
    cli_refuses(capsys, ["detect", tiny_model, scans, "-o", scans], "holds the input")
    cli_refuses(capsys, ["detect", tiny_model, scans / "patient07", "-o", scans], "holds the input")
    cli_refuses(capsys, ["preprocess", scans, "-o", scans], "holds the input")
    cli_refuses(capsys, ["evaluate", tiny_model, scans, "-o", tmp_path], "holds the input")
    assert sorted(p.name for p in scans.iterdir()) == ["patient07", "patient19"]


def test_results_inside_the_scans_folder_are_never_taken_for_a_patient(tiny_model, small_cases, tmp_path, capsys):
    scans = _scans(small_cases, tmp_path / "scans")
    (scans / "patient07").rename(tmp_path / "patient07")  # one scan only, to keep it short
    args = ["detect", str(tiny_model), str(scans), "-o", str(scans / "results"), "--no-adapt", "--device", "cpu"]
    assert main(args) == 0
    assert [c.name for c in find_cases(scans)] == ["patient19"]
    rows = list(csv.DictReader(open(scans / "results" / "cohort.csv", encoding="utf-8")))
    assert [r["case"] for r in rows] == ["patient19"]


def test_sub1_and_sub10_in_one_flat_folder_are_two_subjects(flair, tmp_path):
    for name in ("sub1", "sub10"):
        shutil.copy(flair, tmp_path / f"{name}_flair.nii.gz")
        shutil.copy(flair.parent / "consensus_gt.nii.gz", tmp_path / f"{name}_seg.nii.gz")
    cases = find_cases(tmp_path)
    assert [(c.name, c.label.name) for c in cases] == [("sub1", "sub1_seg.nii.gz"), ("sub10", "sub10_seg.nii.gz")]


def test_dicom_series_without_an_extension_are_read_by_detect_and_preprocess(flair, tmp_path):
    image = sitk.Cast(sitk.RescaleIntensity(sitk.ReadImage(str(flair)), 0, 1000), sitk.sitkInt16)
    series = tmp_path / "series"
    series.mkdir()
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        slice_ = image[:, :, z]
        slice_.SetMetaData("0020|0013", str(z + 1))
        slice_.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z)))))
        slice_.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
        writer.SetFileName(str(series / f"IM{z:04d}"))  # no extension, as PACS exports write them
        writer.Execute(slice_)
    (case,) = find_cases(tmp_path)
    assert case.image == series
    out = tmp_path / "pre"
    assert main(["preprocess", str(series), "-o", str(out), "--no-bias-correction"]) == 0
    assert (out / "series_atlas.nii.gz").is_file()


def test_a_cohort_piped_into_head_still_finishes_its_work(tiny_model, small_cases, tmp_path):
    scans = _scans(small_cases, tmp_path / "scans")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ssae", "detect", str(tiny_model), str(scans), "-o", str(out), "--no-adapt", "--device", "cpu"]
    shell = subprocess.run(" ".join(f"'{c}'" for c in command) + " | head -n 1", shell=True, capture_output=True, text=True, timeout=600)
    assert shell.stdout.count("\n") == 1
    rows = list(csv.DictReader(open(out / "cohort.csv", encoding="utf-8")))  # the whole cohort, not the first scan only
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_an_interrupted_cohort_resumes_without_redoing_finished_scans(tiny_model, small_cases, tmp_path, capsys):
    scans = _scans(small_cases, tmp_path / "scans")
    out = tmp_path / "out"
    base = ["detect", str(tiny_model), str(scans), "-o", str(out), "--no-adapt", "--device", "cpu"]
    assert main(base) == 0
    (out / "cohort.csv").unlink()  # as after a Ctrl-C before the table
    shutil.rmtree(out / "patient19")  # one scan not done yet
    finished = (out / "patient07" / "flair_summary.json").stat().st_mtime_ns
    assert main(base) == 1  # without --resume the finished scan is an error row that says what to do
    assert "pass --resume" in (out / "cohort.csv").read_text(encoding="utf-8")
    (out / "cohort.csv").unlink()
    shutil.rmtree(out / "patient19")
    capsys.readouterr()
    assert main([*base, "--resume"]) == 0
    assert "already done" in capsys.readouterr().out
    assert (out / "patient07" / "flair_summary.json").stat().st_mtime_ns == finished
    rows = {r["case"]: r for r in csv.DictReader(open(out / "cohort.csv", encoding="utf-8"))}
    assert rows["patient07"]["status"] == rows["patient19"]["status"] == "ok" and rows["patient07"]["lesion_count"] != ""


# -- adapt, train, evaluate: every input checked before the work ------------------------------------------


def test_an_unwritable_cache_folder_is_refused_before_registration(tiny_model, small_cases, tmp_path, capsys):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be", encoding="utf-8")
    cli_refuses(capsys, ["adapt", tiny_model, small_cases, "-o", tmp_path / "a.safetensors", "--cache-dir", blocked], "is a file")
    cli_refuses(capsys, ["train", small_cases, "-o", tmp_path / "t.safetensors", "--cache-dir", blocked, "--quiet"], "is a file")
    assert not (tmp_path / "a.safetensors").exists()


def test_evaluate_checks_every_label_before_detecting(tiny_model, small_cases, tmp_path, capsys):
    scans = _scans(small_cases, tmp_path / "scans")
    label = scans / "patient19" / "consensus_gt.nii.gz"
    image = sitk.ReadImage(str(label))
    image.SetOrigin([v + 10 for v in image.GetOrigin()])
    sitk.WriteImage(image, str(label))
    err = cli_refuses(capsys, ["evaluate", tiny_model, scans, "-o", tmp_path / "e"], "does not match its image's geometry")
    assert "patient19" in err
    shutil.copy(scans / "patient19" / "flair.nii.gz", label)  # the FLAIR given as the label
    cli_refuses(capsys, ["evaluate", tiny_model, scans, "-o", tmp_path / "e"], "looks like a scan, not a mask")
    assert not (tmp_path / "e").exists()


def test_a_progress_log_that_cannot_be_written_is_a_usage_error(tiny_model, flair, tmp_path, capsys):
    for bad in (tmp_path / "missing" / "p.jsonl", tmp_path):
        assert main(["detect", str(tiny_model), str(flair), "-o", str(tmp_path / "o"), "--progress-log", str(bad)]) == 2
        assert "progress-log" in capsys.readouterr().err


# -- odd geometry and files ----------------------------------------------------------------------------------


def test_a_sheared_direction_matrix_is_refused_and_says_by_how_much(tiny_model, flair, tmp_path, capsys):
    image = sitk.ReadImage(str(flair))
    image.SetDirection((1, 0.1, 0, 0, 1, 0, 0, 0, 1))  # axes 5.7 degrees from perpendicular
    sheared = tmp_path / "sheared.nrrd"
    sitk.WriteImage(image, str(sheared))
    err = cli_refuses(capsys, ["detect", tiny_model, sheared, "-o", tmp_path / "out"], "not a rotation")
    assert "degrees from perpendicular" in err and not (tmp_path / "out").exists()


def test_every_written_volume_keeps_the_input_geometry(tiny_model, flair, tmp_path, capsys):
    image = sitk.ReadImage(str(flair))
    out = tmp_path / "out"
    assert main(["detect", str(tiny_model), str(flair), "-o", str(out), "--no-adapt", "--device", "cpu"]) == 0
    summary = json.loads((out / "flair_summary.json").read_text(encoding="utf-8"))
    for name, path in summary["files"].items():
        if path.endswith(".nii.gz"):
            written = sitk.ReadImage(path)
            assert written.GetSize() == image.GetSize(), name
            assert np.allclose(written.GetDirection(), image.GetDirection(), atol=1e-5) and np.allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-4)


def test_a_slab_is_reported_as_partial_coverage(flair, tmp_path):
    from ssae.preprocessing.registration import align_to_atlas

    slab = sitk.ReadImage(str(flair))
    slab = slab[:, :, slab.GetDepth() // 2 - 5 : slab.GetDepth() // 2 + 5]  # 20 mm of a 2 mm scan
    quality = align_to_atlas(slab).quality
    assert quality.brain_in_view < 0.5 and not quality.passed and "field of view" in quality.message


def test_an_uncompressed_nifti_named_nii_gz_is_read(tiny_model, flair, tmp_path, capsys):
    image = sitk.ReadImage(str(flair))
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(image, str(plain), False)
    misnamed = tmp_path / "misnamed.nii.gz"
    plain.rename(misnamed)
    from ssae.io.volumes import read_volume

    assert read_volume(misnamed).GetSize() == image.GetSize()


def test_info_on_a_device_file_and_on_a_card_that_claims_other_layers(tiny_model, tmp_path, capsys):
    cli_refuses(capsys, ["info", "/dev/zero"], "not a regular file")
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tiny_model), framework="pt") as handle:
        metadata, state = handle.metadata(), {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    card = json.loads(metadata["ssae_model_card"])
    card["architecture"]["levels"], card["aggregated_levels"] = 2, [0, 1]  # the file holds three levels' weights
    text = json.dumps(card)
    import hashlib

    metadata.update(ssae_model_card=text, ssae_card_sha256=hashlib.sha256(text.encode()).hexdigest())  # edited and re-signed
    save_file(state, str(tmp_path / "edited.safetensors"), metadata=metadata)
    cli_refuses(capsys, ["info", tmp_path / "edited.safetensors"], "do not fit the architecture")
