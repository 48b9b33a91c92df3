"""Where the time of one detection goes, what a Slicer user waits, and whether speed cost accuracy.

1. In process, step by step (fastest of ``--repeats`` runs): model load, read, N4, atlas
   registration, slicing and normalisation, adaptation, forward passes, post-processing on the
   slice grid, resampling to the input grid, mask, write. For
   * the shipped model (atlas grid 128 px, 3 levels; N4 + registration) on MSLUB patient 19 as
     shipped (its own 1 mm grid), without and with its default scanner adaptation;
   * a paper-size dense SSAE (256 px, 4 levels, 2.58 M parameters, random weights: the work
     does not depend on them) on the same scan resampled to 256x256x150, no atlas;
   each with every map (per level too, the default) and without per-level maps.
2. End to end as users run it: the interpreter's start-up and imports alone; ``ssae detect`` as a
   separate process (with its peak memory); and SSAEAnomaly's logic on a slicer-core scene,
   whose detection worker pays the start-up on the first detection only (volume written for the
   worker, detection, results loaded into the scene).
3. With ``--accuracy`` (needs ``../shared/data``): the earlier, slower registration settings,
   the current ones and a coarser N4 (measured, not used), side by side on the development sets:
   seconds, Dice of the registration's brain mask against the provided one (BraTS, NiChart), and
   pooled AUPRC of the model card's map without adaptation, on the provided brain mask plus
   lesion voxels (MSLUB: the registration's mask; BraTS; the model's NiChart validation subjects
   with their WMH masks). A second sampling seed of each setting shows how far the AUPRC moves
   for a registration that is merely different, not worse.

4. With ``--compare-with REV`` (a git revision of this repository): the default click, ``ssae
   detect`` with the shipped model and its default adaptation on MSLUB patient 19, by this
   checkout and by REV (a temporary ``git worktree``, with the model it shipped), taking turns,
   ``--repeats`` times each: wall seconds of the command and its own timings.

    python bench/detect.py [--device cpu] [--batch-size N] [--repeats 2] [--accuracy] [--data ../shared/data] [--compare-with REV]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "SSAEAnomaly"))
sys.path.insert(0, str(REPO / "Testing"))

from ssae.detection.detector import Detector
from ssae.detection.result_files import detection_summary, write_detection
from ssae.io.resources import default_model_path, sample_case_dir
from ssae.io.volumes import read_volume
from ssae.models.card import Calibration, ModelCard
from ssae.models.checkpoint import save_model
from ssae.models.devices import describe_device, resolve_device
from ssae.models.networks import build_model, count_parameters
from ssae.models.settings import Architecture
from ssae.preprocessing.slices import PreprocessingSettings
from ssae.scoring.score_maps import PostprocessingSettings

SAMPLE = sample_case_dir() / "flair.nii.gz"
PAPER = Architecture("dense", size=256, levels=4, base_filters=16, max_filters=96)
STEPS = ["load", "read", "n4", "registration", "slicing", "adapt", "forward", "post", "resample", "mask", "write"]
# ``ssae`` in a child that reports its own peak resident memory (Linux: VmHWM, which, unlike
# ru_maxrss, is not inherited from the forking parent).
MEASURE_MEMORY = (
    "import sys; from ssae.app.cli import main; code = main(sys.argv[1:]); "
    "lines = open('/proc/self/status').read().splitlines() if sys.platform.startswith('linux') else []; "
    "print('@peak-rss-kb', *[line.split()[1] for line in lines if line.startswith('VmHWM')], file=sys.stderr); sys.exit(code)"
)


def peak_memory_kb(pid: int) -> int | None:
    """Peak resident memory of a running process (Linux), else None."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return None
    return int(next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM")))


def resampled_input(folder: Path) -> Path:
    """The sample on a 256x256x150 grid covering the same field of view."""
    source = sitk.ReadImage(str(SAMPLE))
    size = (256, 256, 150)
    spacing = [s * n / m for s, n, m in zip(source.GetSpacing(), source.GetSize(), size)]
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing(spacing)
    reference.SetOrigin(source.GetOrigin())
    reference.SetDirection(source.GetDirection())
    path = folder / "input_256x256x150.nii.gz"
    sitk.WriteImage(sitk.Resample(source, reference, sitk.Transform(), sitk.sitkLinear, 0.0), str(path))
    return path


def paper_size_model(folder: Path) -> Path:
    names = ["aggregated", "prior", "fused", "flair"] + [f"level{k}" for k in range(PAPER.levels)]
    card = ModelCard(
        PAPER,
        PreprocessingSettings(size=256, clip_max=None),
        PostprocessingSettings(),
        [0, 1, 2],
        dict.fromkeys(names, 0.5),
        Calibration("benchmark placeholder"),
        "prior",
    )
    torch.manual_seed(0)
    return save_model(build_model(PAPER), card, folder / "bench_ssae256.safetensors")


def run_once(model: Path, image_path: Path, out: Path, device: str, batch_size: int | None, scales: bool, adapt: bool) -> dict[str, float]:
    t0 = time.perf_counter()
    detector = Detector.from_file(model, device, batch_size)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    image = read_volume(image_path)
    read = time.perf_counter() - t0
    result = detector.detect(image, scales=scales, adaptation=detector.default_adaptation() if adapt else None)
    t0 = time.perf_counter()
    summary = detection_summary(result, str(image_path), detector.card.architecture.name, "benchmark")
    write_detection(result, out, "bench", "nii.gz", summary, overwrite=True)
    write = time.perf_counter() - t0
    t = result.timings
    return {
        "load": load,
        "read": read,
        "n4": t["n4_s"],
        "registration": t["registration_s"],
        "slicing": t["slicing_s"],
        "adapt": t.get("adapt_s", 0.0),
        "forward": t["forward_s"],
        "post": t["postprocess_s"],
        "resample": t["resample_s"],
        "mask": t["mask_s"],
        "write": write,
        "slices": float(result.prepared.slices.shape[0]),
    }


def in_process_table(args: argparse.Namespace, folder: Path, shipped: Path, paper: Path, paper_input: Path) -> None:
    print("\n1. One detection in process, step by step (seconds; fastest of", args.repeats, "runs)")
    rows = [
        ("shipped 128 px x3, atlas", shipped, SAMPLE, False),
        ("shipped, adapted (default)", shipped, SAMPLE, True),
        (f"256 px x4 ({count_parameters(PAPER) / 1e6:.2f} M), no atlas", paper, paper_input, False),
    ]
    run_once(shipped, SAMPLE, folder / "warmup", args.device, args.batch_size, True, False)
    print(f"{'model':>34s} {'maps':>9s} {'slices':>6s} " + " ".join(f"{s[:8]:>8s}" for s in STEPS) + f" {'total':>7s}")
    for label, model, image, adapt in rows:
        for scales in (True, False):
            runs = [run_once(model, image, folder / "out", args.device, args.batch_size, scales, adapt) for _ in range(args.repeats)]
            best = min(runs, key=lambda t: sum(t[s] for s in STEPS))
            print(
                f"{label:>34s} {'all' if scales else 'no levels':>9s} {int(best['slices']):>6d} "
                + " ".join(f"{best[s]:8.2f}" for s in STEPS)
                + f" {sum(best[s] for s in STEPS):6.2f}s"
            )


def child_seconds(command: list[str]) -> tuple[float, int | None]:
    """Wall time of a child process and its peak resident memory (kB) when it reports it."""
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    rss = [line.split()[1:] for line in done.stderr.splitlines() if line.startswith("@peak-rss-kb")]
    return seconds, (int(rss[0][0]) if rss and rss[0] else None)


def slicer_worker_rows(device: str, repeats: int) -> None:
    """SSAEAnomaly's own logic on a slicer-core scene: what a user waits per click."""
    try:
        from headless_slicer import headless_scene
        from SSAEAnomalyLib import AnomalyLogic, update_volume_node_from_image
    except ImportError as exc:
        print(f"{'SSAEAnomaly (slicer-core)':>60s}: skipped ({exc}); pip install -e .[test]")
        return
    from ssae.app.processes import wait_for

    scene, _ = headless_scene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "FLAIR")
    update_volume_node_from_image(volume, read_volume(SAMPLE))
    logic = AnomalyLogic(scene)
    params = logic.parameters
    params.input_volume, params.model_path, params.device, params.adapt = volume, str(default_model_path()), device, "off"
    try:
        seconds = []
        for index in range(1 + repeats):
            t0 = time.perf_counter()
            job = logic.start_detection()
            if wait_for(job.command, timeout_s=600, poll_s=0.01) != 0:
                raise SystemExit("\n".join(job.command.new_lines()))
            logic.load_detection(job, replace_previous=index > 0)
            seconds.append(time.perf_counter() - t0)
        print(f"{'SSAEAnomaly, shipped, first detection (starts the worker)':>60s}: {seconds[0]:5.2f} s, click to results in the scene")
        print(f"{'SSAEAnomaly, shipped, next detection (worker running)':>60s}: {min(seconds[1:]):5.2f} s, click to results in the scene")
        peak = peak_memory_kb(logic.worker.process.pid)
        if peak:
            print(
                f"{'worker peak memory':>60s}: {peak / 1024:5.0f} MB after {1 + repeats} detections (one process: {logic.worker.starts == 1})"
            )
    finally:
        logic.close_worker(kill=True)


