"""Choosing the compute device and the inference batch size for it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ssae.io.errors import SSAEError

# Inference slices per batch, by measurement (bench/detect.py, 2 CPU cores, 4-level 256 px
# dense SSAE, 137 slices): forward 3.2-3.4 s at batch 1, 2.6-2.9 s at 2, 2.3-2.4 s at 4 and
# 2.4-2.8 s at 8. GPUs want large batches to fill the device: there the batch is sized from the
# free memory and the memory one slice was measured to take (:func:`inference_batch_size`).
CPU_BATCH_SIZE = 4


GPU_MEMORY_SHARE = 0.5  # of the free GPU memory, for one forward pass


GPU_MAX_BATCH_SIZE = 512


def set_compute_threads(threads: int) -> None:
    """Run the networks (torch) and the image filters (SimpleITK) of this process on ``threads``
    threads.

    Why it is set per scan, not left to each library: a float sum split over threads is added
    in another order for another thread count, so a scan's maps differ in their last bits, and
    adaptation (which trains on them) can move a mask voxel, when one run uses two threads and
    another one. A cohort fixes the count per scan (``--threads-per-scan``) and then gets the same
    files from any engine (the registrations are single-threaded anyway:
    :data:`ssae.preprocessing.registration.REGISTRATION_THREADS`)."""
    import SimpleITK as sitk

    if threads < 1:
        raise SSAEError(f"the thread count must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


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


def inference_batch_size(device: torch.device, forward: Callable[[torch.Tensor], object] | None = None, size: int = 256) -> int:
    """Slices per forward pass: :data:`CPU_BATCH_SIZE` on the CPU; on a GPU as many as fit in
    :data:`GPU_MEMORY_SHARE` of the free memory, by the peak memory ``forward`` takes on two
    ``size`` x ``size`` slices (measured once, when the model is loaded)."""
    if device.type != "cuda" or forward is None:
        return CPU_BATCH_SIZE
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        forward(torch.zeros((2, 1, size, size), device=device))
    torch.cuda.synchronize(device)
    per_slice = max((torch.cuda.max_memory_allocated(device) - before) / 2, 1)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(GPU_MAX_BATCH_SIZE, GPU_MEMORY_SHARE * free // per_slice)))


def available_device_description() -> str:
    """Where ``auto`` runs the networks, for people (the Slicer panel shows it)."""
    if torch.cuda.is_available():
        return f"GPU available: {torch.cuda.get_device_name(0)} (PyTorch {torch.__version__})"
    return f"No CUDA GPU found: the networks run on the CPU ({torch.get_num_threads()} threads, PyTorch {torch.__version__})."


def describe_device(device: torch.device) -> str:
    """Human description, e.g. ``CPU (2 threads)`` or ``CUDA: NVIDIA H100 80GB HBM3``."""
    if device.type == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(device)}"
    return f"CPU ({torch.get_num_threads()} threads)"
