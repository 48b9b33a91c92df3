"""Detection results as proper Slicer citizens.

* one float volume per map (``<input> anomaly aggregated``, ``<input> anomaly level 0``,
  ``<input> anomaly with hyper-intensity prior``, ...) on the input's grid, shown with a heat
  colour map that is transparent below the map's threshold;
* one segmentation with one named, coloured segment per map (the map above its threshold),
  tagged with the extension's terminology (a lesion, anatomic region brain; the terminology
  file ships in ``Resources/Terminology`` and is loaded when the module starts);
* a table of the connected lesions of the map that drives the mask (volume in ml, size band,
  voxels, centroid in RAS), exportable as CSV;
* the small lesions each operating point finds beside the model's map's voxel mask
  (:mod:`ssae.scoring.small_lesions`), as one hidden label volume whose bits name the points;
  the current point's join that map's segment;
* everything in one subject-hierarchy folder under the input volume's study.

Moving the threshold recomputes only the affected segment and the table from the stored score
volume (no model run), so it stays interactive on full volumes; switching the operating point
also switches its small lesions, and a threshold of the user's keeps those of the point in use
(a small lesion is judged on the scan's own voxels, which the scene does not hold: the run
judged it for every point).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from ssae.scoring.lesions import LesionTable, label_lesions, lesion_table, relabel_by_size
from ssae.scoring.maps import map_title

from .scene_ownership import create_results_folder, oriented_image
from .volumes import array_from_volume_node, image_from_volume_node, update_volume_node_from_array, update_volume_node_from_image

HEAT_COLORMAP = "vtkMRMLColorTableNodeIron"
TERMINOLOGY_FILE = Path(__file__).resolve().parent.parent / "Resources" / "Terminology" / "SSAEAnomaly.term.json"
TERMINOLOGY_CONTEXT = "SSAE anomaly segmentation category and type"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
LESION_TERMINOLOGY = (
    f"{TERMINOLOGY_CONTEXT}~SCT^49755003^Morphologically Altered Structure~SCT^52988006^Lesion~^^~{ANATOMIC_CONTEXT}~SCT^12738006^Brain~^^"
)
SEGMENT_COLORS = {
    "aggregated": (0.90, 0.10, 0.10),
    "prior": (1.00, 0.35, 0.00),
    "fused": (0.95, 0.20, 0.60),
    "flair": (0.60, 0.60, 0.95),
    "level0": (1.00, 0.85, 0.10),
    "level1": (0.20, 0.80, 0.20),
    "level2": (0.10, 0.75, 0.90),
    "level3": (0.30, 0.35, 1.00),
    "level4": (0.80, 0.30, 0.90),
}


def segment_name(map_name: str, level_sizes: dict[str, int] | None = None) -> str:
    return f"Anomaly {map_title(map_name, level_sizes)}"


def add_score_volume(scene, reference, image: sitk.Image, name: str, threshold: float):
    """A float volume node for one score map, styled as a heat overlay."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    update_volume_node_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    style_score_volume(node, threshold)
    if reference is not None:
        node.SetAttribute("SSAE.input", reference.GetID())
    return node


def style_score_volume(node, threshold: float) -> None:
    """Heat colours from 0 to the map's high end; transparent below the threshold."""
    display = node.GetDisplayNode()
    values = array_from_volume_node(node)
    top = float(values.max()) if values.size else 1.0
    display.SetAndObserveColorNodeID(HEAT_COLORMAP)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, max(top, threshold * 1.5, 1e-6))
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(threshold)
    display.SetUpperThreshold(max(top, threshold) + 1.0)


