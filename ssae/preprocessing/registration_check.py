"""How much to trust an atlas registration: the template brain inside the scan's head and inside
its field of view, anatomical scales, and the contrast in the template's tissue regions (FLAIR or
not); what a user must hear about it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk

from ssae.preprocessing.atlas import load_atlas

MIN_BRAIN_INSIDE_HEAD = 0.9


MIN_BRAIN_IN_VIEW = 0.9  # share of the registered template brain that must lie inside the scan's field of view


SCALE_RANGE = (0.7, 1.3)  # atlas-to-scan: the MNI brain is larger than most; elderly brains shrink further


@dataclass
class RegistrationQuality:
    brain_inside_head: float  # share of the warped template brain inside the scan's head foreground
    scales: list[float]  # singular values of the affine matrix (atlas -> scan)
    passed: bool
    message: str
    contrast: dict[str, float] = field(default_factory=dict)  # median intensity per template tissue
    contrast_warning: str = ""
    brain_in_view: float | None = None  # share of the registered template brain inside the scan's field of view

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AtlasAlignment:
    """The atlas-to-scan affine transform, the scan's brain mask, and how much to trust them."""

    transform: sitk.AffineTransform  # atlas physical point -> scan physical point
    brain_mask: sitk.Image  # on the scan's grid
    quality: RegistrationQuality
    seconds: float


def brain_in_view(transform: sitk.AffineTransform, image: sitk.Image) -> float:
    """The share of the template brain (2 mm) that the registration puts inside ``image``'s field
    of view: the head-overlap check sees only the part of the brain on the scan's grid, so a
    20 mm slab of a head could otherwise pass as "the brain lies inside the head"."""
    atlas = load_atlas()
    mask = sitk.GetArrayViewFromImage(atlas.brain_2mm).astype(bool)
    zyx = np.argwhere(mask)[:, ::-1].astype(np.float64)  # continuous indices (x, y, z)
    brain = atlas.brain_2mm
    direction = np.array(brain.GetDirection()).reshape(3, 3)
    points = (direction @ (zyx * np.array(brain.GetSpacing())).T).T + np.array(brain.GetOrigin())
    matrix = np.array(transform.GetMatrix()).reshape(3, 3)
    centre, translation = np.array(transform.GetCenter()), np.array(transform.GetTranslation())
    in_scan = (matrix @ (points - centre).T).T + centre + translation  # atlas point -> scan point
    scan_direction = np.array(image.GetDirection()).reshape(3, 3)
    index = (np.linalg.inv(scan_direction) @ (in_scan - np.array(image.GetOrigin())).T).T / np.array(image.GetSpacing())
    inside = np.all((index >= -0.5) & (index <= np.array(image.GetSize()) - 0.5), axis=1)
    return float(inside.mean()) if inside.size else 0.0


def contrast_check(image: sitk.Image, transform: sitk.Transform) -> tuple[dict[str, float], str]:
    """Median intensity in template grey matter, white matter and CSF, and a warning if the
    contrast is not FLAIR's.

    FLAIR suppresses CSF, so CSF is darker than tissue; on T2 it is the brightest; CT has
    Hounsfield units far below zero. T1 also has dark CSF, and its white/grey matter ratio
    overlaps FLAIR's on our data (1.29 on an MSLUB T1, up to 1.25 on NiChart FLAIRs), so T1 is
    not flagged: that would warn on real FLAIRs.
    """
    atlas = load_atlas()
    sampled = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), atlas.gm, transform, sitk.sitkLinear, np.nan))
    gm, wm = sitk.GetArrayViewFromImage(atlas.gm), sitk.GetArrayViewFromImage(atlas.wm)
    brain = sitk.GetArrayViewFromImage(atlas.brain_2mm) > 0
    csf = brain & (gm < 0.1) & (wm < 0.1)
    regions = {"grey_matter": (gm > 0.6), "white_matter": (wm > 0.9), "csf": csf}
    medians = {name: float(np.nanmedian(sampled[region])) for name, region in regions.items() if np.isfinite(sampled[region]).any()}
    warning = ""
    raw = sitk.GetArrayViewFromImage(image)
    air = float(np.count_nonzero((raw > -1100) & (raw < -900))) / raw.size
    if air > 0.1:  # Hounsfield units: air at -1000 around the head
        warning = f"{air:.0%} of the voxels lie near -1000 (air in Hounsfield units): this looks like CT, not MR FLAIR"
    elif {"grey_matter", "white_matter", "csf"} <= set(medians):
        gm_v, wm_v, csf_v = medians["grey_matter"], medians["white_matter"], medians["csf"]
        if csf_v > max(gm_v, wm_v):
            warning = "CSF is brighter than grey and white matter: this looks like a T2-weighted scan, not FLAIR"
    return medians, warning


MIN_BRAIN_INSIDE_HEAD_AT_ALL = 0.5  # below this the registration did not find the head: stop


def alignment_warnings(alignment: AtlasAlignment | None, modality: str = "FLAIR") -> list[str]:
    """What a user must hear about a doubtful registration or an unexpected contrast (the run goes on)."""
    if alignment is None:
        return []
    quality = alignment.quality
    warnings = []
    if not quality.passed:
        warnings.append(f"registration check: {quality.message}; inspect the results before trusting them")
    if quality.contrast_warning:
        warnings.append(f"the model expects {modality}, but {quality.contrast_warning}")
    return warnings
