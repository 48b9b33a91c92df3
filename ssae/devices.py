"""Choosing the compute device and the inference batch size for it."""

from __future__ import annotations

import torch

from .errors import SSAEError

# Inference slices per batch, by measurement (bench/detect.py, 2 CPU cores, 4-level 256 px
# dense SSAE, 137 slices): forward 3.2-3.4 s at batch 1, 2.6-2.9 s at 2, 2.3-2.4 s at 4 and
# 2.4-2.8 s at 8. GPUs want large batches to fill the device.
CPU_BATCH_SIZE = 4
GPU_BATCH_SIZE = 64


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SSAEError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SSAEError("CUDA was requested but no CUDA GPU is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SSAEError(f"{name} requested but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type != "cpu":
        raise SSAEError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def inference_batch_size(device: torch.device) -> int:
    return GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE


def describe_device(device: torch.device) -> str:
    """Human description, e.g. ``CPU (2 threads)`` or ``CUDA: NVIDIA H100 80GB HBM3``."""
    if device.type == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(device)}"
    return f"CPU ({torch.get_num_threads()} threads)"
