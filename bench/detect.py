"""End-to-end detection time of a 256x256x150 volume with a 4-level dense SSAE (256 px).

Read (.nii.gz) -> preprocess -> forward passes of all levels -> residuals -> aggregation ->
post-processing (positive part, 3D median, brain) per map -> back to the input grid -> write
the maps, the mask and the summary. Two output sets are timed: every map (per level and
aggregated, the CLI default) and the aggregated map only (``ssae detect --no-scales``). The volume is real MRI (the shipped MSLUB patient,
resampled onto a 256x256x150 grid); the model has random weights, which does not change the
amount of work. Per-slice (batch 1) and batched runs are timed side by side, in one process.

    python bench/detect.py [--device cpu] [--batch-sizes 1 2 4 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssae.checkpoint import ModelCard, Threshold, save_model
from ssae.detection import Detector
from ssae.detection_files import detection_summary, write_detection
from ssae.devices import describe_device, resolve_device
from ssae.models import Architecture, build_model, count_parameters
from ssae.postprocessing import PostprocessingSettings
from ssae.preprocessing import PreprocessingSettings
from ssae.volume_io import read_volume

SAMPLE = Path(__file__).resolve().parent.parent / "Resources" / "SampleData" / "MSLUB" / "patient19" / "flair.nii.gz"


def make_input(folder: Path) -> Path:
    source = sitk.ReadImage(str(SAMPLE))
    size = (256, 256, 150)
    spacing = [e / n for e, n in zip([s * n for s, n in zip(source.GetSpacing(), source.GetSize())], size)]
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing(spacing)
    reference.SetOrigin(source.GetOrigin())
    reference.SetDirection(source.GetDirection())
    path = folder / "input_256x256x150.nii.gz"
    sitk.WriteImage(sitk.Resample(source, reference, sitk.Transform(), sitk.sitkLinear, 0.0), str(path))
    return path


def make_model(folder: Path) -> Path:
    arch = Architecture("dense", size=256, levels=4, base_filters=16, max_filters=96)
    card = ModelCard(arch, PreprocessingSettings(size=256), PostprocessingSettings(), [0, 1, 2], Threshold(0.5, "benchmark placeholder"))
    torch.manual_seed(0)
    return save_model(build_model(arch), card, folder / "bench_ssae256.safetensors")


def run_once(model: Path, image_path: Path, out: Path, device: str, batch_size: int, scales: bool) -> dict[str, float]:
    t0 = time.perf_counter()
    detector = Detector.from_file(model, device, batch_size)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    image = read_volume(image_path)
    t_read = time.perf_counter() - t0
    result = detector.detect(image, scales=scales)
    t0 = time.perf_counter()
    summary = detection_summary(result, str(image_path), detector.card.architecture.name, "benchmark")
    write_detection(result, out, "bench", "nii.gz", summary, overwrite=True)
    t_write = time.perf_counter() - t0
    return {"model_load_s": t_load, "read_s": t_read, **result.timings, "write_s": t_write, "slices": result.prepared.slices.shape[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=2, help="runs per batch size; the fastest is reported")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image_path, model = make_input(folder), make_model(folder)
        arch = Architecture("dense", size=256, levels=4, base_filters=16, max_filters=96)
        print(f"device: {describe_device(device)}; model: {arch.name}, {count_parameters(arch):,} parameters; input 256x256x150")
        run_once(model, image_path, folder / "warmup", args.device, args.batch_sizes[0], True)
        header = ["outputs", "batch", "slices", "read", "preprocess", "forward", "post+back", "mask", "write", "total"]
        print(" ".join(f"{h:>11s}" for h in header))
        for scales in (True, False):
            for batch in args.batch_sizes:
                best = None
                for _ in range(args.repeats):
                    t = run_once(model, image_path, folder / f"out{batch}{scales}", args.device, batch, scales)
                    total = sum(v for k, v in t.items() if k.endswith("_s") and k != "model_load_s")
                    if best is None or total < best[0]:
                        best = (total, t)
                total, t = best
                row = [t["read_s"], t["preprocess_s"], t["forward_s"], t["postprocess_s"], t["mask_s"], t["write_s"], total]
                label = f"{batch} (per-slice)" if batch == 1 else str(batch)
                outputs = "all maps" if scales else "aggregated"
                print(f"{outputs:>11s} {label:>11s} {t['slices']:>11d} " + " ".join(f"{v:>10.2f}s" for v in row))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