def worker_rows(args: argparse.Namespace, folder: Path, paper: Path, paper_input: Path) -> None:
    """The paper-size model through the detection worker, as a batch run or a script uses it."""
    from ssae.app.processes import wait_for
    from ssae.app.worker_client import DetectionWorker

    worker = DetectionWorker()
    jobs = 0

    def seconds(extra: list[str]) -> float:
        nonlocal jobs
        jobs += 1
        t0 = time.perf_counter()
        command = ["detect", str(paper), str(paper_input), "-o", str(folder / f"worker{jobs}"), "--device", args.device, "--no-adapt"]
        job = worker.submit(command + extra)
        if wait_for(job, timeout_s=600, poll_s=0.01) != 0:
            raise SystemExit("\n".join(job.new_lines()))
        return time.perf_counter() - t0

    try:
        print(f"{'worker, 256 px x4, no per-level maps, first job (starts it)':>60s}: {seconds(['--no-scales']):5.2f} s")
        best = min(seconds(["--no-scales"]) for _ in range(args.repeats))
        print(f"{'worker, 256 px x4, no per-level maps, next job':>60s}: {best:5.2f} s")
        best = min(seconds([]) for _ in range(args.repeats))
        print(f"{'worker, 256 px x4, every map, next job':>60s}: {best:5.2f} s")
        peak = peak_memory_kb(worker.process.pid)
        if peak:
            print(f"{'worker peak memory':>60s}: {peak / 1024:5.0f} MB after {jobs} jobs (one process: {worker.starts == 1})")
    finally:
        worker.kill()


