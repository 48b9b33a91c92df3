"""Multi-scale anomaly detection on a volume (paper, Eqs. 5-6).

For every slice, level by level: ``Î_k = u(Î_{k+1}) + M_k(H_k)`` and the residual
``r_k = I_k - Î_k``. The aggregated residual applies the pyramid recursion to the residuals,
``a_k = u(a_{k+1}) + r_k``, from the coarsest aggregated level down to ``a_0 = r_*`` at full
resolution. The residuals become score maps on the slice grid (:func:`ssae.scoring.score_maps.score_maps`:
per level, aggregated, with the hyper-intensity prior, fused with the FLAIR intensity, and the
FLAIR reference), all of which are resampled onto the input volume's own grid in one pass. There
the lesion mask is drawn: the model card's score map above its operating point's threshold,
joined by the small lesions found on the scan's own voxels (:mod:`ssae.scoring.small_lesions`,
:func:`ssae.scoring.mask_drawing.draw_lesions`).

Optionally, a copy of the model is first adapted to the scan (:mod:`ssae.detection.adaptation`); the
model card says whether that is the default and holds the thresholds calibrated for it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ssae.detection.adaptation import AdaptationReport, adapt_model, loss_weights
from ssae.io.errors import SSAEError
from ssae.io.model_file import read_card, verify_weights
from ssae.models.card import ModelCard
from ssae.models.checkpoint import load_model
from ssae.models.devices import inference_batch_size, resolve_device
from ssae.models.networks import ScaleSpaceAutoencoder
from ssae.models.settings import AdaptationSettings
from ssae.preprocessing.input_intensities import InputIntensities
from ssae.preprocessing.pyramid import decompose, upsample
from ssae.preprocessing.registration import RegistrationSettings
from ssae.preprocessing.registration_check import AtlasAlignment
from ssae.preprocessing.slices import PreparedVolume, prepare_volume
from ssae.scoring.lesions import LesionStatistics, LesionTable, lesion_mask, lesion_table
from ssae.scoring.maps import is_map_name, level_map
from ssae.scoring.mask_drawing import SmallLesionEvidence, draw_lesions, small_lesions_by_point
from ssae.scoring.operating_points import MaskRule
from ssae.scoring.score_maps import input_grid_maps, score_maps
from ssae.scoring.small_lesions import SmallLesionOutcome, brightness_ratio, find_candidates

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

    def named(self) -> dict[str, np.ndarray]:
        """``aggregated`` and ``levelK`` -> signed residual."""
        return {"aggregated": self.aggregated, **{level_map(k): r for k, r in self.per_level.items()}}


@dataclass
class DetectionResult:
    """Score maps and mask on the input grid, plus slice-grid arrays for figures."""

    maps: dict[str, sitk.Image]  # aggregated, levelK, prior, fused, flair
    score_map: str  # the map that drew the mask
    mask: sitk.Image
    rule: MaskRule  # the thresholds, minimum size, small-lesion rule and operating point that drew it
    lesions: LesionTable
    prepared: PreparedVolume
    residuals: SliceResiduals
    grid_scores: dict[str, np.ndarray]  # every score map on the slice grid (for figures)
    intensities: InputIntensities  # the scan's own voxels, normalised, where brightness was measured
    small_lesions: SmallLesionOutcome | None = None  # what the small-lesion rule did (None: the rule had none)
    small_lesions_by_point: sitk.Image | None = None  # uint8 bits: the small lesions of each operating point (the card's map)
    adaptation: AdaptationReport | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return self.rule.threshold

    @property
    def brain_ml(self) -> float:
        """The brain mask's volume on the input grid (what a healthy-brain share is taken of)."""
        mask = self.prepared.brain_mask
        return float(sitk.GetArrayViewFromImage(mask).astype(bool).sum()) * float(np.prod(mask.GetSpacing())) / 1000.0

    @property
    def statistics(self) -> LesionStatistics:
        return self.lesions.statistics

    @property
    def score(self) -> sitk.Image:
        return self.maps[self.score_map]

    @property
    def levels(self) -> list[int]:
        return sorted(int(name[5:]) for name in self.maps if name.startswith("level"))


