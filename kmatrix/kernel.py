"""Kernel artefacts: turn a matrix KernelSpec into a bootable, verified KernelArtifact.

Sources: a bzImage path (with optional modules and config), a Debian kernel package (a .deb
or a package name fetched with `apt-get download`, unpacked into the cache and never
installed), a kernel build tree, or a build from source with patches (kmatrix.build). The
release is read from the image header itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kmatrix import bzimage
from kmatrix.cache import cache_root, ensure_dir, ensure_file, locked, stamped_digest
from kmatrix.errors import ArtifactError
from kmatrix.hostsetup import run_tool
from kmatrix.matrix import KernelSpec

if TYPE_CHECKING:
    from kmatrix.build import BuiltKernel

APT_TIMEOUT = 600.0


@dataclass(frozen=True)
class KernelArtifact:
    name: str
    image: Path  # the kernel image as given (bzImage / vmlinuz)
    boot_image: Path  # what QEMU boots: an extracted PVH vmlinux, or the image itself
    release: str
    version_string: str
    config_path: Path | None
    modules_dir: Path | None  # .../lib/modules/<release>
    config: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    build: BuiltKernel | None = field(default=None, compare=False, hash=False)  # source builds

    def option(self, name: str) -> str | None:
        """A config option's value ('y', 'm', a string, a number), None when not set."""
        key = name if name.startswith("CONFIG_") else f"CONFIG_{name}"
        return self.config.get(key)

    def has(self, name: str) -> bool:
        return self.option(name) in ("y", "m")

    @property
    def config_known(self) -> bool:
        return bool(self.config)


def parse_config(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def _run(argv: list[str], cwd: Path, what: str, timeout: float = APT_TIMEOUT) -> str:
    return run_tool(argv, what, cwd=cwd, timeout=timeout)


def fetch_deb(package: str, origin: str) -> Path:
    """Downloads a Debian package into the cache (once) and returns the .deb path."""
    debs = cache_root() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    with locked(debs / package):
        found = sorted(debs.glob(f"{package}_*.deb"))
        if found:
            return found[-1]
        try:
            _run(["apt-get", "download", package], debs, f"{origin}: fetching {package}")
        except ArtifactError as e:
            raise ArtifactError(
                f"{e} (is the name right? `apt-cache policy {package}`; "
                "a fresh machine needs `apt-get update` first)"
            ) from None
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            raise ArtifactError(f"{origin}: apt-get download {package} produced no .deb")
        return found[-1]


def unpack_deb(deb: Path, origin: str) -> Path:
    dest = cache_root() / "kernels" / f"deb-{stamped_digest(deb)[:20]}"

    def build(tmp: Path) -> None:
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], tmp, f"{origin}: unpacking {deb.name}")
        # Debian packages leave modules.dep to depmod at install time; make it here.
        for mdir in sorted((tmp / "lib" / "modules").glob("*")):
            _run(["depmod", "-b", str(tmp), mdir.name], tmp, f"{origin}: depmod {mdir.name}")

    return ensure_dir(dest, build)


def _one(paths: list[Path], what: str, origin: str) -> Path:
    if len(paths) != 1:
        names = ", ".join(p.name for p in paths) or "none"
        raise ArtifactError(f"{origin}: expected one {what}, found {names}")
    return paths[0]


def extracted_vmlinux(info: bzimage.KernelImageInfo) -> bzimage.KernelImageInfo | None:
    """The image's vmlinux, decompressed once into the cache, if it has a PVH entry.

    Under TCG, decompressing an XZ/ZSTD kernel dominates boot time; booting the ELF directly
    through its PVH entry skips that. Kernels without PVH fall back to the bzImage.
    """
    if info.kind != "bzimage" or info.compression is None:
        return None
    dest = cache_root() / "vmlinux" / f"{stamped_digest(info.path)[:24]}.elf"
    dest.parent.mkdir(parents=True, exist_ok=True)
    ensure_file(dest, lambda tmp: bzimage.extract_vmlinux(info, tmp))
    elf = bzimage.read_kernel_image(dest)
    return elf if elf.pvh else None


def resolve(spec: KernelSpec, direct_boot: bool = True) -> KernelArtifact:
    """Makes sure the kernel exists, reads its release and checks it against the matrix."""
    origin = f"{spec.origin} (kernel {spec.name})"
    config_path = spec.config
    modules_root = spec.modules
    built: BuiltKernel | None = None
    if spec.source == "deb":
        deb = Path(spec.location) if spec.location.endswith(".deb") else None
        if deb is None:
            deb = fetch_deb(spec.location, origin)
        root = unpack_deb(deb, origin)
        image = _one(sorted((root / "boot").glob("vmlinuz-*")), "boot/vmlinuz-*", origin)
        if config_path is None:
            configs = sorted((root / "boot").glob("config-*"))
            config_path = configs[0] if configs else None
        if modules_root is None:
            modules_root = root / "lib" / "modules"
    elif spec.source == "build":
        from kmatrix.build import build_kernel  # the builder imports the matrix types too

        assert spec.build is not None
        built = build_kernel(spec.build, origin)
        image = built.image
        config_path = built.config_path
        modules_root = built.modules_root
    elif spec.source == "tree":
        tree = Path(spec.location)
        image = tree / "arch/x86/boot/bzImage"
        if config_path is None and (tree / ".config").is_file():
            config_path = tree / ".config"
    else:
        image = Path(spec.location)

    if not image.is_file():
        raise ArtifactError(f"{origin}: kernel image not found: {image}")
    try:
        info = bzimage.read_kernel_image(image)
    except bzimage.KernelImageError as e:
        raise ArtifactError(f"{origin}: {e}") from None
    if spec.release is not None and spec.release != info.release:
        raise ArtifactError(
            f"{origin}: the matrix declares release {spec.release!r} but {image} "
            f"is {info.release!r}"
        )

    modules_dir = None
    if modules_root is not None:
        # Accept either lib/modules or lib/modules/<release>.
        if (modules_root / info.release).is_dir():
            modules_dir = modules_root / info.release
        elif (modules_root / "modules.dep").is_file() or modules_root.name == info.release:
            modules_dir = modules_root
            if modules_root.name != info.release and (modules_root / "modules.dep").is_file():
                raise ArtifactError(
                    f"{origin}: modules directory {modules_root} is for "
                    f"{modules_root.name!r}, the kernel is {info.release!r}"
                )
        else:
            raise ArtifactError(f"{origin}: no modules for {info.release} under {modules_root}")

    config: dict[str, str] = {}
    if config_path is not None:
        try:
            config = parse_config(config_path.read_text(errors="replace"))
        except OSError as e:
            raise ArtifactError(f"{origin}: cannot read config {config_path}: {e}") from None

    boot_image = image
    if direct_boot and (not config or config.get("CONFIG_PVH") == "y"):
        try:
            elf = extracted_vmlinux(info)
        except bzimage.KernelImageError as e:
            raise ArtifactError(f"{origin}: {e}") from None
        if elf is not None:
            boot_image = elf.path

    return KernelArtifact(
        build=built,
        name=spec.name,
        image=image,
        boot_image=boot_image,
        release=info.release,
        version_string=info.version_string,
        config_path=config_path,
        modules_dir=modules_dir,
        config=config,
    )
