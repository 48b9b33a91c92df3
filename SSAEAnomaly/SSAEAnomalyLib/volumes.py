"""Where Slicer's volume nodes meet SimpleITK images, geometry included.

Slicer keeps geometry in RAS (IJK-to-RAS matrix); ITK/SimpleITK in LPS (origin, spacing,
direction). The conversion flips the first two axes and nothing else; arrays are shared in
numpy's [k, j, i] order on both sides. Every result the engine computes on the SimpleITK image
comes back onto exactly the input node's voxels.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from ssae.io.errors import SSAEError

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


def image_from_volume_node(node) -> sitk.Image:
    """SimpleITK image with the node's voxels, spacing, origin and direction (a copy)."""
    if node is None:
        raise SSAEError("no input volume selected")
    image_data = node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise SSAEError(f"volume {node.GetName()} has no image data")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise SSAEError(f"volume {node.GetName()} has {image_data.GetNumberOfScalarComponents()} components; a scalar volume is needed")
    dims = image_data.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    array = scalars.reshape(dims[2], dims[1], dims[0]).copy()
    image = sitk.GetImageFromArray(array)
    directions = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(directions)
    ras = np.array([[directions.GetElement(r, c) for c in range(3)] for r in range(3)])
    image.SetDirection(tuple((RAS_FROM_LPS @ ras).ravel()))
    image.SetSpacing(node.GetSpacing())
    image.SetOrigin(tuple(RAS_FROM_LPS @ np.array(node.GetOrigin())))
    return image


def set_node_geometry_from_image(node, image: sitk.Image) -> None:
    direction = RAS_FROM_LPS @ np.array(image.GetDirection()).reshape(3, 3)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, direction[r, c])
    node.SetIJKToRASDirectionMatrix(matrix)
    node.SetSpacing(image.GetSpacing())
    node.SetOrigin(tuple(RAS_FROM_LPS @ np.array(image.GetOrigin())))


def update_volume_node_from_array(node, array: np.ndarray) -> None:
    """Replace a node's voxels by a [k, j, i] array (geometry untouched)."""
    array = np.ascontiguousarray(array)
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    vtk_array = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    image_data.GetPointData().SetScalars(vtk_array)
    node.SetAndObserveImageData(image_data)


def update_volume_node_from_image(node, image: sitk.Image) -> None:
    set_node_geometry_from_image(node, image)
    update_volume_node_from_array(node, sitk.GetArrayFromImage(image))


def array_from_volume_node(node) -> np.ndarray:
    """The node's voxels as a [k, j, i] numpy view (no copy)."""
    image_data = node.GetImageData()
    dims = image_data.GetDimensions()
    return numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
