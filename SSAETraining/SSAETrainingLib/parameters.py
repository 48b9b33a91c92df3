"""SSAETraining's panel state in a parameter node, so a saved scene remembers the last setup."""

from __future__ import annotations

from dataclasses import fields

from SSAEAnomalyLib.parameters import module_parameter_node

from .training_job import TrainingRequest

MODULE_NAME = "SSAETraining"


def parameter_node(scene):
    return module_parameter_node(scene, MODULE_NAME)


def save_request(node, request: TrainingRequest) -> None:
    for f in fields(TrainingRequest):
        node.SetParameter(f.name, str(getattr(request, f.name)))


def load_request(node) -> TrainingRequest:
    """The stored request (defaults where nothing was stored yet)."""
    values = {}
    for f in fields(TrainingRequest):
        text = node.GetParameter(f.name)
        if not text:
            continue
        default = getattr(TrainingRequest("", ""), f.name)
        values[f.name] = (text == "True") if isinstance(default, bool) else type(default)(text)
    return TrainingRequest(**{"data_folder": "", "output": "", **values})
