"""The SSAEAnomaly module's state, kept in a parameter node in the scene.

Everything the user chose (input volume, brain mask, model file, device, adaptation, which
map drives the mask, thresholds, minimum lesion size) and every result node lives in one
``vtkMRMLScriptedModuleNode``, so saving the scene and loading it again restores the module
exactly. Values are stored as plain strings and node references, readable without Qt (this
class is what the tests exercise on a bare scene) and by the widget alike.

Writes that belong together go inside :meth:`AnomalyParameters.batch`, so observers (the
panel) hear one ``Modified`` event per user action instead of one per value.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import slicer

from ssae.io.errors import SSAEError
from ssae.scoring.maps import is_map_name, map_order
from ssae.scoring.operating_points import OPERATING_POINT_NAMES

MODULE_NAME = "SSAEAnomaly"
RESULT_VOLUME_ROLE = "resultVolume"  # one reference per map: resultVolume/aggregated, resultVolume/level0, ...
ADAPT_CHOICES = ("model", "on", "off")  # "model": as the model card recommends
OPERATING_POINT_CHOICES = ("model", *OPERATING_POINT_NAMES)  # "model": the model card's default


def module_parameter_node(scene, module_name: str):
    """The scene's singleton parameter node of ``module_name`` (created on first use).

    Marked with the ``ModuleName`` attribute as Slicer's ``ScriptedLoadableModuleLogic`` marks
    its parameter nodes; File > Close Scene keeps the singleton but clears its parameters,
    references and attributes, so the attribute is restored here, as Slicer does.
    """
    node = scene.GetSingletonNode(module_name, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(module_name)
        node.SetName(f"{module_name}Parameters")
        node = scene.AddNode(node)
    if node.GetAttribute("ModuleName") != module_name:
        node.SetAttribute("ModuleName", module_name)
    return node


class NodeReference:
    """A node reference of the parameter node as an attribute: reads the referenced node, and
    writes the reference only when it changes (an unchanged write would still notify)."""

    def __init__(self, role: str) -> None:
        self.role = role

    def __get__(self, parameters: AnomalyParameters | None, owner: type | None = None):
        return self if parameters is None else parameters._node(self.role)

    def __set__(self, parameters: AnomalyParameters, node) -> None:
        parameters._set_node(self.role, node)


class AnomalyParameters:
    """Typed view of the module's parameter node (created on first use, one per scene)."""

    def __init__(self, node) -> None:
        self.node = node

    @classmethod
    def of_scene(cls, scene) -> AnomalyParameters:
        return cls(module_parameter_node(scene, MODULE_NAME))

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group writes: observers get a single Modified event when the block ends."""
        was_modifying = self.node.StartModify()
        try:
            yield
        finally:
            self.node.EndModify(was_modifying)

    # plain values ---------------------------------------------------------------------------
    def _get(self, name: str, default: str = "") -> str:
        value = self.node.GetParameter(name)
        return value if value else default

    def _set(self, name: str, value: str) -> None:
        if self.node.GetParameter(name) != value:
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
    def adapt(self) -> str:
        """Scanner adaptation: ``model`` (as the model card recommends), ``on`` or ``off``."""
        return self._get("adapt", "model")

    @adapt.setter
    def adapt(self, value: str) -> None:
        if value not in ADAPT_CHOICES:
            raise SSAEError(f"adaptation must be one of {', '.join(ADAPT_CHOICES)}, got {value!r}")
        self._set("adapt", value)

    @property
    def score_map(self) -> str:
        """Which map drives the mask: ``prior``, ``aggregated``, ``level0``, ... (see :mod:`ssae.scoring.maps`)."""
        return self._get("scoreMap", "")

    @score_map.setter
    def score_map(self, value: str) -> None:
        if not is_map_name(value):
            raise SSAEError(f"unknown score map {value!r}")
        self._set("scoreMap", value)

    def threshold_of(self, map_name: str) -> float:
        """The threshold the user set for ``map_name`` (the calibrated one until moved)."""
        value = self._get(f"threshold/{map_name}")
        if not value:
            raise SSAEError(f"no threshold for {map_name}; run the detection first")
        return float(value)

    def has_threshold(self, map_name: str) -> bool:
        return bool(self._get(f"threshold/{map_name}"))

    def set_threshold_of(self, map_name: str, value: float) -> None:
        self._set(f"threshold/{map_name}", repr(float(value)))

    def seed_of(self, map_name: str) -> float | None:
        """The hysteresis seed threshold of ``map_name``'s mask (None: every component counts)."""
        value = self._get(f"seed/{map_name}")
        return float(value) if value else None

    def rule_name_of(self, map_name: str) -> str:
        """Which operating point drew ``map_name``'s mask, or ``threshold`` for the user's own."""
        return self._get(f"rule/{map_name}", "threshold")

    def set_rule_of(self, map_name: str, threshold: float, seed: float | None, rule: str) -> None:
        self.set_threshold_of(map_name, threshold)
        self._set(f"seed/{map_name}", "" if seed is None else repr(float(seed)))
        self._set(f"rule/{map_name}", rule)

    @property
    def operating_point(self) -> str:
        """The preset a new run draws its mask with: ``model`` (the card's default) or a preset's name."""
        return self._get("operatingPoint", "model")

    @operating_point.setter
    def operating_point(self, value: str) -> None:
        if value not in OPERATING_POINT_CHOICES:
            raise SSAEError(f"operating point must be one of {', '.join(OPERATING_POINT_CHOICES)}, got {value!r}")
        self._set("operatingPoint", value)

    @property
    def results_card(self) -> dict:
        """The parts of the results' model card that re-draw their masks (operating points, post-processing)."""
        text = self._get("resultsCard")
        return json.loads(text) if text else {}

    @results_card.setter
    def results_card(self, value: dict) -> None:
        self._set("resultsCard", json.dumps(value, allow_nan=False))

    @property
    def min_lesion_mm3(self) -> float:
        return float(self._get("minLesionMm3", "10.0"))

    @min_lesion_mm3.setter
    def min_lesion_mm3(self, value: float) -> None:
        self._set("minLesionMm3", repr(float(value)))

    # node references ------------------------------------------------------------------------
    def _node(self, role: str):
        return self.node.GetNodeReference(role)

    def _set_node(self, role: str, node) -> None:
        new_id = node.GetID() if node else None
        if self.node.GetNodeReferenceID(role) != new_id:
            self.node.SetNodeReferenceID(role, new_id)

    input_volume = NodeReference("inputVolume")
    brain_mask = NodeReference("brainMask")
    segmentation = NodeReference("segmentation")
    statistics_table = NodeReference("statisticsTable")
    atlas_transform = NodeReference("atlasTransform")
    cohort_table = NodeReference("cohortTable")
    small_lesions = NodeReference("smallLesions")  # the run's small lesions beside the card map's voxel mask

    def result_volume(self, map_name: str):
        return self._node(f"{RESULT_VOLUME_ROLE}/{map_name}")

    def set_result_volume(self, map_name: str, node) -> None:
        self._set_node(f"{RESULT_VOLUME_ROLE}/{map_name}", node)

    def result_maps(self) -> list[str]:
        """Names of the maps with a result volume: aggregated, levels, prior, fused, flair."""
        names = []
        for index in range(self.node.GetNumberOfNodeReferenceRoles()):
            role = self.node.GetNthNodeReferenceRole(index)
            if role.startswith(RESULT_VOLUME_ROLE + "/") and self.node.GetNodeReference(role) is not None:
                names.append(role.split("/", 1)[1])
        return sorted(names, key=map_order)
