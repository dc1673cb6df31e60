"""`image:` kernels: a bzImage (or vmlinuz) file, with optional `modules:` and `config:`."""

from __future__ import annotations

from pathlib import Path

import yaml

from kmatrix.config.kinds import ParsedSource
from kmatrix.config.specs import KernelSpec
from kmatrix.config.yamlnode import NodeReader
from kmatrix.kernels.base import KernelFiles


class ImageKind:
    name = "image"
    exclusive: tuple[str, ...] = ()

    def parse(self, r: NodeReader, node: yaml.Node, key: str) -> ParsedSource:
        p = r.file(node, key)
        if not p.is_file():
            raise r.err(node, key, f"not a file: {p}")
        return ParsedSource(location=str(p))

    def locate(self, spec: KernelSpec, origin: str) -> KernelFiles:
        return KernelFiles(Path(spec.location), spec.config, spec.modules)
