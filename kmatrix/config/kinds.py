"""What the matrix loader needs from a kernel source kind: how to read its matrix entry.

The kinds themselves (deb, image, tree, build, pkg, ...) live in kmatrix.kernels, one
module each, and are handed to `load_matrix`; the loader never names one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import yaml

from kmatrix.config.specs import BuildSpec
from kmatrix.config.yamlnode import NodeReader


@dataclass(frozen=True)
class ParsedSource:
    location: str  # a package name or an absolute path
    identity: str = ""  # see KernelSpec.identity
    build: BuildSpec | None = None
    # The same kernel without (part of) its series, run beside it (see KernelSpec.baseline).
    baseline: BuildSpec | None = None
    baseline_label: str = ""


class KindParser(Protocol):
    @property
    def name(self) -> str:
        """The key a kernel entry uses for this kind (deb:, build:, ...)."""
        ...

    @property
    def exclusive(self) -> tuple[str, ...]:
        """Other keys of the kernel entry this kind provides itself (build: modules, config)."""
        ...

    def parse(self, r: NodeReader, node: yaml.Node, key: str) -> ParsedSource:
        """Reads the kind's value; MatrixError (via r.err) naming file, line and key."""
        ...
