"""The kernel source kinds kmatrix knows, registered in one place.

A new kind is one module with a class that implements kmatrix.kernels.base.SourceKind
(parse its matrix entry, locate its files) and one line here.
"""

from __future__ import annotations

from pathlib import Path

from kmatrix.config.matrix import load_matrix as _load_matrix
from kmatrix.config.specs import Matrix
from kmatrix.kernels.base import SourceKind
from kmatrix.kernels.deb import DebKind
from kmatrix.kernels.image import ImageKind
from kmatrix.kernels.pkg import PkgKind
from kmatrix.kernels.source import SourceBuildKind
from kmatrix.kernels.tree import TreeKind

KINDS: dict[str, SourceKind] = {
    k.name: k for k in (DebKind(), ImageKind(), TreeKind(), SourceBuildKind(), PkgKind())
}


def load_matrix(path: Path | str) -> Matrix:
    """Loads and validates a matrix file with every registered kernel source kind."""
    return _load_matrix(path, KINDS)
