"""Where the time of one detection goes, for the shipped model and a paper-size model.

Two models, each with every map (per level too, the CLI default) and without per-level maps
(``--no-scales``):

* the shipped model (atlas grid 128 px, 3 levels; N4 and registration in preprocessing) on
  MSLUB patient 19 as shipped (its own 1 mm grid), without and with scanner adaptation;
* a paper-size dense SSAE (256 px, 4 levels, 2.58 M parameters, random weights: the amount of
  work does not depend on them) on the same scan resampled to 256x256x150, no atlas.

In-process steps: model load, read, preprocess (N4 + registration + slicing; registration
alone in brackets), adaptation, forward passes, post-processing on the slice grid, resampling
to the input grid, mask, write. Then ``ssae detect`` as a separate process on the shipped
model, end to end (process start, imports, everything above), as Slicer's module runs it.

    python bench/detect.py [--device cpu] [--batch-size 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ssae.checkpoint import Calibration, ModelCard, save_model
from ssae.defaults import DEFAULT_ADAPTATION
from ssae.detection import Detector
from ssae.detection_files import detection_summary, write_detection
from ssae.devices import describe_device, resolve_device
from ssae.models import Architecture, build_model, count_parameters
from ssae.postprocessing import PostprocessingSettings
from ssae.preprocessing import PreprocessingSettings
from ssae.resources import default_model_path, sample_case_dir
from ssae.volume_io import read_volume

SAMPLE = sample_case_dir() / "flair.nii.gz"
STEPS = ["load", "read", "preprocess", "adapt", "forward", "post", "resample", "mask", "write"]


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
    arch = Architecture("dense", size=256, levels=4, base_filters=16, max_filters=96)
    names = ["aggregated", "prior", "fused", "flair"] + [f"level{k}" for k in range(4)]
    card = ModelCard(
        arch,
        PreprocessingSettings(size=256, clip_max=None),
        PostprocessingSettings(),
        [0, 1, 2],
        dict.fromkeys(names, 0.5),
        Calibration("benchmark placeholder"),
        "prior",
    )
    torch.manual_seed(0)
    return save_model(build_model(arch), card, folder / "bench_ssae256.safetensors")


def run_once(model: Path, image_path: Path, out: Path, device: str, batch_size: int, scales: bool, adapt: bool) -> dict[str, float]:
    t0 = time.perf_counter()
    detector = Detector.from_file(model, device, batch_size)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    image = read_volume(image_path)
    read = time.perf_counter() - t0
    adaptation = (detector.card.adaptation.settings if detector.card.adaptation else DEFAULT_ADAPTATION) if adapt else None
    result = detector.detect(image, scales=scales, adaptation=adaptation)
    t0 = time.perf_counter()
    summary = detection_summary(result, str(image_path), detector.card.architecture.name, "benchmark")
    write_detection(result, out, "bench", "nii.gz", summary, overwrite=True)
    write = time.perf_counter() - t0
    t = result.timings
    alignment = result.prepared.alignment
    return {
        "load": load,
        "read": read,
        "preprocess": t["preprocess_s"],
        "registration": alignment.seconds if alignment else 0.0,
        "adapt": t.get("adapt_s", 0.0),
        "forward": t["forward_s"],
        "post": t["postprocess_s"],
        "resample": t["resample_s"],
        "mask": t["mask_s"],
        "write": write,
        "slices": float(result.prepared.slices.shape[0]),
    }


def process_seconds(args: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ssae", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default: the device's)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per row; the fastest is reported")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device: {describe_device(device)}; torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shipped, paper = default_model_path(), paper_size_model(folder)
        rows = [
            ("shipped 128 px x3, atlas", shipped, SAMPLE, False),
            ("shipped, adapted", shipped, SAMPLE, True),
            (
                f"256 px x4 ({count_parameters(Architecture('dense', size=256, levels=4, base_filters=16, max_filters=96)) / 1e6:.2f} M)",
                paper,
                resampled_input(folder),
                False,
            ),
        ]
        run_once(shipped, SAMPLE, folder / "warmup", args.device, args.batch_size, True, False)
        print(f"{'model':>28s} {'maps':>10s} {'slices':>6s} " + " ".join(f"{s:>10s}" for s in STEPS) + f" {'total':>7s}")
        for label, model, image, adapt in rows:
            for scales in (True, False):
                best = None
                for _ in range(args.repeats):
                    t = run_once(model, image, folder / "out", args.device, args.batch_size, scales, adapt)
                    total = sum(t[s] for s in STEPS)
                    if best is None or total < best[0]:
                        best = (total, t)
                total, t = best
                cells = [f"{t[s]:.2f}" + (f" ({t['registration']:.1f})" if s == "preprocess" and t["registration"] else "") for s in STEPS]
                print(
                    f"{label:>28s} {'all' if scales else 'no levels':>10s} {int(t['slices']):>6d} "
                    + " ".join(f"{c:>10s}" for c in cells)
                    + f" {total:>6.2f}s"
                )
        out = folder / "process"
        common = [str(shipped), str(SAMPLE), "--device", args.device, "--overwrite"]
        for label, extra in (
            ("ssae detect --no-adapt", ["--no-adapt"]),
            ("ssae detect --no-adapt --no-scales", ["--no-adapt", "--no-scales"]),
            ("ssae detect (adapts)", []),
        ):
            seconds = min(process_seconds(["detect", *common, "-o", str(out), *extra]) for _ in range(args.repeats))
            print(f"{label:>36s}: {seconds:.2f} s wall, as a separate process")
        startup = min(process_seconds(["info", str(shipped)]) for _ in range(args.repeats))
        print(f"{'ssae info (process start + card)':>36s}: {startup:.2f} s wall")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
