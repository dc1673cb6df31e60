"""`deb:` kernels: a Debian kernel package, by name (fetched with `apt-get download`) or as a
.deb file; unpacked into the cache, never installed. depmod makes its module index."""

from __future__ import annotations

from pathlib import Path

import yaml

from kmatrix.config.kinds import ParsedSource
from kmatrix.config.specs import KernelSpec
from kmatrix.config.yamlnode import NodeReader
from kmatrix.host.cache import cache_root, ensure_dir, stamped_digest
from kmatrix.host.debian import fetch_deb, run_apt_tool
from kmatrix.kernels.base import DEB_NAME_RE, KernelFiles, check_members, one


def unpack_deb(deb: Path, origin: str) -> Path:
    dest = cache_root() / "kernels" / f"deb-{stamped_digest(deb)[:20]}"

    def build(tmp: Path) -> None:
        run_apt_tool(["dpkg-deb", "-x", str(deb), str(tmp)], tmp, f"{origin}: unpacking {deb.name}")
        check_members(tmp, f"{origin}: package {deb.name}")
        # Debian packages leave modules.dep to depmod at install time; make it here.
        for mdir in sorted((tmp / "lib" / "modules").glob("*")):
            run_apt_tool(
                ["depmod", "-b", str(tmp), mdir.name], tmp, f"{origin}: depmod {mdir.name}"
            )

    return ensure_dir(dest, build)


class DebKind:
    name = "deb"
    exclusive: tuple[str, ...] = ()

    def parse(self, r: NodeReader, node: yaml.Node, key: str) -> ParsedSource:
        raw = r.string(node, key)
        if raw.endswith(".deb") or "/" in raw:
            path = r.file(node, key)
            return ParsedSource(location=str(path), identity=path.name)
        if DEB_NAME_RE.match(raw):
            return ParsedSource(location=raw, identity=raw)
        raise r.err(node, key, f"{raw!r} is neither a .deb file nor a package name")

    def locate(self, spec: KernelSpec, origin: str) -> KernelFiles:
        deb = Path(spec.location) if spec.location.endswith(".deb") else None
        if deb is None:
            deb = fetch_deb(spec.location, origin)
        root = unpack_deb(deb, origin)
        image = one(sorted((root / "boot").glob("vmlinuz-*")), "boot/vmlinuz-*", origin)
        config_path = spec.config
        if config_path is None:
            configs = sorted((root / "boot").glob("config-*"))
            config_path = configs[0] if configs else None
        modules_root = spec.modules if spec.modules is not None else root / "lib" / "modules"
        return KernelFiles(
            image=image,
            config_path=config_path,
            modules_root=modules_root,
            root=root,
            root_name=f"package {deb.name}",
        )
