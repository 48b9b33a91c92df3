"""Bad inputs and faults, tried as separate `ssae` processes: prints N/M handled.

Each case runs the real command line on the shipped model and sample scan and checks the
contract of README "Errors and guarantees": a bad input or flag ends with exit code 2 and one
line "ssae: error: ..." (no traceback) before the work starts; an interrupted or failed run
leaves nothing under a final name and the next run succeeds; what is written is complete.

    python bench/fuzz.py [--only SUBSTRING] [--keep]

Cases that need root (a 2 MB tmpfs for a full disk, a read-only mount) are skipped with a
message elsewhere. Takes about 3-4 minutes on two CPU cores (a dozen real detections).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPOSITORY = Path(__file__).resolve().parent.parent
MODEL = REPOSITORY / "Resources" / "Models" / "ssae-dense-nichart.safetensors"
SAMPLE = REPOSITORY / "Resources" / "SampleData" / "MSLUB" / "patient19"
SSAE = [sys.executable, "-m", "ssae"]
FAST = ["--no-adapt", "--no-scales"]  # the contract does not depend on adaptation or per-level maps


class Skip(Exception):
    """The case cannot run on this machine (said why)."""


@dataclass
class Outcome:
    code: int
    err: str
    seconds: float


def run(args: list, timeout: float = 300, env: dict | None = None) -> Outcome:
    start = time.monotonic()
    done = subprocess.run(SSAE + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env, cwd=WORK)
    return Outcome(done.returncode, done.stderr, time.monotonic() - start)


def final_files(folder: Path) -> list[str]:
    """Files under final names (hidden temporaries and staging folders excluded)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def expect_error(outcome: Outcome, message: str = "", within_s: float | None = None) -> None:
    lines = outcome.err.strip().splitlines()
    assert outcome.code == 2, f"exit {outcome.code}: {lines[-3:]}"
    assert lines and lines[-1].startswith("ssae: error:"), f"last line {lines[-1:]!r}"
    assert "Traceback" not in outcome.err, "traceback printed"
    assert message.lower() in lines[-1].lower(), f"{lines[-1]!r} does not mention {message!r}"
    if within_s is not None:
        assert outcome.seconds < within_s, f"refused only after {outcome.seconds:.1f} s"


def summary_of(folder: Path) -> dict:
    (path,) = folder.glob("*summary.json")  # named after the scan: <scan>_summary.json
    return json.loads(path.read_text(encoding="utf-8"))


def complete_set(folder: Path) -> None:
    summary = summary_of(folder)
    for name, path in summary["files"].items():
        image = Path(path)
        assert image.is_file(), f"{name} missing"
        if image.name.endswith((".nii.gz", ".nrrd", ".nii", ".mha")):
            sitk.ReadImage(str(image))  # decodes completely


def write_like(reference: sitk.Image, array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    if array.ndim == 3:
        image.CopyInformation(reference)
    sitk.WriteImage(image, str(path))
    return path


# -- the cases ----------------------------------------------------------------------------------


def flair_array() -> tuple[sitk.Image, np.ndarray]:
    image = sitk.ReadImage(str(SAMPLE / "flair.nii.gz"))
    return image, sitk.GetArrayFromImage(image).astype(np.float32)


def case_missing_image() -> None:
    expect_error(run(["detect", MODEL, WORK / "nope.nii.gz", "-o", WORK / "o"]), "not found", 10)


def case_missing_model() -> None:
    expect_error(run(["detect", WORK / "nope.safetensors", FLAIR, "-o", WORK / "o"]), "not found", 10)


def case_folder_as_model() -> None:
    expect_error(run(["detect", WORK, FLAIR, "-o", WORK / "o"]), "folder", 10)


def case_foreign_model() -> None:
    path = WORK / "notes.safetensors"
    path.write_text("hello", encoding="utf-8")
    expect_error(run(["detect", path, FLAIR, "-o", WORK / "o"]), "", 10)


def case_pickle_as_model() -> None:
    import pickle

    marker = WORK / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = WORK / "model.pt"
    path.write_bytes(pickle.dumps(Payload()))
    expect_error(run(["detect", path, FLAIR, "-o", WORK / "o"]), "", 10)
    assert not marker.exists(), "the pickle was executed"


def case_truncated_model() -> None:
    path = WORK / "truncated.safetensors"
    path.write_bytes(MODEL.read_bytes()[: MODEL.stat().st_size // 2])
    expect_error(run(["detect", path, FLAIR, "-o", WORK / "o"]), "", 10)


def edited_card_model() -> Path:
    """The shipped model with one threshold in its card changed (same header length)."""
    data = bytearray(MODEL.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + length].decode("utf-8")
    card = json.loads(json.loads(header)["__metadata__"]["ssae_model_card"])
    value = json.dumps(card["thresholds"]["aggregated"])
    edited = header.replace(value, value[:-1] + ("1" if value[-1] != "1" else "2"), 1)
    assert edited != header and len(edited) == len(header)
    data[8 : 8 + length] = edited.encode("utf-8")
    path = WORK / "edited.safetensors"
    path.write_bytes(bytes(data))
    return path


def case_edited_card_detect() -> None:
    expect_error(run(["detect", edited_card_model(), FLAIR, "-o", WORK / "o"]), "checksum", 10)


def case_edited_card_info() -> None:
    expect_error(run(["info", edited_card_model()]), "checksum", 10)


def resealed_card_model(edit: Callable[[dict], None], name: str) -> Path:
    """The shipped model with its card edited by ``edit`` and the card's checksum recomputed: a
    model file that is intact but says something malformed."""
    data = MODEL.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length].decode("utf-8"))
    card = json.loads(header["__metadata__"]["ssae_model_card"])
    edit(card)
    text = json.dumps(card)
    header["__metadata__"]["ssae_model_card"] = text
    header["__metadata__"]["ssae_card_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    encoded = json.dumps(header).encode("utf-8")
    path = WORK / name
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])
    return path


