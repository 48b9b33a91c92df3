"""SSAEAnomaly's scene adapters: everything but the widgets, testable on a bare MRML scene.

Nothing here imports PyTorch: a factory Slicer shows the module's panel (and its offer to
install the engine's packages) before PyTorch exists.
"""

from .followup import ComparisonJob, FollowupLogic
from .jobs import DetectionJob, JobInputs, ScanInput
from .logic import AnomalyLogic
from .parameters import AnomalyParameters
from .scene_results import show_in_slice_views
from .volumes import image_from_volume_node, update_volume_node_from_image

__all__ = [
    "AnomalyLogic",
    "AnomalyParameters",
    "ComparisonJob",
    "DetectionJob",
    "FollowupLogic",
    "JobInputs",
    "ScanInput",
    "image_from_volume_node",
    "show_in_slice_views",
    "update_volume_node_from_image",
]