def end_to_end_table(args: argparse.Namespace, folder: Path, shipped: Path, paper: Path, paper_input: Path) -> None:
    print("\n2. End to end, as users run it (wall seconds; fastest of", args.repeats, "runs)")
    python = sys.executable
    startup = min(child_seconds([python, "-c", "import ssae.detection.detector, ssae.preprocessing.registration"])[0] for _ in range(args.repeats))
    print(f"{'interpreter start-up + imports alone':>60s}: {startup:5.2f} s")
    for label, model, image, extra in (
        ("ssae detect, shipped, every map", shipped, SAMPLE, []),
        ("ssae detect, 256 px x4, no per-level maps", paper, paper_input, ["--no-scales"]),
        ("ssae detect, 256 px x4, every map", paper, paper_input, []),
    ):
        command = [python, "-c", MEASURE_MEMORY, "detect", str(model), str(image), "-o", str(folder / "process"), "--overwrite"]
        command += ["--device", args.device, "--no-adapt", *extra]
        seconds, rss = min(child_seconds(command) for _ in range(args.repeats))
        memory = f", peak memory {rss / 1024:.0f} MB" if rss else ""
        print(f"{label:>60s}: {seconds:5.2f} s as a separate process (no adaptation){memory}")
    slicer_worker_rows(args.device, args.repeats)
    worker_rows(args, folder, paper, paper_input)


