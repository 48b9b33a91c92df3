"""What a training run needs from its surroundings: one or several processes (PyTorch DDP under
``torchrun``), a request to stop (Ctrl-C, SIGTERM, a GUI's stop file) that ends an epoch cleanly
with a resume state, and the state of the level being trained."""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


class Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self, device: torch.device) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device
        if self.world_size > 1:
            if device.type == "cuda":
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                self.device = torch.device("cuda", local)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked between optimiser steps (never mid-update)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", signal.SIGTERM)):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: the caller handles stopping
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class LevelState:
    level: int
    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    loss_count: float = 0.0
    best_val: float = math.inf
    bad_epochs: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
