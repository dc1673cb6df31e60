"""Kernel artefacts: where a cell's kernel comes from (one module per source kind, registered
in kmatrix.kernels.registry) and the verified KernelArtifact every later stage uses."""

from kmatrix.kernels.artifact import KernelArtifact, resolve
from kmatrix.kernels.registry import KINDS, load_matrix

__all__ = ["KINDS", "KernelArtifact", "load_matrix", "resolve"]
