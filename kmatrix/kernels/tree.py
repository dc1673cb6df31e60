"""`tree:` kernels: a kernel build tree (arch/x86/boot/bzImage, and .config when present)."""

from __future__ import annotations

from pathlib import Path

import yaml

from kmatrix.config.kinds import ParsedSource
from kmatrix.config.specs import KernelSpec
from kmatrix.config.yamlnode import NodeReader
from kmatrix.kernels.base import KernelFiles

BZIMAGE = "arch/x86/boot/bzImage"


class TreeKind:
    name = "tree"
    exclusive: tuple[str, ...] = ()

    def parse(self, r: NodeReader, node: yaml.Node, key: str) -> ParsedSource:
        p = r.file(node, key)
        if not (p / BZIMAGE).is_file():
            raise r.err(node, key, f"no {BZIMAGE} in build tree {p}")
        return ParsedSource(location=str(p))

    def locate(self, spec: KernelSpec, origin: str) -> KernelFiles:
        tree = Path(spec.location)
        config_path = spec.config
        if config_path is None and (tree / ".config").is_file():
            config_path = tree / ".config"
        return KernelFiles(
            tree / BZIMAGE, config_path, spec.modules, root=tree, root_name=f"build tree {tree}"
        )
