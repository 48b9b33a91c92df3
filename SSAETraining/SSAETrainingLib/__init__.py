"""SSAETraining's logic without Qt: the ``ssae train`` call, its progress, the panel's state."""

from .parameters import load_request, parameter_node, save_request
from .training_job import RUNNING, TrainingJob, TrainingProgress, TrainingRequest, start_training

__all__ = [
    "RUNNING",
    "TrainingJob",
    "TrainingProgress",
    "TrainingRequest",
    "load_request",
    "parameter_node",
    "save_request",
    "start_training",
]
