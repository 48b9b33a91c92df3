"""The names of the score maps, one name for one thing in the engine, the files and Slicer.

* ``aggregated``: the residuals of all aggregated levels summed at full resolution (Eq. 6);
* ``level0``, ``level1``, ...: one pyramid level's residual (``level0`` is full resolution);
* ``prior``: ``aggregated`` where the hyper-intensity prior holds;
* ``fused``: ``aggregated`` times a power of the FLAIR intensity;
* ``flair``: the FLAIR intensity itself, the reference every model must beat.

Torch-free: the Slicer module names its nodes and segments with these before torch exists.
"""

from __future__ import annotations

COMBINED_MAPS = ("prior", "fused", "flair")


TITLES = {
    "aggregated": "aggregated",
    "prior": "with hyper-intensity prior",
    "fused": "fused with FLAIR",
    "flair": "FLAIR reference",
}


def level_map(level: int) -> str:
    return f"level{level}"


def is_map_name(name: str) -> bool:
    """``aggregated``, ``prior``, ``fused``, ``flair`` or ``levelK``."""
    return name == "aggregated" or name in COMBINED_MAPS or (name.startswith("level") and name[5:].isdigit())


def map_order(name: str) -> tuple[int, int]:
    """Sort key: aggregated, levels from the finest, then prior, fused, flair."""
    if name == "aggregated":
        return (0, 0)
    if name.startswith("level"):
        return (1, int(name[5:]))
    return (2, COMBINED_MAPS.index(name)) if name in COMBINED_MAPS else (3, 0)


def map_title(name: str, level_sizes: dict[str, int] | None = None) -> str:
    """``level1`` -> ``level 1 (64 px)``; ``prior`` -> ``with hyper-intensity prior``."""
    if name.startswith("level"):
        size = (level_sizes or {}).get(name)
        return f"level {int(name[5:])} ({size} px)" if size else f"level {int(name[5:])}"
    return TITLES.get(name, name)
