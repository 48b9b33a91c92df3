"""Stage 6, making and calibrating models: the cached slice stacks, the training configuration,
the stage-wise trainer (DDP, resume), calibration on healthy subjects (thresholds, healthy tails,
operating points), site adaptation, and the defaults every user gets with their evidence.

May import: ssae.io, ssae.preprocessing, ssae.scoring, ssae.models, ssae.detection.
"""
