"""Import pylidc 0.2.3 on current numpy and setuptools.

pylidc 0.2.3 (the latest release) imports ``pkg_resources`` (gone from recent
setuptools) and uses the aliases ``np.int`` and ``np.float`` removed in numpy
1.24. This module supplies a minimal ``pkg_resources.resource_filename`` when the
real one is missing and restores those two aliases only. ``np.bool`` is not
touched: numpy 2 has its own, and aliasing it breaks ``numpy.ma``.

Always ``from nodule.data.pylidc_compat import pylidc`` instead of ``import pylidc``.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import sys
import types

import numpy as np


def _install_pkg_resources_shim() -> None:
    if importlib.util.find_spec("pkg_resources") is not None or "pkg_resources" in sys.modules:
        return
    shim = types.ModuleType("pkg_resources")

    def resource_filename(package: str, resource: str) -> str:
        return str(importlib.resources.files(package).joinpath(resource))

    shim.resource_filename = resource_filename  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = shim


def _install_numpy_aliases() -> None:
    for name, value in (("int", int), ("float", float)):
        if name not in np.__dict__:
            setattr(np, name, value)


_install_pkg_resources_shim()
_install_numpy_aliases()

import pylidc  # noqa: E402

__all__ = ["pylidc"]
