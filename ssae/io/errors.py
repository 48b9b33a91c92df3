"""The one exception type that means "the user gave us something we cannot use".

Everything the engine refuses on purpose (bad images, foreign checkpoints, existing output
files, ...) raises :class:`SSAEError` with a message meant for a person. The command line turns
it into a one-line error and exit code 2; the Slicer modules show it in a message box. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class SSAEError(Exception):
    """A problem with the user's input, explained in one sentence."""


class TrainingInterrupted(SSAEError):
    """Training stopped early on request (Ctrl-C, SIGTERM, a GUI's Cancel); state was saved."""