def accuracy_table(data: Path, device: str) -> None:
    """Earlier, current and rejected N4 and registration settings on the development sets."""
    from dataclasses import replace

    from ssae.io.cases import find_cases, read_case_volumes
    from ssae.preprocessing.registration import COARSE_N4, THOROUGH_REGISTRATION, RegistrationSettings
    from ssae.scoring.metrics import average_precision

    detector = Detector.from_file(default_model_path(), device)
    card = detector.card
    val_subjects = set(card.training.get("data", {}).get("val_subjects", []))
    sets = {
        "MSLUB": find_cases(data / "mslub"),
        "BraTS": find_cases(data / "brats2015"),
        "NiChart WMH": [c for c in find_cases(data / "nichart") if c.name in val_subjects],
    }
    print(f"\n3. Accuracy of the faster preprocessing ({data}; shipped model, {card.score_map} map, no adaptation)")
    print(f"{'settings':>22s} {'set':>12s} {'cases':>5s} {'N4 s':>6s} {'reg s':>6s} {'mask Dice':>9s} {'AUPRC':>7s}")
    variants = {
        "earlier": THOROUGH_REGISTRATION,
        "earlier, seed 2": replace(THOROUGH_REGISTRATION, seed=2),
        "current": RegistrationSettings(),
        "current, seed 2": replace(RegistrationSettings(), seed=2),
        "coarser N4 (not used)": COARSE_N4,
    }
    for name, settings in variants.items():
        for dataset, cases in sets.items():
            n4_s, reg_s, dice, scores, labels = [], [], [], [], []
            for case in cases:
                image, brain, label = read_case_volumes(case, need_label=True)
                result = detector.detect(image, scales=False, registration=settings)  # as ssae detect: no brain mask given
                n4_s.append(result.timings["n4_s"])
                reg_s.append(result.timings["registration_s"])
                truth = sitk.GetArrayFromImage(label).astype(bool)
                found = sitk.GetArrayFromImage(result.prepared.brain_mask).astype(bool)
                provided = sitk.GetArrayFromImage(brain).astype(bool) if brain is not None else None
                if provided is not None:
                    dice.append(2 * (found & provided).sum() / (found.sum() + provided.sum()))
                counted = (provided if provided is not None else found) | truth
                scores.append(sitk.GetArrayFromImage(result.score)[counted])
                labels.append(truth[counted])
            auprc = average_precision(np.concatenate(scores), np.concatenate(labels))
            dice_text = f"{np.mean(dice):9.3f}" if dice else f"{'-':>9s}"
            print(
                f"{name:>10s} {dataset:>12s} {len(cases):5d} {np.mean(n4_s):6.2f} {np.mean(reg_s):6.2f} {dice_text} {auprc:7.4f}",
                flush=True,
            )


def compare_with(revision: str, repeats: int, device: str) -> None:
    """The default click by this checkout and by ``revision``, taking turns (see the module doc)."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        worktree = Path(tmp) / "revision"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), revision], check=True, capture_output=True)
        try:
            checkouts = {"this checkout": REPO, revision: worktree}
            rows: dict[str, list[tuple[float, dict]]] = {name: [] for name in checkouts}
            for repeat in range(repeats):
                for name, root in checkouts.items():
                    out = Path(tmp) / f"out-{repeat}-{len(rows[name])}-{name.replace(' ', '_')}"
                    model = root / "Resources" / "Models" / "ssae-dense-nichart.safetensors"
                    sample = root / "Resources" / "SampleData" / "MSLUB" / "patient19" / "flair.nii.gz"
                    env = {**os.environ, "PYTHONPATH": str(root)}
                    started = time.perf_counter()
                    subprocess.run(
                        [sys.executable, "-m", "ssae.app.cli", "detect", str(model), str(sample), "-o", str(out), "--device", device],
                        check=True, capture_output=True, env=env, cwd=str(root),
                    )
                    summary = json.loads((out / "flair_summary.json").read_text(encoding="utf-8"))
                    rows[name].append((time.perf_counter() - started, summary["timings_s"]))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], capture_output=True)
    print(f"\nDefault click (ssae detect, shipped model, default adaptation, MSLUB patient 19), {repeats} runs each, taking turns:")
    print(f"{'checkout':>16s}{'wall s (min / mean)':>22s}{'in command s':>14s}{'resample s':>12s}{'mask s':>9s}")
    for name, runs in rows.items():
        walls = [w for w, _ in runs]
        inside = [sum(t.values()) - t.get("n4_s", 0) - t.get("registration_s", 0) - t.get("slicing_s", 0) for _, t in runs]
        best = min(range(len(runs)), key=lambda i: walls[i])
        timings = runs[best][1]
        print(
            f"{name:>16s}{min(walls):>11.1f} / {np.mean(walls):<8.1f}{min(inside):>14.1f}"
            f"{timings.get('resample_s', 0):>12.2f}{timings.get('mask_s', 0):>9.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default: the device's)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per row; the fastest is reported")
    parser.add_argument("--accuracy", action="store_true", help="also compare the earlier and current N4/registration settings")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--compare-with", metavar="REV", help="also time the default click of this git revision, taking turns")
    args = parser.parse_args()
    if args.compare_with:
        compare_with(args.compare_with, max(args.repeats, 1), args.device)
        return
    device = resolve_device(args.device)
    print(f"{platform.machine()}, {os.cpu_count()} CPU cores, {describe_device(device)}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shipped, paper, paper_input = default_model_path(), paper_size_model(folder), resampled_input(folder)
        in_process_table(args, folder, shipped, paper, paper_input)
        end_to_end_table(args, folder, shipped, paper, paper_input)
    if args.accuracy:
        accuracy_table(args.data, args.device)


if __name__ == "__main__":
    main()
