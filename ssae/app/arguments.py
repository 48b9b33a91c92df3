"""Argument types for the command line: every number is checked where it is parsed.

argparse turns the ``ValueError`` / ``ArgumentTypeError`` raised here into a one-line usage
error (exit code 2) before any work starts, so ``--batch-size -1`` or ``--lr nan`` can never
reach the engine.
"""

from __future__ import annotations

import argparse
import math


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    value = nonnegative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def odd_size(text: str) -> int:
    value = positive_int(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"{value} must be odd (1 disables the filter)")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def nonnegative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def fraction(text: str) -> float:
    value = _number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} must lie strictly between 0 and 1")
    return value


def percentile(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"{text} must lie between 0 and 100")
    return value


def clip_value(text: str) -> float | None:
    """An upper clip of normalised intensities (at least 1), or ``none``."""
    if text.strip().lower() == "none":
        return None
    value = _number(text)
    if value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1 (the 98th percentile maps to 1), or 'none'")
    return value


def progress_log_path(text: str):
    """A JSON-lines file to append to: its folder must exist, and it must not be a folder itself."""
    from pathlib import Path

    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file to append progress events to")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder of {text} does not exist")
    return path
