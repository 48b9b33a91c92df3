"""SSAEAnomaly's scene adapters: everything but the widgets, testable on a bare MRML scene."""

from .logic import AnomalyLogic, DetectionJob, show_in_slice_views
from .parameters import AnomalyParameters
from .volumes import image_from_volume_node, update_volume_node_from_image

__all__ = [
    "AnomalyLogic",
    "AnomalyParameters",
    "DetectionJob",
    "image_from_volume_node",
    "show_in_slice_views",
    "update_volume_node_from_image",
]
