"""Training throughput (slices per second) per pyramid level, as ``ssae train`` runs it.

Each level is timed the way the trainer runs it: frozen coarser levels supply ``Î_{k+1}``,
Eq. 3 loss, backward, Adam step, batch 8, on real slices (the shipped MSLUB patient at the
model's size). On a CUDA device, with and without mixed precision.

    python bench/train.py [--device cpu] [--size 256] [--levels 4] [--steps 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssae.io.volumes import read_volume
from ssae.models.devices import describe_device, resolve_device
from ssae.models.losses import level_loss
from ssae.models.networks import build_model, count_parameters
from ssae.models.settings import Architecture
from ssae.preprocessing.slices import PreprocessingSettings, prepare_volume

SAMPLE = Path(__file__).resolve().parent.parent / "Resources" / "SampleData" / "MSLUB" / "patient19" / "flair.nii.gz"


def throughput(
    arch: Architecture, slices: np.ndarray, device: torch.device, level: int, steps: int, batch: int, amp: torch.dtype | None
) -> float:
    model = build_model(arch).to(device)
    for k, net in enumerate(model.nets):
        net.requires_grad_(k == level)
    optimizer = torch.optim.Adam(model.nets[level].parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    rng = np.random.default_rng(0)

    def step() -> None:
        rows = rng.integers(0, len(slices), batch)
        x = torch.from_numpy(slices[rows])[:, None].to(device)
        loss, _ = level_loss(model, level, x, torch.ones_like(x), amp_dtype=amp)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    device = resolve_device(args.device)
    arch = Architecture("dense", size=args.size, levels=args.levels, base_filters=16, max_filters=96)
    slices = prepare_volume(read_volume(SAMPLE), PreprocessingSettings(size=args.size)).slices
    modes: list[tuple[str, torch.dtype | None]] = [("fp32", None)]
    if device.type == "cuda":
        modes.append(
            (
                "amp " + ("bf16" if torch.cuda.is_bf16_supported() else "fp16"),
                torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
            )
        )
    print(
        f"device: {describe_device(device)}; {arch.name}, {count_parameters(arch):,} parameters; batch {args.batch_size}, {args.steps} timed steps per level"
    )
    print(f"{'level':>6s} {'side':>5s} " + " ".join(f"{name + ' slices/s':>18s}" for name, _ in modes))
    for level in range(arch.levels - 1, -1, -1):
        rates = [throughput(arch, slices, device, level, args.steps, args.batch_size, amp) for _, amp in modes]
        print(f"{level:>6d} {arch.level_size(level):>5d} " + " ".join(f"{r:>18.1f}" for r in rates))


if __name__ == "__main__":
    main()
