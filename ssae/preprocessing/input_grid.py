"""Score maps from the slice grid back onto the input volume's own voxels.

Every map of a detection goes back the same way: each input voxel inside the brain mask is
carried to a continuous index of the slice grid by one composed affine mapping (input index ->
input physical point -> atlas point through the inverse registration -> slice-grid index), and
the map is sampled there trilinearly. The mapping is computed once per volume and shared by all
maps; only brain voxels are sampled (the maps are 0 outside the brain, which is usually four
fifths of the input grid), and the sampling runs in torch, on the model's device.

The result is the same as ITK's linear resampling (``sitk.Resample`` with ``sitkLinear`` and
default value 0, whose boundary rule is kept: a point up to half a pixel beyond the first or
last grid index takes the edge value, further out it is 0); the tests check the two agree.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ssae.io.errors import SSAEError


def _index_to_physical(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(A, o)`` with physical point ``= A @ (x, y, z) index + o``."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    return direction @ np.diag(image.GetSpacing()), np.array(image.GetOrigin(), dtype=np.float64)


def _affine_parts(transform: sitk.Transform | None) -> tuple[np.ndarray, np.ndarray]:
    """``(M, t)`` with ``T(p) = M @ p + t`` for an affine (or identity) SimpleITK transform."""
    if transform is None:
        return np.eye(3), np.zeros(3)
    try:
        affine = sitk.AffineTransform(transform)
    except (RuntimeError, TypeError):
        raise SSAEError(f"maps go back to the input grid through affine transforms only, got {transform.GetName()}") from None
    matrix = np.array(affine.GetMatrix(), dtype=np.float64).reshape(3, 3)
    center, translation = np.array(affine.GetCenter()), np.array(affine.GetTranslation())
    return matrix, translation + center - matrix @ center


def input_to_grid_affine(grid: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None) -> np.ndarray:
    """3x4 matrix from a ``reference`` voxel's (x, y, z) index to its continuous index on ``grid``.

    ``transform`` maps grid (atlas) points to reference (scan) points, as registration gives it.
    """
    ref_a, ref_o = _index_to_physical(reference)
    grid_a, grid_o = _index_to_physical(grid)
    matrix, translation = _affine_parts(transform)
    to_atlas = np.linalg.inv(matrix)  # scan point -> atlas point: M^-1 (p - t)
    to_grid_index = np.linalg.inv(grid_a)
    linear = to_grid_index @ to_atlas @ ref_a
    offset = to_grid_index @ (to_atlas @ (ref_o - translation) - grid_o)
    return np.hstack([linear, offset[:, None]])


class InputGridSampler:
    """Samples slice-grid maps at the brain voxels of the input grid (see the module doc)."""

    def __init__(
        self,
        grid: sitk.Image,
        reference: sitk.Image,
        transform: sitk.Transform | None,
        brain_mask: sitk.Image | None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.reference = reference
        self.device = torch.device(device)
        self.shape = sitk.GetArrayViewFromImage(reference).shape[:3]  # (z, y, x)
        if brain_mask is None:
            self.voxels = None  # every voxel
            flat = torch.arange(int(np.prod(self.shape)), device=self.device)
        else:
            inside = sitk.GetArrayViewFromImage(brain_mask) > 0
            if inside.shape != self.shape:
                raise SSAEError("the brain mask does not have the input volume's grid")
            self.voxels = np.flatnonzero(inside)
            flat = torch.from_numpy(self.voxels).to(self.device)
        rows, cols = self.shape[1], self.shape[2]
        zyx = (flat // (rows * cols), flat // cols % rows, flat % cols)
        affine = torch.from_numpy(input_to_grid_affine(grid, reference, transform)).to(self.device)
        size = torch.tensor(grid.GetSize(), dtype=torch.float64, device=self.device)
        normalised = torch.empty((flat.numel(), 3), dtype=torch.float32, device=self.device)
        outside = torch.zeros(flat.numel(), dtype=torch.bool, device=self.device)
        for axis in range(3):  # continuous (x, y, z) grid index, one axis at a time (no [N, 3] float64 temporaries)
            a = affine[axis]
            index = a[0] * zyx[2] + a[1] * zyx[1] + a[2] * zyx[0] + a[3]
            outside |= (index < -0.5) | (index > size[axis] - 0.5)
            extent = float(size[axis]) - 1.0
            normalised[:, axis] = index.clamp_(0.0, extent).mul_(2.0 / extent).sub_(1.0) if extent > 0 else 0.0
        self._grid = normalised.view(1, 1, 1, -1, 3)
        self._outside = outside

    def sample(self, grid_map: np.ndarray | torch.Tensor) -> np.ndarray:
        """Values of a [slices, rows, cols] slice-grid map at the sampled input voxels."""
        volume = torch.as_tensor(grid_map, dtype=torch.float32, device=self.device)[None, None]
        values = F.grid_sample(volume, self._grid, mode="bilinear", padding_mode="zeros", align_corners=True).view(-1)
        return values.masked_fill_(self._outside, 0.0).cpu().numpy()

    def to_image(self, grid_map: np.ndarray | torch.Tensor) -> sitk.Image:
        """The map on the input grid as an image with the input's geometry (0 outside the brain)."""
        values = self.sample(grid_map)
        if self.voxels is None:
            array = values.reshape(self.shape)
        else:
            array = np.zeros(self.shape, np.float32)
            array.reshape(-1)[self.voxels] = values
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(self.reference)
        return image


def to_input_grid_many(
    maps: dict[str, np.ndarray],
    grid: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform | None,
    brain_mask: sitk.Image | None,
    device: torch.device | str = "cpu",
) -> dict[str, sitk.Image]:
    """Every [slices, rows, cols] map of the slice grid onto ``reference``'s voxels, 0 outside
    ``brain_mask`` (None: every voxel), with one mapping computed for all of them."""
    sampler = InputGridSampler(grid, reference, transform, brain_mask, device)
    return {name: sampler.to_image(array) for name, array in maps.items()}