def add_lesion_segmentation(scene, reference, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    return node


def segment_id_of(map_name: str) -> str:
    return f"SSAE_{map_name}"


def ensure_segment(segmentation_node, map_name: str, title: str) -> str:
    """ID of the segment for ``map_name`` (created, named, coloured and tagged on first use)."""
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segment_id_of(map_name)
    if segmentation.GetSegment(segment_id) is None:
        segmentation.AddEmptySegment(segment_id, title, SEGMENT_COLORS.get(map_name, (1.0, 0.5, 0.0)))
        segment = segmentation.GetSegment(segment_id)
        segment.SetTag(segment.GetTerminologyEntryTagName(), LESION_TERMINOLOGY)
    return segment_id


def add_small_lesions(scene, reference, by_point: sitk.Image, name: str):
    """A hidden label volume with the run's small lesions of every operating point (bits:
    :data:`ssae.scoring.mask_drawing.SMALL_LESION_BITS`)."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName(name))
    node.CopyOrientation(reference)
    update_volume_node_from_array(node, sitk.GetArrayFromImage(by_point).astype(np.uint8))
    node.SetHideFromEditors(True)
    return node


def update_segment(
    segmentation_node,
    segment_id: str,
    score_node,
    threshold: float,
    min_lesion_mm3: float,
    seed_threshold: float | None = None,
    small_lesions: tuple[object, int] | None = None,
) -> LesionTable:
    """Set the segment to ``score > threshold`` (small components, and with ``seed_threshold``
    components without a voxel above it, removed), joined by the small lesions of one point
    (``small_lesions``: the run's small-lesion volume and the point's bit) where given; return
    its lesions."""
    score = image_from_volume_node(score_node)
    labels = label_lesions(score, threshold, min_lesion_mm3, seed_threshold)
    if small_lesions is not None:
        node, bit = small_lesions
        small = (array_from_volume_node(node) & bit) > 0
        if small.shape == sitk.GetArrayViewFromImage(labels).shape and small.any():
            joined = sitk.GetImageFromArray(((sitk.GetArrayViewFromImage(labels) > 0) | small).astype(np.uint8))
            joined.CopyInformation(score)
            labels = relabel_by_size(joined, min_lesion_mm3)
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    labelmap.CopyOrientation(score_node)
    update_volume_node_from_array(labelmap, (sitk.GetArrayViewFromImage(labels) > 0).astype(np.uint8))
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_image(labelmap), segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
    )
    return lesion_table(labels, score)


LESION_TABLE_COLUMNS = (
    ("Lesion", vtk.vtkIntArray),
    ("Volume (ml)", vtk.vtkDoubleArray),
    ("Size band", vtk.vtkStringArray),
    ("Voxels", vtk.vtkIntArray),
    ("Longest axis (mm)", vtk.vtkDoubleArray),
    ("Peak score", vtk.vtkDoubleArray),
    *((f"Centroid {axis} (mm)", vtk.vtkDoubleArray) for axis in "RAS"),
)


def fill_lesion_table(table_node, lesions: LesionTable, operating_point: str = "") -> None:
    """One row per lesion, largest first (the columns of ``ssae detect``'s ``*_lesions.csv``),
    and which operating point drew the mask."""
    table = vtk.vtkTable()
    columns = LESION_TABLE_COLUMNS
    arrays = []
    for title, kind in columns:
        array = kind()
        array.SetName(title)
        table.AddColumn(array)
        arrays.append(array)
    for row in lesions.rows():
        for array, value in zip(arrays, row):
            array.InsertNextValue(value)
    table_node.SetAndObserveTable(table)
    table_node.SetAttribute("SSAE.lesionCount", str(lesions.statistics.count))
    table_node.SetAttribute("SSAE.totalVolumeMl", repr(lesions.statistics.total_ml))
    table_node.SetAttribute("SSAE.operatingPoint", operating_point)


def add_atlas_transform(scene, transform: sitk.Transform, name: str):
    """A linear transform node taking atlas (template) coordinates onto the scan (RAS).

    Put the MNI template (or any atlas-space image) under it to see the registration.
    """
    flip = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS
    affine = sitk.AffineTransform(transform)
    matrix = flip @ np.array(affine.GetMatrix()).reshape(3, 3) @ flip
    offset = flip @ (np.array(affine.TransformPoint((0.0, 0.0, 0.0))))
    vtk_matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            vtk_matrix.SetElement(r, c, matrix[r, c])
        vtk_matrix.SetElement(r, 3, offset[r])
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", scene.GenerateUniqueName(name))
    node.SetMatrixTransformToParent(vtk_matrix)
    return node


def place_under_input_study(scene, volume, nodes: list, folder_name: str) -> int:
    """Put ``nodes`` in a new subject-hierarchy folder beside ``volume`` (under its study, where
    it has one), so the results sit with the scan they belong to. Returns the folder's item ID."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    volume_item = hierarchy.GetItemByDataNode(volume)
    parent = hierarchy.GetItemParent(volume_item) if volume_item else hierarchy.GetSceneItemID()
    folder = create_results_folder(scene, parent, folder_name)
    for node in nodes:
        move_into_folder(scene, node, folder)
    return folder


def move_into_folder(scene, node, folder: int) -> None:
    """Make ``node`` a child of the subject-hierarchy item ``folder``."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, folder)
    else:  # outside the application nothing creates items for new nodes: do it here
        hierarchy.CreateItem(folder, node)


def fill_string_table(node, columns: list[str] | tuple[str, ...], rows: list[dict[str, str]]) -> None:
    """A table node with one text column per name of ``columns`` and one row per dict of ``rows``
    (missing cells empty): how the module shows the engine's CSV tables."""
    table = node.GetTable()
    for column in columns:
        array = vtk.vtkStringArray()
        array.SetName(column)
        table.AddColumn(array)
    for row in rows:
        table.InsertNextBlankRow()
        for index, column in enumerate(columns):
            table.SetValue(table.GetNumberOfRows() - 1, index, vtk.vtkVariant(str(row.get(column, ""))))
    node.Modified()
