"""Which Slicer releases the extension supports, checked before anything else is imported.

The engine needs Python 3.10 or newer (``pyproject.toml``); Slicer ships Python 3.9.10 up to
5.8 and Python 3.12.10 from 5.10 on (``Slicer_REQUIRED_PYTHON_VERSION`` in Slicer's
CMakeLists.txt of each release tag). So the modules support **Slicer 5.10 and newer**; in an
older Slicer they show this module's message instead of failing with a traceback. This file must
stay importable by Python 3.9 (no newer syntax): it runs before the version is known to be good.
"""

MINIMUM_SLICER = (5, 10)
MINIMUM_PYTHON = (3, 10)


def unsupported_reason(python_version, slicer_version):
    """A message for the panel when this Slicer cannot run the extension, else None.

    ``python_version`` is ``sys.version_info`` (or a tuple), ``slicer_version`` (major, minor).
    """
    python = tuple(python_version[:2])
    slicer = tuple(slicer_version[:2])
    if python >= MINIMUM_PYTHON and slicer >= MINIMUM_SLICER:
        return None
    return (
        "SSAE needs 3D Slicer {}.{} or newer (Python {}.{}+); this is Slicer {}.{} with Python {}.{}. "
        "Install a current Slicer from https://download.slicer.org and the SSAE extension for it.".format(
            *MINIMUM_SLICER, *MINIMUM_PYTHON, *slicer, *python
        )
    )
