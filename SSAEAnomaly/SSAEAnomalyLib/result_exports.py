"""Exports of the results for :class:`SSAEAnomalyLib.logic.AnomalyLogic`: the lesion mask as a
labelmap, every segment as ``.seg.nrrd``, the lesion table as CSV; nothing is replaced unless
asked, and every file is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import slicer
import vtk

from ssae.io.errors import SSAEError
from ssae.io.writing import atomic_path, write_text
from ssae.scoring.lesions import lesion_rows_csv

from .results import (
    ensure_segment,
    segment_name,
)
from .scene_ownership import scene_left_as_it_was

LABELMAP_SUFFIXES = (".nrrd", ".nii.gz", ".nii")


class ResultExports:
    """The export part of :class:`SSAEAnomalyLib.logic.AnomalyLogic` (uses its scene and parameters)."""

    def export_labelmap(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """The current mask (the segment of the map that drives it) as a labelmap on the input grid."""
        params = self.parameters
        segmentation, volume = params.segmentation, params.input_volume
        if segmentation is None or volume is None:
            raise SSAEError("run the detection first")
        path = Path(path)
        if not path.name.lower().endswith(LABELMAP_SUFFIXES):
            raise SSAEError(f"labelmap files end with {', '.join(LABELMAP_SUFFIXES)}")
        ids = _string_array([ensure_segment(segmentation, params.score_map, segment_name(params.score_map))])
        with scene_left_as_it_was(self.scene):  # the export adds a display node and a color table too
            labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, volume):
                raise SSAEError("exporting the segment to a labelmap failed")
            return _write_with_storage_node(slicer.vtkMRMLVolumeArchetypeStorageNode(), labelmap, path, overwrite, self.scene)

    def export_segmentation(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Every segment (one per map) as a ``.seg.nrrd`` on the input grid."""
        params = self.parameters
        if params.segmentation is None:
            raise SSAEError("run the detection first")
        path = Path(path)
        if not path.name.lower().endswith(".seg.nrrd"):
            raise SSAEError("segmentation files end with .seg.nrrd")
        return _write_with_storage_node(slicer.vtkMRMLSegmentationStorageNode(), params.segmentation, path, overwrite, self.scene)

    def export_lesion_table(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """The lesion table of the map that drives the mask as CSV (the same columns as
        ``ssae detect``'s ``*_lesions.csv``)."""
        params = self.parameters
        table = params.statistics_table
        if table is None:
            raise SSAEError("run the detection first")
        path = Path(path)
        if path.suffix.lower() != ".csv":
            raise SSAEError("lesion tables are written as .csv")
        return write_text(_table_csv(table.GetTable()), path, overwrite)


def _table_csv(table) -> str:
    def cell(row: int, column: int):
        value = table.GetValue(row, column)
        return value.ToString() if value.IsString() else value.ToDouble()

    rows = [tuple(cell(r, c) for c in range(table.GetNumberOfColumns())) for r in range(table.GetNumberOfRows())]
    return lesion_rows_csv(rows)


def _string_array(values: list[str]):
    array = vtk.vtkStringArray()
    for value in values:
        array.InsertNextValue(value)
    return array


def _write_with_storage_node(storage, node, path: Path, overwrite: bool, scene) -> Path:
    """Write through a Slicer storage node into a temporary sibling, then rename (atomic)."""
    with atomic_path(path, overwrite) as tmp:  # tmp keeps the extension that selects the format
        tmp.unlink()  # the storage node writes the file itself
        scene.AddNode(storage)
        try:
            storage.SetFileName(str(tmp))
            if not storage.WriteData(node):
                raise SSAEError(f"cannot write {path}")
        finally:
            scene.RemoveNode(storage)
    return path
