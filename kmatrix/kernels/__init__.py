"""Kernel artefacts: where a cell's kernel comes from (one module per source kind, registered
in kmatrix.kernels.registry) and the verified KernelArtifact every later stage uses.

Names load on first use: importing a submodule (bzimage, kconfig) must not pull in every
source kind, and the build kind brings the kernel builder and the mail parser with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["KINDS", "KernelArtifact", "load_matrix", "resolve"]

_EXPORTS = {
    "KernelArtifact": "kmatrix.kernels.artifact",
    "resolve": "kmatrix.kernels.artifact",
    "KINDS": "kmatrix.kernels.registry",
    "load_matrix": "kmatrix.kernels.registry",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kmatrix.kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:
    from kmatrix.kernels.artifact import KernelArtifact, resolve
    from kmatrix.kernels.registry import KINDS, load_matrix
