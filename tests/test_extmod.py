"""Out-of-tree modules built against a matrix kernel (kmatrix.kernels.extmod)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kmatrix.build.builder import BuiltKernel
from kmatrix.config.specs import KernelSpec
from kmatrix.errors import ArtifactError
from kmatrix.kernels import extmod
from kmatrix.kernels.artifact import KernelArtifact, resolve
from kmatrix.kernels.extmod import _module_name, _redirect, build_module, crash_module


def test_unpacked_headers_point_into_their_own_tree(tmp_path: Path) -> None:
    """Debian's headers packages point at /usr/src and /usr/lib: after unpacking into a
    temporary directory that becomes `final`, they must point into `final`."""
    tmp, final = tmp_path / "tmp", tmp_path / "final"
    flavour = tmp / "usr/src/linux-headers-6.1.0-1-amd64"
    common = tmp / "usr/src/linux-headers-6.1.0-1-common"
    kbuild = tmp / "usr/lib/linux-kbuild-6.1/scripts"
    for d in (flavour, common, kbuild, tmp / "lib/modules/6.1.0-1-amd64"):
        d.mkdir(parents=True)
    (flavour / "Makefile").write_text(
        "include /usr/src/linux-headers-6.1.0-1-common/Makefile\noverride ARCH = x86\n"
    )
    (flavour / "scripts").symlink_to("../../lib/linux-kbuild-6.1/scripts")
    (tmp / "lib/modules/6.1.0-1-amd64/build").symlink_to("/usr/src/linux-headers-6.1.0-1-amd64")
    _redirect(tmp, final)
    assert (flavour / "Makefile").read_text().splitlines()[0] == (
        f"include {final}/usr/src/linux-headers-6.1.0-1-common/Makefile"
    )
    build = tmp / "lib/modules/6.1.0-1-amd64/build"
    assert not os.readlink(build).startswith("/")
    assert build.resolve() == flavour.resolve()
    assert (flavour / "scripts").resolve() == kbuild.resolve()  # relative ones stay


def test_module_name_comes_from_kbuild(tmp_path: Path) -> None:
    (tmp_path / "Kbuild").write_text("# x\nobj-m := hello.o\n")
    assert _module_name(tmp_path) == "hello"
    (tmp_path / "Kbuild").write_text("ccflags-y := -O2\n")
    with pytest.raises(ArtifactError, match="obj-m"):
        _module_name(tmp_path)


def test_a_kernel_without_build_files_is_an_artifact_error(tmp_path: Path) -> None:
    spec = KernelSpec(name="img", source="image", location=str(tmp_path / "bzImage"))
    kernel = KernelArtifact(
        name="img", image=tmp_path, boot_image=tmp_path, release="6.1.0", version_string="",
        config_path=None, modules_dir=None, config={"CONFIG_MODULES": "y"},
    )  # fmt: skip
    with pytest.raises(ArtifactError, match="cannot build modules for a 'image' kernel"):
        extmod.build_files(kernel, spec)
    nomod = KernelArtifact(**{**kernel.__dict__, "config": {"CONFIG_MODULES": "n"}})
    with pytest.raises(ArtifactError, match="no module support"):
        extmod.build_files(nomod, spec)


def test_crash_module_builds_against_debian_headers_and_is_cached(
    cloud61: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built against linux-headers-6.1.0-57-cloud-amd64 and its linux-headers-*-common and
    linux-kbuild-6.1 dependencies (apt-get download, unpacked, never installed)."""
    spec = cloud61.kernel  # type: ignore[attr-defined]
    kernel = resolve(spec)
    ko = crash_module(kernel, spec)
    vermagic = subprocess.run(
        ["modinfo", "-F", "vermagic", str(ko)], capture_output=True, text=True, check=True
    ).stdout
    assert vermagic.startswith(f"{kernel.release} SMP")
    # The same inputs: the cached .ko, make is not run.
    monkeypatch.setattr(extmod, "_make", lambda *a: pytest.fail("make ran again"))
    assert crash_module(kernel, spec) == ko


def test_a_compile_error_names_the_compiler_output(cloud61: object, tmp_path: Path) -> None:
    spec = cloud61.kernel  # type: ignore[attr-defined]
    (tmp_path / "Kbuild").write_text("obj-m := broken.o\n")
    (tmp_path / "broken.c").write_text("#include <linux/module.h>\nint x = not_declared;\n")
    with pytest.raises(ArtifactError, match="not_declared"):
        build_module(resolve(spec), spec, tmp_path)


def test_source_builds_use_their_cached_source_and_object_trees(tmp_path: Path) -> None:
    built = BuiltKernel(
        key="k123", directory=tmp_path, image=tmp_path / "out/arch/x86/boot/bzImage",
        config_path=tmp_path / "out/.config", modules_root=None, log=tmp_path / "build.log",
        source="linux-source-6.1", version="6.1.192",
    )  # fmt: skip
    kernel = KernelArtifact(
        name="b", image=built.image, boot_image=built.image, release="6.1.192",
        version_string="", config_path=built.config_path, modules_dir=None,
        config={"CONFIG_MODULES": "y"}, build=built,
    )  # fmt: skip
    files = extmod.build_files(kernel, KernelSpec(name="b", source="build", location="x"))
    assert (files.make_dir, files.obj_dir, files.identity) == (
        tmp_path / "src", tmp_path / "out", "k123",
    )  # fmt: skip
