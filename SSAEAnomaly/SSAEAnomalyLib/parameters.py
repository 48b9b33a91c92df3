"""The SSAEAnomaly module's state, kept in a parameter node in the scene.

Everything the user chose (input volume, brain mask, model file, device, which map drives the
mask, threshold, minimum lesion size) and every result node lives in one
``vtkMRMLScriptedModuleNode``, so saving the scene and loading it again restores the module
exactly. Values are stored as plain strings and node references, readable without Qt (this
class is what the tests exercise on a bare scene) and by the widget alike.
"""

from __future__ import annotations

import slicer

from ssae.errors import SSAEError

MODULE_NAME = "SSAEAnomaly"
RESULT_VOLUME_ROLE = "resultVolume"  # one reference per map: resultVolume/aggregated, resultVolume/level0, ...


def module_parameter_node(scene, module_name: str):
    """The scene's singleton parameter node of ``module_name`` (created on first use)."""
    node = scene.GetSingletonNode(module_name, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(module_name)
        node.SetName(f"{module_name}Parameters")
        node.SetModuleName(module_name)
        node = scene.AddNode(node)
    return node


class AnomalyParameters:
    """Typed view of the module's parameter node (created on first use, one per scene)."""

    def __init__(self, node) -> None:
        self.node = node

    @classmethod
    def of_scene(cls, scene) -> AnomalyParameters:
        return cls(module_parameter_node(scene, MODULE_NAME))

    # plain values ---------------------------------------------------------------------------
    def _get(self, name: str, default: str = "") -> str:
        value = self.node.GetParameter(name)
        return value if value else default

    def _set(self, name: str, value: str) -> None:
        self.node.SetParameter(name, value)

    @property
    def model_path(self) -> str:
        return self._get("modelPath")

    @model_path.setter
    def model_path(self, value: str) -> None:
        self._set("modelPath", str(value))

    @property
    def device(self) -> str:
        return self._get("device", "auto")

    @device.setter
    def device(self, value: str) -> None:
        self._set("device", value)

    @property
    def score_map(self) -> str:
        """Which map drives the mask: ``aggregated`` or ``level0``, ``level1``, ..."""
        return self._get("scoreMap", "aggregated")

    @score_map.setter
    def score_map(self, value: str) -> None:
        if value != "aggregated" and not (value.startswith("level") and value[5:].isdigit()):
            raise SSAEError(f"unknown score map {value!r}")
        self._set("scoreMap", value)

    def threshold_of(self, map_name: str) -> float:
        """The threshold the user set for ``map_name`` (the calibrated one until moved)."""
        value = self._get(f"threshold/{map_name}")
        if not value:
            raise SSAEError(f"no threshold for {map_name}; run the detection first")
        return float(value)

    def set_threshold_of(self, map_name: str, value: float) -> None:
        self._set(f"threshold/{map_name}", repr(float(value)))

    @property
    def min_lesion_mm3(self) -> float:
        return float(self._get("minLesionMm3", "10.0"))

    @min_lesion_mm3.setter
    def min_lesion_mm3(self, value: float) -> None:
        self._set("minLesionMm3", repr(float(value)))

    # node references ------------------------------------------------------------------------
    @property
    def input_volume(self):
        return self.node.GetNodeReference("inputVolume")

    @input_volume.setter
    def input_volume(self, node) -> None:
        self.node.SetNodeReferenceID("inputVolume", node.GetID() if node else None)

    @property
    def brain_mask(self):
        return self.node.GetNodeReference("brainMask")

    @brain_mask.setter
    def brain_mask(self, node) -> None:
        self.node.SetNodeReferenceID("brainMask", node.GetID() if node else None)

    @property
    def segmentation(self):
        return self.node.GetNodeReference("segmentation")

    @segmentation.setter
    def segmentation(self, node) -> None:
        self.node.SetNodeReferenceID("segmentation", node.GetID() if node else None)

    @property
    def statistics_table(self):
        return self.node.GetNodeReference("statisticsTable")

    @statistics_table.setter
    def statistics_table(self, node) -> None:
        self.node.SetNodeReferenceID("statisticsTable", node.GetID() if node else None)

    def result_volume(self, map_name: str):
        return self.node.GetNodeReference(f"{RESULT_VOLUME_ROLE}/{map_name}")

    def set_result_volume(self, map_name: str, node) -> None:
        self.node.SetNodeReferenceID(f"{RESULT_VOLUME_ROLE}/{map_name}", node.GetID() if node else None)

    def result_maps(self) -> list[str]:
        """Names of the maps with a result volume, ``aggregated`` first, then by level."""
        names = []
        for index in range(self.node.GetNumberOfNodeReferenceRoles()):
            role = self.node.GetNthNodeReferenceRole(index)
            if role.startswith(RESULT_VOLUME_ROLE + "/") and self.node.GetNodeReference(role) is not None:
                names.append(role.split("/", 1)[1])
        return sorted(names, key=lambda n: (n != "aggregated", int(n[5:]) if n.startswith("level") else 0))
