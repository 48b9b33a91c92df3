"""Multi-scale anomaly detection on a volume (paper, Eqs. 5-6).

For every slice, level by level: ``Î_k = u(Î_{k+1}) + M_k(H_k)`` and the residual
``r_k = I_k - Î_k``. The aggregated residual applies the pyramid recursion to the residuals,
``a_k = u(a_{k+1}) + r_k``, from the coarsest aggregated level down to ``a_0 = r_*`` at full
resolution. Every map goes through the same post-processing (positive part, median filter,
eroded brain; a per-scale map is filtered at its own resolution and then brought to full
resolution by repeated ``u``) and is resampled onto the input volume's own grid; the lesion
mask is the aggregated score above the threshold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .checkpoint import ModelCard, load_model
from .devices import inference_batch_size, resolve_device
from .errors import SSAEError
from .models import ScaleSpaceAutoencoder
from .postprocessing import LesionStatistics, anomaly_score, eroded_brain, label_lesions, lesion_mask, lesion_statistics
from .preprocessing import PreparedVolume, prepare_volume, to_input_grid
from .pyramid import decompose, upsample
from .registration import AtlasAlignment

ProgressCallback = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


class DetectionCancelled(SSAEError):
    """The caller asked to stop (e.g. the Cancel button in Slicer)."""


@dataclass
class SliceResiduals:
    """Signed residuals on the slice grid: aggregated at full resolution ``[slices, size, size]``,
    per level at the level's own resolution (only when asked for)."""

    per_level: dict[int, np.ndarray]
    aggregated: np.ndarray
    reconstruction: np.ndarray  # Î_0


@dataclass
class DetectionResult:
    """Scores and mask on the input grid, plus slice-grid arrays for figures."""

    aggregated: sitk.Image
    scales: dict[int, sitk.Image]
    mask: sitk.Image
    threshold: float
    statistics: LesionStatistics
    prepared: PreparedVolume
    residuals: SliceResiduals
    grid_scores: dict[str, np.ndarray]
    timings: dict[str, float] = field(default_factory=dict)


class Detector:
    """A loaded model bound to a device; call :meth:`detect` on SimpleITK volumes."""

    def __init__(self, model: ScaleSpaceAutoencoder, card: ModelCard, device: torch.device, batch_size: int | None = None) -> None:
        self.card = card
        self.device = device
        self.batch_size = batch_size or inference_batch_size(device)
        self.model = model.to(device).eval()
        if device.type == "cpu":  # oneDNN runs the 5x5 (transposed) convolutions faster in NHWC
            self.model = self.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_file(cls, path: str | Path, device: str = "auto", batch_size: int | None = None) -> Detector:
        resolved = resolve_device(device)
        loaded = load_model(path, resolved)
        return cls(loaded.model, loaded.card, resolved, batch_size)

    def slice_residuals(
        self,
        slices: np.ndarray,
        scales: bool = True,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> SliceResiduals:
        """Batched forward passes of every level; signed residuals (per level if ``scales``)."""
        arch = self.card.architecture
        n, size = slices.shape[0], arch.size
        if slices.shape[1:] != (size, size):
            raise SSAEError(f"slices are {slices.shape[1:]} but the model expects {size}x{size}")
        per_level = {k: np.empty((n, arch.level_size(k), arch.level_size(k)), np.float32) for k in range(arch.levels)} if scales else {}
        aggregated = np.empty((n, size, size), np.float32)
        reconstruction = np.empty((n, size, size), np.float32)
        coarsest_aggregated = max(self.card.aggregated_levels)
        memory = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                if should_cancel is not None and should_cancel():
                    raise DetectionCancelled("detection cancelled")
                stop = min(start + self.batch_size, n)
                batch = torch.tensor(slices[start:stop], device=self.device)[:, None]
                pyramid = decompose(batch.contiguous(memory_format=memory), arch.levels)
                recon = self.model.reconstruct(pyramid)
                residual = [pyramid.lowpass[k] - recon[k] for k in range(arch.levels)]
                agg = residual[coarsest_aggregated]
                for k in range(coarsest_aggregated - 1, -1, -1):
                    agg = upsample(agg) + residual[k]
                for k in per_level:
                    per_level[k][start:stop] = residual[k][:, 0].float().cpu().numpy()
                aggregated[start:stop] = agg[:, 0].float().cpu().numpy()
                reconstruction[start:stop] = recon[0][:, 0].float().cpu().numpy()
                if progress is not None:
                    progress(stop / n, f"reconstructed {stop}/{n} slices")
        return SliceResiduals(per_level=per_level, aggregated=aggregated, reconstruction=reconstruction)

    def detect(
        self,
        image: sitk.Image,
        brain_mask: sitk.Image | None = None,
        threshold: float | None = None,
        scales: bool = True,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
        alignment: AtlasAlignment | None = None,
    ) -> DetectionResult:
        """Scores per scale and aggregated, and the lesion mask, all on ``image``'s grid.

        ``alignment`` reuses an earlier atlas registration of this scan (atlas models only).
        """
        timings: dict[str, float] = {}
        report = progress or (lambda fraction, message: None)

        t0 = time.perf_counter()
        report(0.0, "preprocessing")
        prepared = prepare_volume(image, self.card.preprocessing, brain_mask, alignment)
        timings["preprocess_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        residuals = self.slice_residuals(prepared.slices, scales, lambda f, m: report(0.05 + 0.75 * f, m), should_cancel)
        timings["forward_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        report(0.85, "post-processing and mapping back to the input grid")
        post = self.card.postprocessing
        inside = eroded_brain(prepared.brain, post.brain_erosion)
        # Interpolation at the brain's edge must not leak scores outside the input's brain mask.
        input_brain = sitk.Cast(prepared.brain_mask, sitk.sitkFloat32)
        signed = {"aggregated": residuals.aggregated, **{f"level{k}": r for k, r in residuals.per_level.items()}}

        def finish(name: str) -> tuple[np.ndarray, sitk.Image]:
            if should_cancel is not None and should_cancel():
                raise DetectionCancelled("detection cancelled")
            score = anomaly_score(signed[name], prepared.slices, inside, post, prepared.brain)
            return score, to_input_grid(score, prepared.grid, image, prepared.transform) * input_brain

        # ITK and numpy release the GIL: two maps at a time keep both cores busy.
        with ThreadPoolExecutor(max_workers=2) as pool:
            finished = dict(zip(signed, pool.map(finish, signed)))
        grid_scores = {name: score for name, (score, _) in finished.items()}
        aggregated = finished["aggregated"][1]
        scale_images = {int(name[len("level") :]): image_ for name, (_, image_) in finished.items() if name != "aggregated"}
        timings["postprocess_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        chosen = self.card.threshold.value if threshold is None else float(threshold)
        labels = label_lesions(aggregated, chosen, post.min_lesion_mm3)
        mask, statistics = lesion_mask(labels), lesion_statistics(labels)
        timings["mask_s"] = time.perf_counter() - t0
        report(1.0, "done")
        return DetectionResult(
            aggregated=aggregated,
            scales=scale_images,
            mask=mask,
            threshold=chosen,
            statistics=statistics,
            prepared=prepared,
            residuals=residuals,
            grid_scores=grid_scores,
            timings=timings,
        )