class Detector:
    """A loaded model bound to a device; call :meth:`detect` on SimpleITK volumes."""

    def __init__(self, model: ScaleSpaceAutoencoder, card: ModelCard, device: torch.device, batch_size: int | None = None) -> None:
        if batch_size is not None and batch_size < 1:
            raise SSAEError(f"the batch size must be at least 1, got {batch_size}")
        self.card = card
        self.path: Path | None = None  # the model file, when loaded from one
        self.device = device
        self.device_request = str(device)  # as the user named it ("auto"): what a cluster's workers resolve for themselves
        self.model = model.to(device).eval()
        if device.type == "cpu":  # oneDNN runs the 5x5 (transposed) convolutions faster in NHWC
            self.model = self.model.to(memory_format=torch.channels_last)
        levels = card.architecture.levels
        self.batch_size = batch_size or inference_batch_size(
            device, lambda batch: self.model.reconstruct(decompose(batch, levels)), card.architecture.size
        )

    @classmethod
    def from_file(cls, path: str | Path, device: str = "auto", batch_size: int | None = None) -> Detector:
        resolved = resolve_device(device)
        loaded = load_model(path, resolved)
        detector = cls(loaded.model, loaded.card, resolved, batch_size)
        detector.path = loaded.path
        detector.device_request = device
        return detector

    def default_adaptation(self) -> AdaptationSettings | None:
        """The adaptation the model card recommends (None: detect with the model as trained)."""
        defaults = self.card.adaptation
        return defaults.settings if defaults is not None and defaults.enabled else None

    def adapted_to(
        self,
        slices: np.ndarray,
        brain: np.ndarray,
        settings: AdaptationSettings,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> tuple[Detector, AdaptationReport]:
        """A detector whose model copy is fine-tuned on one scan's model input ``slices``
        (``brain`` its brain mask on the slice grid; see :mod:`ssae.detection.adaptation`)."""
        keep = loss_weights(slices, brain, settings.exclude_percentile)
        model, report = adapt_model(self.model, slices, keep, settings, self.device, progress, should_cancel)
        adapted = Detector(model, self.card, self.device, self.batch_size)
        adapted.path = self.path
        return adapted, report

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
                for k, target in per_level.items():
                    target[start:stop] = residual[k][:, 0].float().cpu().numpy()
                aggregated[start:stop] = agg[:, 0].float().cpu().numpy()
                reconstruction[start:stop] = recon[0][:, 0].float().cpu().numpy()
                if progress is not None:
                    progress(stop / n, f"reconstructed {stop}/{n} slices")
        return SliceResiduals(per_level=per_level, aggregated=aggregated, reconstruction=reconstruction)

    def grid_score_maps(self, prepared: PreparedVolume, residuals: SliceResiduals) -> dict[str, np.ndarray]:
        """Every score map on the slice grid (see :func:`ssae.scoring.score_maps.score_maps`)."""
        return score_maps(residuals.named(), prepared.intensities, prepared.brain, self.card.postprocessing)

    def detect(
        self,
        image: sitk.Image,
        brain_mask: sitk.Image | None = None,
        threshold: float | None = None,
        scales: bool = True,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
        alignment: AtlasAlignment | None = None,
        adaptation: AdaptationSettings | None = None,
        score_map: str | None = None,
        registration: RegistrationSettings | None = None,
        operating_point: str | None = None,
        min_lesion_mm3: float | None = None,
    ) -> DetectionResult:
        """Score maps and the lesion mask, all on ``image``'s grid.

        ``adaptation`` fine-tunes a copy of the model on this scan first (pass
        :meth:`default_adaptation` for what the model card recommends). ``score_map`` chooses
        the map that draws the mask (default: the card's); ``operating_point`` the card's
        preset that turns it into a mask (default: the card's), ``threshold`` a number in the
        map's units instead, ``min_lesion_mm3`` the point's minimum lesion size (:meth:`ModelCard.mask_rule`).
        ``alignment`` reuses an earlier atlas registration of this scan;
        ``registration`` sets how much work N4 and the registration do (default: the current
        :class:`ssae.preprocessing.registration.RegistrationSettings`).
        """
        card = self.card
        chosen_map = score_map or card.score_map
        if not is_map_name(chosen_map) or (chosen_map.startswith("level") and not scales):
            raise SSAEError(f"unknown score map {chosen_map!r} for this run")
        rule = card.mask_rule(chosen_map, adaptation is not None, operating_point, threshold, min_lesion_mm3)  # refuses before any work
        timings: dict[str, float] = {}
        report = progress or (lambda fraction, message: None)
        adapt_share = 0.45 if adaptation is not None else 0.0

        t0 = time.perf_counter()
        report(0.0, "preprocessing")
        prepared = prepare_volume(image, card.preprocessing, brain_mask, alignment, registration)
        timings["preprocess_s"] = time.perf_counter() - t0
        timings.update(prepared.timings)

        detector, adapted = self, None
        if adaptation is not None:
            t0 = time.perf_counter()
            detector, adapted = self.adapted_to(
                prepared.slices, prepared.brain, adaptation, lambda f, m: report(0.05 + adapt_share * f, m), should_cancel
            )
            timings["adapt_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        forward_share = 0.75 - adapt_share
        residuals = detector.slice_residuals(
            prepared.slices, scales, lambda f, m: report(0.05 + adapt_share + forward_share * f, m), should_cancel
        )
        timings["forward_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        report(0.85, "post-processing and mapping back to the input grid")
        if should_cancel is not None and should_cancel():
            raise DetectionCancelled("detection cancelled")
        grid_scores = self.grid_score_maps(prepared, residuals)
        timings["postprocess_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        maps, intensities = input_grid_maps(grid_scores, prepared, card.postprocessing, self.device)
        timings["resample_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        point_rules = card.small_lesion_rules(adaptation is not None, min_lesion_mm3)
        evidence = small_lesion_evidence(intensities) if point_rules else None
        labels, small = draw_lesions(maps[chosen_map], rule, evidence)
        mask, lesions = lesion_mask(labels), lesion_table(labels, maps[chosen_map])
        by_point = small_lesions_by_point(maps[card.score_map], point_rules, evidence) if evidence is not None else None
        timings["mask_s"] = time.perf_counter() - t0
        report(1.0, "done")
        return DetectionResult(
            maps=maps,
            score_map=chosen_map,
            mask=mask,
            rule=rule,
            lesions=lesions,
            prepared=prepared,
            residuals=residuals,
            grid_scores=grid_scores,
            intensities=intensities,
            small_lesions=small,
            small_lesions_by_point=by_point,
            adaptation=adapted,
            timings=timings,
        )


def small_lesion_evidence(intensities: InputIntensities) -> SmallLesionEvidence:
    """The small-lesion candidates of a scan and its brightness, from its own voxels."""
    ratio = brightness_ratio(intensities.values, intensities.brain)
    return SmallLesionEvidence(find_candidates(ratio, intensities.brain, intensities.depth_mm, intensities.spacing), ratio)


_LOADED: dict[tuple, Detector] = {}


def cached_detector(path: str | Path, device: str = "auto", batch_size: int | None = None) -> Detector:
    """:meth:`Detector.from_file`, kept while the file holds the same model: a worker that runs
    detection after detection loads each model once. The cache is keyed on the model card and
    the weights' SHA-256 as read from the file *now* (the card is verified against its checksum
    and the weights against the card on every call: a file replaced by another with the same
    size and time stamp is noticed). One model is kept; detection never changes it (adaptation
    works on a copy)."""
    try:
        card = read_card(path)
        verify_weights(path, card)
    except SSAEError:
        return Detector.from_file(path, device, batch_size)  # says what is wrong with the file
    content = hashlib.sha256(json.dumps(card, sort_keys=True).encode()).hexdigest()
    key = (str(Path(path).resolve()), content, str(resolve_device(device)), batch_size)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = Detector.from_file(path, device, batch_size)
    return _LOADED[key]
