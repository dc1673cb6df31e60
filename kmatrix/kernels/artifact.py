"""Kernel artefacts: turn a matrix KernelSpec into a bootable, verified KernelArtifact.

Each kernel source kind (kmatrix.kernels.registry) makes its files exist; what follows is
common to all: the release is read from the image header itself and checked against the
matrix, the modules directory found, the config read, and an XZ/ZSTD/LZ4 kernel with a PVH
entry decompressed once so it can be booted directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kmatrix.config.specs import KernelSpec
from kmatrix.errors import ArtifactError
from kmatrix.host.cache import cache_root, ensure_file, stamped_digest
from kmatrix.host.paths import FileRefused, PathEscape, check_regular, confine, read_regular
from kmatrix.kernels import bzimage
from kmatrix.kernels.base import KernelFiles
from kmatrix.kernels.kconfig import parse_config
from kmatrix.kernels.registry import KINDS

if TYPE_CHECKING:
    from kmatrix.build.builder import BuiltKernel


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
    system_map: Path | None = None  # the kernel's symbol table, when it came with one

    def option(self, name: str) -> str | None:
        """A config option's value ('y', 'm', a string, a number), None when not set."""
        key = name if name.startswith("CONFIG_") else f"CONFIG_{name}"
        return self.config.get(key)

    def has(self, name: str) -> bool:
        return self.option(name) in ("y", "m")

    @property
    def config_known(self) -> bool:
        return bool(self.config)


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


MAX_CONFIG_BYTES = 16 << 20  # a full allyesconfig .config is ~0.4 MiB


def _inside(files: KernelFiles, path: Path | None, origin: str) -> Path | None:
    """path with its links resolved, refused when it leaves the artefact's root: a package
    whose vmlinuz or module tree is a link to a host file must not make it "the kernel"."""
    if path is None or files.root is None:
        return path
    root = files.root.resolve()
    try:
        return confine(root, path, "")
    except PathEscape as e:
        try:
            member = str(path.relative_to(files.root))
        except ValueError:
            member = str(path)
        raise ArtifactError(
            f"{origin}: {files.root_name or root}: member {member} leads to {e.target}, "
            "outside the artefact: refused"
        ) from None


def find_system_map(image: Path, release: str) -> Path | None:
    """System.map-<release> beside the image (distribution packages), or System.map in a
    directory above it (a build tree: arch/x86/boot/bzImage)."""
    candidates = [image.parent / f"System.map-{release}"]
    candidates += [d / "System.map" for d in list(image.parents)[:4]]
    return next((p for p in candidates if p.is_file()), None)


def resolve(spec: KernelSpec, direct_boot: bool = True) -> KernelArtifact:
    """Makes sure the kernel exists, reads its release and checks it against the matrix."""
    origin = f"{spec.origin} (kernel {spec.name})"
    try:
        kind = KINDS[spec.source]
    except KeyError:
        raise ArtifactError(
            f"{origin}: unknown kernel source kind {spec.source!r} (known: {', '.join(KINDS)})"
        ) from None
    files = kind.locate(spec, origin)
    image, config_path, modules_root, built = (
        _inside(files, files.image, origin),
        # What the matrix named itself (modules:, config:) is not the artefact's.
        files.config_path
        if files.config_path == spec.config
        else _inside(files, files.config_path, origin),
        files.modules_root
        if files.modules_root == spec.modules
        else _inside(files, files.modules_root, origin),
        files.build,
    )
    assert image is not None

    try:
        check_regular(image)
    except FileRefused as e:
        raise ArtifactError(f"{origin}: kernel image {e.reason}: {image}") from None
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
        if files.modules_root != spec.modules:
            modules_dir = _inside(files, modules_dir, origin)  # lib/modules/<release> too

    config: dict[str, str] = {}
    if config_path is not None:
        try:
            config = parse_config(
                read_regular(config_path, MAX_CONFIG_BYTES).decode(errors="replace")
            )
        except FileRefused as e:
            raise ArtifactError(f"{origin}: cannot read config: {e}") from None

    boot_image = image
    if direct_boot and (not config or config.get("CONFIG_PVH") == "y"):
        try:
            elf = extracted_vmlinux(info)
        except bzimage.KernelImageError as e:
            raise ArtifactError(f"{origin}: {e}") from None
        if elf is not None:
            boot_image = elf.path

    return KernelArtifact(
        system_map=find_system_map(image, info.release),
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