def case_malformed_small_lesion_rule() -> None:
    def edit(card: dict) -> None:
        card["operating_points"]["points"]["balanced"]["small_lesions"]["brightness"] = "bright"

    path = resealed_card_model(edit, "small-rule.safetensors")
    for command in (["info", path], ["detect", path, FLAIR, "-o", WORK / "o"]):
        expect_error(run(command), "small-lesion rule is malformed", 10)
    assert not final_files(WORK / "o")


def case_malformed_healthy_candidates() -> None:
    def edit(card: dict) -> None:
        card["healthy_candidates"]["rows"][0][0] = 99  # a subject the calibration never had

    path = resealed_card_model(edit, "candidates.safetensors")
    expect_error(run(["detect", path, FLAIR, "-o", WORK / "o"]), "healthy candidates are malformed", 10)
    assert not final_files(WORK / "o")


def case_tampered_weights() -> None:
    data = bytearray(MODEL.read_bytes())
    data[-1000] ^= 0x5A
    path = WORK / "tampered.safetensors"
    path.write_bytes(bytes(data))
    expect_error(run(["detect", path, FLAIR, "-o", WORK / "o"]), "checksum", 10)


def case_truncated_gzip() -> None:
    path = WORK / "t.nii.gz"
    path.write_bytes(FLAIR.read_bytes()[: FLAIR.stat().st_size // 2])
    expect_error(run(["detect", MODEL, path, "-o", WORK / "o"]), "truncated", 10)


def case_truncated_nii() -> None:
    path = WORK / "t.nii"
    path.write_bytes(gzip.decompress(FLAIR.read_bytes())[:-5000])
    expect_error(run(["detect", MODEL, path, "-o", WORK / "o"]), "truncated", 10)


def case_not_an_image() -> None:
    path = WORK / "fake.nii.gz"
    path.write_bytes(b"\x00" * 4000)
    expect_error(run(["detect", MODEL, path, "-o", WORK / "o"]), "", 10)


def _bad_voxels(value: float, everywhere: bool = False) -> Path:
    image, array = flair_array()
    if everywhere:
        array[:] = value
    else:
        array[array.shape[0] // 2, 100:110, 100:110] = value
    return write_like(image, array, WORK / f"bad{value}{everywhere}.nii.gz")


def case_nan_voxels() -> None:
    expect_error(run(["detect", MODEL, _bad_voxels(np.nan), "-o", WORK / "o"]), "finite", 10)


def case_inf_voxels() -> None:
    expect_error(run(["detect", MODEL, _bad_voxels(np.inf), "-o", WORK / "o"]), "finite", 10)


def case_all_nan() -> None:
    outcome = run(["detect", MODEL, _bad_voxels(np.nan, everywhere=True), "-o", WORK / "o"])
    expect_error(outcome, "finite", 10)
    assert "every voxel is" not in outcome.err


def case_constant_image() -> None:
    expect_error(run(["detect", MODEL, _bad_voxels(0.0, everywhere=True), "-o", WORK / "o"]), "", 10)


def case_nan_in_preprocess() -> None:
    expect_error(run(["preprocess", _bad_voxels(np.nan), "-o", WORK / "p"]), "finite", 10)


def case_two_dimensional() -> None:
    image, array = flair_array()
    path = write_like(image, array[array.shape[0] // 2], WORK / "slice.nii.gz")
    expect_error(run(["detect", MODEL, path, "-o", WORK / "o"]), "3D", 10)


def case_four_dimensional() -> None:
    image, array = flair_array()
    path = WORK / "4d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([image, image]), str(path))
    expect_error(run(["detect", MODEL, path, "-o", WORK / "o"]), "3D", 10)


def case_tiny_volume() -> None:
    path = WORK / "tiny.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((3, 3, 3), dtype=np.float32)), str(path))
    expect_error(run(["detect", MODEL, path, "-o", WORK / "o"]), "", 10)
    outcome = run(["preprocess", path, "-o", WORK / "p"])
    expect_error(outcome, "", 10)
    assert "itk::" not in outcome.err and "ITK ERROR" not in outcome.err, "raw ITK text"


def case_mask_wrong_grid() -> None:
    image, array = flair_array()
    mask = sitk.GetImageFromArray((array[::2] > 0).astype(np.uint8))
    path = WORK / "mask_grid.nii.gz"
    sitk.WriteImage(mask, str(path))
    expect_error(run(["detect", MODEL, FLAIR, "--brain-mask", path, "-o", WORK / "o"]), "", 10)


def case_empty_brain_mask() -> None:
    image, array = flair_array()
    path = write_like(image, np.zeros(array.shape, np.uint8), WORK / "empty_mask.nii.gz")
    expect_error(run(["detect", MODEL, FLAIR, "--brain-mask", path, "-o", WORK / "o"]), "empty", 10)
    expect_error(run(["preprocess", FLAIR, "--brain-mask", path, "-o", WORK / "p"]), "empty", 10)


def _flag(*flags: str, command: str = "detect", message: str = "") -> Callable[[], None]:
    def case() -> None:
        if command == "detect":
            args = ["detect", MODEL, FLAIR, "-o", WORK / "o", *flags]
        else:
            args = ["train", TRAIN_FOLDER, "-o", WORK / "m.safetensors", *flags]
        expect_error(run(args), message, 10)
        assert not final_files(WORK / "o")

    return case


def case_scaled_1e30() -> None:
    image, array = flair_array()
    scaled = write_like(image, array * np.float32(1e30), WORK / "scaled.nii.gz")
    first, second = WORK / "unit", WORK / "scaled"
    for source, out in [(FLAIR, first), (scaled, second)]:
        outcome = run(["detect", MODEL, source, "-o", out, *FAST])
        assert outcome.code == 0, outcome.err[-500:]
    a, b = summary_of(first), summary_of(second)
    assert "CT" not in json.dumps(b.get("warnings", [])), "called CT"
    va, vb = a["total_volume_ml"], b["total_volume_ml"]
    assert abs(va - vb) <= 0.02 * max(va, 1.0), f"lesion volume {va} ml vs {vb} ml"


def case_non_ascii_path() -> None:
    folder = WORK / "Müller Ærø 患者"
    folder.mkdir()
    source = folder / "flair ü.nii.gz"
    shutil.copy(FLAIR, source)
    outcome = run(["detect", MODEL, source, "-o", folder / "résultats", *FAST])
    assert outcome.code == 0, outcome.err[-500:]
    complete_set(folder / "résultats")


def case_output_is_a_file() -> None:
    target = WORK / "a_file"
    target.write_text("x", encoding="utf-8")
    expect_error(run(["detect", MODEL, FLAIR, "-o", target]), "", 10)
    assert target.read_text(encoding="utf-8") == "x"


def case_output_under_proc() -> None:
    expect_error(run(["detect", MODEL, FLAIR, "-o", "/proc/ssae-out"]), "", 10)


def _mount_tmpfs(folder: Path, options: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        raise Skip("needs root to mount a tmpfs")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        raise Skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    MOUNTS.append(folder)


def case_read_only_output() -> None:
    folder = WORK / "ro"
    if os.geteuid() == 0:
        _mount_tmpfs(folder, "size=1m,ro")
    else:
        folder.mkdir()
        folder.chmod(0o555)
    expect_error(run(["detect", MODEL, FLAIR, "-o", folder / "out"]), "", 10)


def case_disk_full() -> None:
    folder = WORK / "small"
    _mount_tmpfs(folder, "size=2m")
    outcome = run(["detect", MODEL, FLAIR, "-o", folder / "out", *FAST])
    expect_error(outcome, "space", 10)
    assert not final_files(folder / "out") and not final_files(folder)


def case_existing_results_refused_up_front() -> None:
    outcome = run(["detect", MODEL, FLAIR, "-o", WORK / "done", *FAST])
    assert outcome.code == 0, outcome.err[-500:]
    before = {p.name: p.stat().st_mtime_ns for p in (WORK / "done").iterdir()}
    expect_error(run(["detect", MODEL, FLAIR, "-o", WORK / "done", *FAST]), "exist", 8)
    assert before == {p.name: p.stat().st_mtime_ns for p in (WORK / "done").iterdir()}, "results touched"


def case_demo_twice() -> None:
    outcome = run(["demo", "-o", WORK / "demo"])
    assert outcome.code == 0, outcome.err[-500:]
    expect_error(run(["demo", "-o", WORK / "demo"]), "exist", 8)


def _interrupt(name: str, stop: Callable[[subprocess.Popen, Path], None], after: str) -> None:
    """Start a detection, stop it when its progress log shows `after`, check the contract."""
    out, log, stop_file = WORK / f"stopped-{name}", WORK / f"{name}.jsonl", WORK / f"{name}.stop"
    env = dict(os.environ, SSAE_STOP_FILE=str(stop_file))
    args = ["detect", MODEL, FLAIR, "-o", out, "--progress-log", log, "--adapt", "--adapt-epochs", "2"]
    process = subprocess.Popen(SSAE + [str(a) for a in args], stderr=subprocess.PIPE, text=True, env=env, cwd=WORK)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if log.exists() and after in log.read_text(encoding="utf-8"):
            stop(process, stop_file)
            break
        time.sleep(0.05)
    err = process.communicate(timeout=120)[1]
    assert "Traceback" not in err, err[-500:]
    if process.returncode == 0:  # finished before the stop arrived: then the set is complete
        complete_set(out)
    else:
        assert process.returncode in (130, -signal.SIGKILL, 128 + signal.SIGTERM), f"exit {process.returncode}"
        assert not final_files(out), f"left {final_files(out)}"
    outcome = run(["detect", MODEL, FLAIR, "-o", out, *FAST, "--overwrite"])
    assert outcome.code == 0, f"rerun failed: {outcome.err[-300:]}"
    complete_set(out)


def case_sigint_while_adapting() -> None:
    _interrupt("sigint-adapt", lambda p, f: p.send_signal(signal.SIGINT), "adapting")


def case_sigterm_while_writing() -> None:
    _interrupt("sigterm-write", lambda p, f: p.send_signal(signal.SIGTERM), '"fraction": 1.0')


def case_stop_file_while_forward() -> None:
    _interrupt("stopfile", lambda p, f: f.touch(), "reconstructed")


def case_sigkill_while_writing() -> None:
    _interrupt("sigkill", lambda p, f: p.kill(), '"fraction": 1.0')


def case_concurrent_writers() -> None:
    out = WORK / "concurrent"
    args = SSAE + [str(a) for a in ["detect", MODEL, FLAIR, "-o", out, *FAST]]
    processes = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=WORK) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), f"exit codes {codes}"
    for code, err in results:
        assert "Traceback" not in err, err[-300:]
    complete_set(out)


def case_train_truncated_scan() -> None:
    folder = WORK / "train_truncated"
    shutil.copytree(TRAIN_FOLDER, folder)
    scan = folder / "patient07" / "flair.nii.gz"
    scan.write_bytes(scan.read_bytes()[: scan.stat().st_size // 2])
    expect_error(run(["train", folder, "-o", WORK / "m.safetensors", "--epochs", "1"]), "truncated", 30)
    assert not (WORK / "m.safetensors").exists()


def case_evaluate_without_lesions() -> None:
    folder = WORK / "nolesions" / "patient19"
    folder.mkdir(parents=True)
    shutil.copy(FLAIR, folder / "flair.nii.gz")
    image = sitk.ReadImage(str(SAMPLE / "consensus_gt.nii.gz"))
    write_like(image, np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8), folder / "consensus_gt.nii.gz")
    outcome = run(["evaluate", MODEL, WORK / "nolesions", "-o", WORK / "ev", "--no-adapt", "--no-scales"])
    assert outcome.code == 0, outcome.err[-500:]
    text = (WORK / "ev" / "metrics.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text, "non-JSON numbers"
    assert "warning" in outcome.err, "no warning for undefined metrics"


# -- round 2: the worker, cohorts, adapt, evaluate and odd geometry ------------------------------------


def _cohort(name: str, patients: tuple[str, ...] = ("patient07", "patient19")) -> Path:
    folder = WORK / name
    for patient in patients:
        shutil.copytree(TRAIN_FOLDER / patient, folder / patient)
    return folder


def case_manifest_escaping_output() -> None:
    manifest = WORK / "scans.csv"
    manifest.write_text(f"case,image\n../escaped,{FLAIR}\n", encoding="utf-8")
    outcome = run(["detect", MODEL, manifest, "-o", WORK / "out", *FAST])
    assert outcome.code == 0, outcome.err[-300:]
    assert not (WORK / "escaped").exists(), "a result was written outside -o"
    assert [p.name for p in (WORK / "out").iterdir() if p.is_dir()] == ["escaped"]


def case_manifest_encodings() -> None:
    for encoding in ("utf-8-sig", "cp1252", "utf-16"):
        manifest = WORK / f"{encoding}.csv"
        manifest.write_bytes(f"case,image\npatiënt,{FLAIR}\n".encode(encoding))
        outcome = run(["detect", MODEL, manifest, "-o", WORK / encoding, *FAST])
        assert outcome.code == 0 and "Traceback" not in outcome.err, f"{encoding}: {outcome.err[-300:]}"


def case_manifest_empty_cell() -> None:
    manifest = WORK / "scans.csv"
    manifest.write_text(f"case,image\na,{FLAIR}\nb,\n", encoding="utf-8")
    expect_error(run(["detect", MODEL, manifest, "-o", WORK / "out", *FAST]), "image cell is empty", 30)


def case_output_is_the_input_folder() -> None:
    scans = _cohort("scans")
    expect_error(run(["detect", MODEL, scans, "-o", scans, *FAST]), "holds the input", 30)
    expect_error(run(["preprocess", scans, "-o", scans]), "holds the input", 30)
    assert sorted(p.name for p in scans.iterdir()) == ["patient07", "patient19"]


def case_old_results_inside_the_scans_folder() -> None:
    scans = _cohort("scans", ("patient19",))
    first = run(["detect", MODEL, scans, "-o", scans / "results", *FAST])
    assert first.code == 0, first.err[-300:]
    again = run(["detect", MODEL, scans, "-o", WORK / "again", *FAST])
    assert again.code == 0, again.err[-300:]
    assert [p.name for p in (WORK / "again").iterdir() if p.is_dir()] == ["patient19"], "an old result folder was taken for a patient"


def case_sub1_and_sub10() -> None:
    flat = WORK / "flat"
    flat.mkdir()
    for name in ("sub1", "sub10"):
        shutil.copy(FLAIR, flat / f"{name}_flair.nii.gz")
        shutil.copy(SAMPLE / "consensus_gt.nii.gz", flat / f"{name}_seg.nii.gz")
    outcome = run(["evaluate", MODEL, flat, "-o", WORK / "ev", *FAST])
    assert outcome.code == 0, outcome.err[-300:]


def case_dicom_without_extension() -> None:
    image = sitk.Cast(sitk.RescaleIntensity(sitk.ReadImage(str(FLAIR)), 0, 1000), sitk.sitkInt16)
    series = WORK / "series"
    series.mkdir()
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        one = image[:, :, z]
        one.SetMetaData("0020|0013", str(z + 1))
        one.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z)))))
        one.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.7")
        writer.SetFileName(str(series / f"IM{z:04d}"))
        writer.Execute(one)
    detect = run(["detect", MODEL, series, "-o", WORK / "out", *FAST])
    assert detect.code == 0, detect.err[-300:]
    prep = run(["preprocess", series, "-o", WORK / "pre", "--no-bias-correction"])
    assert prep.code == 0, prep.err[-300:]


def case_piped_into_head() -> None:
    scans = _cohort("scans")
    command = " ".join(f"'{c}'" for c in [*SSAE, "detect", MODEL, scans, "-o", WORK / "out", *FAST])
    subprocess.run(command + " | head -n 1", shell=True, capture_output=True, text=True, timeout=600, cwd=WORK)
    assert (WORK / "out" / "cohort.csv").is_file(), "the cohort stopped when its reader went away"
    rows = (WORK / "out" / "cohort.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 3 and all(",ok," in row for row in rows[1:]), rows


def case_interrupted_cohort_resumes() -> None:
    scans = _cohort("scans")
    out = WORK / "out"
    assert run(["detect", MODEL, scans, "-o", out, *FAST]).code == 0
    (out / "cohort.csv").unlink()
    shutil.rmtree(out / "patient19")
    finished = (out / "patient07" / "flair_summary.json").stat().st_mtime_ns
    again = run(["detect", MODEL, scans, "-o", out, *FAST, "--resume"])
    assert again.code == 0, again.err[-300:]
    assert (out / "patient07" / "flair_summary.json").stat().st_mtime_ns == finished, "a finished scan was detected again"
    rows = (out / "cohort.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 3 and all(",ok," in row for row in rows[1:]), rows


def case_unwritable_cache() -> None:
    blocked = WORK / "cache"
    blocked.write_text("not a folder", encoding="utf-8")
    expect_error(run(["adapt", MODEL, TRAIN_FOLDER, "-o", WORK / "a.safetensors", "--cache-dir", blocked]), "is a file", 30)
    expect_error(
        run(["adapt", MODEL, TRAIN_FOLDER, "-o", WORK / "a.safetensors"], env={**os.environ, "SSAE_CACHE_DIR": str(blocked)}),
        "is a file",
        30,
    )


def case_label_on_wrong_grid_second_case() -> None:
    scans = _cohort("scans")
    label = scans / "patient19" / "consensus_gt.nii.gz"
    image = sitk.ReadImage(str(label))
    image.SetOrigin([v + 10 for v in image.GetOrigin()])
    sitk.WriteImage(image, str(label))
    expect_error(run(["evaluate", MODEL, scans, "-o", WORK / "ev", *FAST]), "geometry", 30)


def case_flair_as_label() -> None:
    scans = _cohort("scans", ("patient19",))
    shutil.copy(scans / "patient19" / "flair.nii.gz", scans / "patient19" / "consensus_gt.nii.gz")
    expect_error(run(["evaluate", MODEL, scans, "-o", WORK / "ev", *FAST]), "not a mask", 30)


def case_sheared_direction() -> None:
    image = sitk.ReadImage(str(FLAIR))
    image.SetDirection((1, 0.1, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(image, str(WORK / "sheared.nrrd"))
    expect_error(run(["detect", MODEL, WORK / "sheared.nrrd", "-o", WORK / "out", *FAST]), "not a rotation", 30)


def case_slab() -> None:
    image = sitk.ReadImage(str(FLAIR))
    sitk.WriteImage(image[:, :, 80:100], str(WORK / "slab.nii.gz"))
    outcome = run(["detect", MODEL, WORK / "slab.nii.gz", "-o", WORK / "out", *FAST])
    assert outcome.code == 0, outcome.err[-300:]
    assert "field of view" in outcome.err, "a 20 mm slab passed the registration check without a word"


def case_uncompressed_named_gz() -> None:
    plain = WORK / "plain.nii"
    sitk.WriteImage(sitk.ReadImage(str(FLAIR)), str(plain), False)
    plain.rename(WORK / "misnamed.nii.gz")
    outcome = run(["detect", MODEL, WORK / "misnamed.nii.gz", "-o", WORK / "out", *FAST])
    assert outcome.code == 0, outcome.err[-300:]


def case_progress_log_unusable() -> None:
    expect_error(run(["detect", MODEL, FLAIR, "-o", WORK / "o", "--progress-log", WORK / "missing" / "p.jsonl"]), "progress-log", 30)
    expect_error(run(["detect", MODEL, FLAIR, "-o", WORK / "o", "--progress-log", WORK]), "progress-log", 30)


def case_info_on_a_device() -> None:
    expect_error(run(["info", "/dev/zero"]), "not a regular file", 30)


def case_worker_without_stdin() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys; sys.stdin.close(); sys.stdin = None; from ssae.app.worker import serve; sys.exit(serve())"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=WORK,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-300:]


# -- compare (follow-up reading) -----------------------------------------------------------------

PRIOR = REPOSITORY / "Resources" / "SampleData" / "ClinicalRaw" / "patient01_study1_FLAIR.nii.gz"
FOLLOWUP = REPOSITORY / "Resources" / "SampleData" / "ClinicalRaw" / "patient01_study2_FLAIR.nii.gz"


def case_compare_bad_pairs() -> None:
    image, array = flair_array()
    flat = write_like(image, array[40], WORK / "slice.nii.gz")
    expect_error(run(["compare", MODEL, PRIOR, flat, "-o", WORK / "o"]), "3D", 10)
    expect_error(run(["compare", MODEL, PRIOR, PRIOR, "-o", WORK / "o"]), "same file", 10)
    expect_error(run(["compare", MODEL, PRIOR, WORK / "nope.nii.gz", "-o", WORK / "o"]), "not found", 10)
    expect_error(run(["compare", MODEL, PRIOR, FOLLOWUP, "--change-z", "nan"]), "--change-z", 10)
    assert not final_files(WORK / "o")


def case_compare_two_patients() -> None:
    out = WORK / "o"
    outcome = run(["compare", MODEL, FLAIR, FOLLOWUP, "-o", out, "--no-adapt"])
    assert outcome.code == 0, outcome.err[-500:]
    assert "one patient" in outcome.err and "ssae: warning:" in outcome.err, outcome.err[-500:]
    summary = json.loads(next(out.glob("*_change_summary.json")).read_text(encoding="utf-8"))
    assert summary["registration"]["passed"] is False
    complete_set_of(summary)


def case_compare_interrupted() -> None:
    out = WORK / "o"
    process = subprocess.Popen(SSAE + ["compare", str(MODEL), str(PRIOR), str(FOLLOWUP), "-o", str(out), "--no-adapt"], cwd=WORK)
    time.sleep(6)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    assert not final_files(out), final_files(out)
    outcome = run(["compare", MODEL, PRIOR, FOLLOWUP, "-o", out, "--no-adapt"])
    assert outcome.code == 0, outcome.err[-500:]
    complete_set_of(json.loads(next(out.glob("*_change_summary.json")).read_text(encoding="utf-8")))


# -- round 3: comparisons without change, pairs that resume, calibration, presets, the worker -----


def _no_new_lesion(baseline: sitk.Image, followup: sitk.Image) -> None:
    sitk.WriteImage(baseline, str(WORK / "baseline.nrrd"))
    sitk.WriteImage(followup, str(WORK / "followup.nrrd"))
    outcome = run(["compare", MODEL, WORK / "baseline.nrrd", WORK / "followup.nrrd", "-o", WORK / "o"])
    assert outcome.code == 0, outcome.err[-500:]
    summary = json.loads(next((WORK / "o").glob("*_change_summary.json")).read_text(encoding="utf-8"))
    assert summary["new"] + summary["enlarging"] <= 1, f"{summary['new']} new, {summary['enlarging']} enlarging on a no-change pair"


def case_compare_half_voxel_off() -> None:
    from ssae.preprocessing.pair_registration import on_isotropic_grid

    scan = sitk.Cast(sitk.ReadImage(str(FLAIR)), sitk.sitkFloat32)
    _no_new_lesion(on_isotropic_grid(scan, 2.5, 1.25), on_isotropic_grid(scan, 2.5))


def case_compare_z_scored_copy() -> None:
    from ssae.preprocessing.pair_registration import on_isotropic_grid

    scan = sitk.Cast(sitk.ReadImage(str(FLAIR)), sitk.sitkFloat32)
    values = sitk.GetArrayFromImage(scan)
    scored = sitk.GetImageFromArray((values - values.mean()) / values.std())
    scored.CopyInformation(scan)
    _no_new_lesion(on_isotropic_grid(scored, 2.5), on_isotropic_grid(scored, 2.5))


def _pairs_folder() -> Path:
    pairs = WORK / "pairs"
    for name in ("p1", "p2"):
        (pairs / name).mkdir(parents=True)
        shutil.copy(PRIOR, pairs / name / "study1.nii.gz")
        shutil.copy(FOLLOWUP, pairs / name / "study2.nii.gz")
    return pairs


def case_compare_pairs_rerun_and_resume() -> None:
    pairs = _pairs_folder()
    later = WORK / "p2"
    shutil.move(pairs / "p2", later)
    first = run(["compare", MODEL, pairs, "-o", pairs / "changes", "--no-adapt"], timeout=600)
    assert first.code == 0, first.err[-500:]
    shutil.move(later, pairs / "p2")
    kept = {p.name: p.stat().st_mtime_ns for p in (pairs / "changes" / "p1").iterdir()}
    again = run(["compare", MODEL, pairs, "-o", pairs / "changes", "--no-adapt", "--resume"], timeout=600)
    assert again.code == 0, again.err[-500:]
    assert {p.name: p.stat().st_mtime_ns for p in (pairs / "changes" / "p1").iterdir()} == kept, "a finished pair was redone"
    rows = (pairs / "changes" / "comparisons.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 3 and all(",ok," in row for row in rows[1:]), rows


def case_compare_hard_link() -> None:
    copy = WORK / "prior.nii.gz"
    shutil.copy(PRIOR, copy)
    os.link(copy, WORK / "linked.nii.gz")
    expect_error(run(["compare", MODEL, copy, WORK / "linked.nii.gz", "-o", WORK / "o"]), "same file", 10)


def case_calibrate_refusals() -> None:
    expect_error(run(["calibrate", WORK / "gone.safetensors", TRAIN_FOLDER, "-o", WORK / "c.safetensors"]), "not found", 10)
    expect_error(run(["calibrate", MODEL, TRAIN_FOLDER, "-o", WORK / "c.safetensors", "--subjects", ","]), "--subjects", 10)
    (WORK / "models").mkdir()
    expect_error(run(["calibrate", MODEL, TRAIN_FOLDER, "-o", WORK / "models", "--overwrite"]), "is a folder", 10)


def case_calibrate_truncated_scan() -> None:
    scans = _cohort("scans")
    scan = scans / "patient19" / "flair.nii.gz"
    raw = gzip.decompress(scan.read_bytes())
    scan.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    out = WORK / "c.safetensors"
    expect_error(run(["calibrate", MODEL, scans, "-o", out, "--subjects", "patient07,patient19", "--cache-dir", WORK / "cache"]), "truncated", 20)


def case_preset_and_threshold() -> None:
    outcome = run(["detect", MODEL, FLAIR, "-o", WORK / "o", "--operating-point", "specific", "--threshold", "0.5"])
    assert outcome.code == 2 and "not allowed with" in outcome.err and "Traceback" not in outcome.err, outcome.err[-300:]


def case_card_relabelled_format_1() -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(MODEL), framework="numpy") as handle:
        metadata = handle.metadata()
        state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    card = json.loads(metadata["ssae_model_card"])
    card["format_version"], card["threshold"] = 1, {"value": 0.5, "method": "edited"}
    metadata["ssae_model_card"] = json.dumps(card)
    save_file(state, str(WORK / "kept.safetensors"), metadata=metadata)
    expect_error(run(["info", WORK / "kept.safetensors"]), "checksum", 10)
    del metadata["ssae_card_sha256"]
    save_file(state, str(WORK / "removed.safetensors"), metadata=metadata)
    expect_error(run(["info", WORK / "removed.safetensors"]), "later format", 10)


def case_worker_submitted_twice_at_once() -> None:
    program = (
        "import sys, threading\n"
        "from ssae.app.worker_client import DetectionWorker\n"
        "from ssae.app.processes import wait_for\n"
        "from ssae.io.errors import SSAEError\n"
        "worker, barrier, jobs, refusals = DetectionWorker(), threading.Barrier(2), [], []\n"
        "def submit(name):\n"
        "    barrier.wait()\n"
        "    try:\n"
        f"        jobs.append(worker.submit(['detect', {str(MODEL)!r}, {str(FLAIR)!r}, '-o', name, '--no-adapt', '--no-scales']))\n"
        "    except SSAEError as error:\n"
        "        refusals.append(error)\n"
        "threads = [threading.Thread(target=submit, args=(n,)) for n in ('a', 'b')]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "assert len(jobs) == 1 and len(refusals) == 1 and worker.starts == 1, (len(jobs), len(refusals), worker.starts)\n"
        "assert wait_for(jobs[0], timeout_s=300) == 0\n"
        "worker.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=400, cwd=WORK)
    assert done.returncode == 0, done.stderr[-500:]


def case_negative_label_values() -> None:
    scans = _cohort("scans", ("patient19",))
    label = scans / "patient19" / "consensus_gt.nii.gz"
    sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(label)), sitk.sitkInt16) - 1, str(label))
    expect_error(run(["evaluate", MODEL, scans, "-o", WORK / "ev", *FAST]), "negative values", 30)


def case_far_origin_as_nifti() -> None:
    image = sitk.ReadImage(str(FLAIR))
    image.SetOrigin((1e5 + 0.1234, -1e5 + 0.4321, 0.0))
    sitk.WriteImage(image, str(WORK / "far.nrrd"))
    expect_error(run(["detect", MODEL, WORK / "far.nrrd", "-o", WORK / "o", *FAST]), "--format nrrd", 30)


def complete_set_of(summary: dict) -> None:
    for name, path in summary["files"].items():
        assert Path(path).is_file(), f"{name} missing"
        if path.endswith((".nii.gz", ".nrrd")):
            sitk.ReadImage(path)



def case_cluster_bad_engine_flags() -> None:
    scans = _cohort("scans")
    for flags, message in (
        (["--scheduler", "local:0"], "at least one worker"),
        (["--scheduler", "not a scheduler"], "give local:N"),
        (["--scheduler", WORK / "missing.json"], "no such scheduler file"),
        (["--threads-per-scan", "0"], "at least 1"),
    ):
        expect_error(run(["detect", MODEL, scans, "-o", WORK / "o", *flags]), message, 15)
    expect_error(run(["detect", MODEL, FLAIR, "-o", WORK / "o", "--scheduler", "local:1"]), "folder or CSV of scans", 15)
    assert not (WORK / "o").exists(), "a refused run left its output folder"


def case_cluster_unreachable_scheduler() -> None:
    expect_error(run(["detect", MODEL, _cohort("scans"), "-o", WORK / "o", "--scheduler", "tcp://127.0.0.1:9"]), "cannot reach", 90)


def case_cluster_worker_killed_mid_scan() -> None:
    scans, out, log = _cohort("scans"), WORK / "out", WORK / "progress.jsonl"
    command = [*SSAE, "detect", str(MODEL), str(scans), "-o", str(out), *FAST, "--scheduler", "local:2", "--progress-log", str(log)]
    process = subprocess.Popen(command, cwd=WORK, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        victim = None
        while victim is None and time.monotonic() < deadline and process.poll() is None:
            events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []
            victim = next((e for e in events if e["event"] == "started"), None)
            time.sleep(0.1)
        assert victim is not None, "no scan started"
        time.sleep(1.0)
        os.kill(victim["pid"], signal.SIGKILL)
        _, err = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == 0, err[-400:]
    for case in ("patient07", "patient19"):
        complete_set(out / case)
    assert not [p for p in out.rglob("*") if "partial" in p.name], "a dead attempt left files behind"
    rows = (out / "cohort.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 3 and all(",ok," in row for row in rows[1:]), rows


CASES: dict[str, Callable[[], None]] = {
    "missing image": case_missing_image,
    "missing model": case_missing_model,
    "folder given as the model": case_folder_as_model,
    "foreign file as the model": case_foreign_model,
    "pickle as the model (never unpickled)": case_pickle_as_model,
    "truncated model file": case_truncated_model,
    "model card edited (detect)": case_edited_card_detect,
    "model card edited (info)": case_edited_card_info,
    "weights tampered": case_tampered_weights,
    "malformed small-lesion rule in a resealed card (info, detect)": case_malformed_small_lesion_rule,
    "malformed healthy candidates in a resealed card": case_malformed_healthy_candidates,
    "truncated .nii.gz": case_truncated_gzip,
    "truncated .nii": case_truncated_nii,
    "not an image": case_not_an_image,
    "NaN voxels": case_nan_voxels,
    "Inf voxels": case_inf_voxels,
    "all-NaN volume": case_all_nan,
    "constant volume": case_constant_image,
    "NaN voxels (preprocess)": case_nan_in_preprocess,
    "2D image": case_two_dimensional,
    "4D image": case_four_dimensional,
    "3x3x3 volume (detect, preprocess)": case_tiny_volume,
    "brain mask on another grid": case_mask_wrong_grid,
    "empty brain mask (detect, preprocess)": case_empty_brain_mask,
    "--batch-size -1": _flag("--batch-size", "-1"),
    "--batch-size 0": _flag("--batch-size", "0"),
    "--threshold nan": _flag("--threshold", "nan"),
    "--threshold -1": _flag("--threshold", "-1"),
    "--threshold inf": _flag("--threshold", "inf"),
    "--min-lesion-mm3 -1": _flag("--min-lesion-mm3", "-1"),
    "--min-lesion-mm3 nan": _flag("--min-lesion-mm3", "nan"),
    "--adapt-epochs 0": _flag("--adapt", "--adapt-epochs", "0"),
    "--adapt-lr nan": _flag("--adapt", "--adapt-lr", "nan"),
    "--adapt-exclude-percentile 150": _flag("--adapt", "--adapt-exclude-percentile", "150"),
    "--device cuda:7 without that GPU": _flag("--device", "cuda:7"),
    "--format bogus": _flag("--format", "bogus"),
    "train --lr nan": _flag("--lr", "nan", command="train"),
    "train --lr -1": _flag("--lr", "-1", command="train"),
    "train --epochs 0": _flag("--epochs", "0", command="train"),
    "train --val-fraction 1.5": _flag("--val-fraction", "1.5", command="train"),
    "output folder is a file": case_output_is_a_file,
    "output folder under /proc": case_output_under_proc,
    "read-only output folder": case_read_only_output,
    "disk full (2 MB tmpfs)": case_disk_full,
    "existing results refused before the work": case_existing_results_refused_up_front,
    "demo run twice": case_demo_twice,
    "intensities x 1e30": case_scaled_1e30,
    "non-ASCII paths": case_non_ascii_path,
    "SIGINT while adapting": case_sigint_while_adapting,
    "SIGTERM while writing": case_sigterm_while_writing,
    "stop file (GUI cancel) during the forward pass": case_stop_file_while_forward,
    "SIGKILL while writing": case_sigkill_while_writing,
    "two detections into one folder at once": case_concurrent_writers,
    "train: one truncated scan among good ones": case_train_truncated_scan,
    "evaluate: labels without lesions": case_evaluate_without_lesions,
    "manifest case '../escaped' stays inside -o": case_manifest_escaping_output,
    "manifest in UTF-8 with BOM, Windows-1252, UTF-16": case_manifest_encodings,
    "manifest row with an empty image cell": case_manifest_empty_cell,
    "-o is the scans folder (detect, preprocess)": case_output_is_the_input_folder,
    "old results inside the scans folder": case_old_results_inside_the_scans_folder,
    "sub1 and sub10 in one flat folder": case_sub1_and_sub10,
    "DICOM series without .dcm (detect, preprocess)": case_dicom_without_extension,
    "cohort piped into head": case_piped_into_head,
    "interrupted cohort resumes": case_interrupted_cohort_resumes,
    "unwritable cache folder (flag, SSAE_CACHE_DIR)": case_unwritable_cache,
    "evaluate: label on a wrong grid in the second case": case_label_on_wrong_grid_second_case,
    "evaluate: the FLAIR given as the label": case_flair_as_label,
    "sheared direction matrix": case_sheared_direction,
    "20 mm slab": case_slab,
    "uncompressed NIfTI named .nii.gz": case_uncompressed_named_gz,
    "--progress-log in a missing folder / a folder": case_progress_log_unusable,
    "info on /dev/zero": case_info_on_a_device,
    "worker with stdin closed": case_worker_without_stdin,
    "compare: a 2D follow-up, the same file twice, a missing file, --change-z nan": case_compare_bad_pairs,
    "compare: two different patients": case_compare_two_patients,
    "compare: Ctrl-C, then the next run": case_compare_interrupted,
    "compare: a scan with itself half a voxel off on a 2.5 mm grid": case_compare_half_voxel_off,
    "compare: a z-scored scan with its copy on a 2.5 mm grid": case_compare_z_scored_copy,
    "compare: pairs rerun into PAIRS/changes with --resume": case_compare_pairs_rerun_and_resume,
    "compare: the same file through a hard link": case_compare_hard_link,
    "calibrate: missing model, --subjects ',', a folder as -o": case_calibrate_refusals,
    "calibrate: one truncated scan among good ones": case_calibrate_truncated_scan,
    "detect: --operating-point with --threshold": case_preset_and_threshold,
    "info: a card relabelled as format 1": case_card_relabelled_format_1,
    "worker: two threads submit at once": case_worker_submitted_twice_at_once,
    "evaluate: a label with -1": case_negative_label_values,
    "detect: an origin at 1e5 mm written as NIfTI": case_far_origin_as_nifti,
    "cluster: bad --scheduler / --threads-per-scan, a scheduler for one scan": case_cluster_bad_engine_flags,
    "cluster: a scheduler that does not answer": case_cluster_unreachable_scheduler,
    "cluster: a worker killed mid-scan": case_cluster_worker_killed_mid_scan,
}

WORK = Path()
FLAIR = SAMPLE / "flair.nii.gz"
TRAIN_FOLDER = REPOSITORY / "Resources" / "SampleData" / "MSLUB"
MOUNTS: list[Path] = []


def main() -> int:
    global WORK
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ssae-fuzz-"))
    handled, failed, skipped = 0, [], []
    cases = {name: case for name, case in CASES.items() if args.only.lower() in name.lower()}
    try:
        for index, (name, case) in enumerate(cases.items()):
            WORK = scratch / f"case{index:02d}"
            WORK.mkdir()
            start = time.monotonic()
            try:
                case()
            except Skip as reason:
                skipped.append(name)
                print(f"SKIP  {name}: {reason}", flush=True)
                continue
            except (AssertionError, subprocess.TimeoutExpired, OSError, KeyError, ValueError) as problem:
                failed.append(name)
                print(f"FAIL  {name}: {type(problem).__name__}: {problem}", flush=True)
                continue
            handled += 1
            print(f"ok    {name} ({time.monotonic() - start:.1f} s)", flush=True)
    finally:
        for folder in MOUNTS:
            subprocess.run(["umount", str(folder)], check=False)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    tried = len(cases) - len(skipped)
    print(f"\n{handled}/{tried} cases handled" + (f", {len(skipped)} skipped" if skipped else ""))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
