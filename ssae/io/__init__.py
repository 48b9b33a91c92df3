"""Stage 1, files: reading and checking volumes, writing results that are never half-written,
finding the cases of a data set (folders, manifests, DICOM series), model files read without
PyTorch, the shipped resources, progress logs, and the one error type every stage raises.

May import: nothing else of ssae (the bottom of the stack). Free of PyTorch, so the Slicer
modules use it before PyTorch exists.
"""
