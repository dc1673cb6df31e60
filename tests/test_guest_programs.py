"""Guest programs: recipe `programs:` parsing, static compilation with caching, and the
kmx-vfio output protocol as far as a host without vfio-pci devices can check it."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from kmatrix.errors import ArtifactError, MatrixError
from kmatrix.guest.datadisk import DiskPlan, stage_links, staged_tree
from kmatrix.guest.image import (
    ModuleIndex,
    Recipe,
    _stage,
    compile_program,
    load_recipe,
    tools_content,
)
from kmatrix.resources import data_dir

IMAGES_DIR = data_dir("images")
VFIO_SRC = IMAGES_DIR / "programs" / "kmx-vfio.c"
needs_compiler = pytest.mark.skipif(
    shutil.which("musl-gcc") is None or not Path("/usr/include/linux/vfio.h").is_file(),
    reason="musl-gcc or linux-libc-dev absent: run `kmatrix setup`",
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KMATRIX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _images(tmp_path: Path, programs: str) -> Path:
    """A copy of images/ whose recipe has the given programs: section instead of its own."""
    images = tmp_path / "images"
    shutil.copytree(IMAGES_DIR, images)
    recipe = images / "recipe.yaml"
    lines = recipe.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("programs:"))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
    recipe.write_text("".join(lines[:start]) + programs + "".join(lines[end:]))
    return images


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def _has_pt_interp(binary: Path) -> bool:
    """Whether an ELF64 file asks for a dynamic loader (a PT_INTERP program header)."""
    data = binary.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, f"{binary} is not ELF64"
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    assert 1 in types, "no PT_LOAD: the header walk is wrong"  # so the check can fail
    return 3 in types  # PT_INTERP


def test_default_recipe_ships_kmx_vfio() -> None:
    recipe = load_recipe()
    assert (VFIO_SRC, "/usr/bin/kmx-vfio") in recipe.programs


@pytest.mark.parametrize(
    ("programs", "bad", "key", "message"),
    [
        (
            "programs:\n  usr/bin/x: programs/kmx-vfio.c\n",
            "usr/bin/x",
            "programs.usr/bin/x",
            "must be absolute",
        ),
        (
            "programs:\n  /usr/bin/../x: programs/kmx-vfio.c\n",
            "/usr/bin/../x",
            "programs./usr/bin/../x",
            "normalised",
        ),
        (
            "programs:\n  /usr/bin/x: programs/nope.c\n",
            "nope.c",
            "programs./usr/bin/x",
            "not found",
        ),
        (
            "programs:\n  /usr/bin/x: init.sh\n",
            ": init.sh",
            "programs./usr/bin/x",
            "not a C source",
        ),
        ("programs:\n  /usr/bin/x: [a]\n", "[a]", "programs./usr/bin/x", "non-empty string"),
        ("programs:\n  - programs/kmx-vfio.c\n", "- programs", "programs", "expected a mapping"),
        ("program:\n  /usr/bin/x: programs/kmx-vfio.c\n", "program:", "program", "unknown key"),
    ],
)
def test_bad_programs_entry_names_file_line_and_key(
    tmp_path: Path, programs: str, bad: str, key: str, message: str
) -> None:
    images = _images(tmp_path, programs)
    recipe = images / "recipe.yaml"
    with pytest.raises(MatrixError) as e:
        load_recipe(images)
    assert (e.value.path, e.value.line, e.value.key) == (str(recipe), _line_of(recipe, bad), key)
    assert message in e.value.message
    assert str(e.value).startswith(f"{recipe}:{_line_of(recipe, bad)}: {key}: ")


def test_empty_programs_section_is_allowed(tmp_path: Path) -> None:
    assert load_recipe(_images(tmp_path, "programs:\n")).programs == ()


def test_source_change_changes_the_image_digest(tmp_path: Path) -> None:
    images = _images(tmp_path, "programs:\n  /usr/bin/kmx-vfio: programs/kmx-vfio.c\n")
    before = load_recipe(images).digest()
    src = images / "programs" / "kmx-vfio.c"
    src.write_text(src.read_text() + "\n/* changed */\n")
    assert load_recipe(images).digest() != before


@needs_compiler
def test_kmx_vfio_compiles_static_once_and_speaks_the_protocol(cache: Path) -> None:
    binary = compile_program(VFIO_SRC)
    assert binary.is_relative_to(cache)
    assert not _has_pt_interp(binary)
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr
    # Cached: the same entry, not rebuilt (a rebuild would replace the inode).
    inode = binary.stat().st_ino
    assert compile_program(VFIO_SRC) == binary and binary.stat().st_ino == inode

    usage = subprocess.run([str(binary)], capture_output=True, text=True, check=False)
    assert (usage.returncode, usage.stdout) == (2, usage.stderr)
    assert usage.stdout.startswith("error=usage: ")
    # No such device: the first step fails, with its own exit code and the errno text.
    gone = subprocess.run(
        [str(binary), "ffff:ff:1f.7", "2"], capture_output=True, text=True, check=False
    )
    assert gone.returncode == 10
    assert gone.stdout == (
        "error=group: /sys/bus/pci/devices/ffff:ff:1f.7/iommu_group: No such file or directory\n"
    )


@needs_compiler
def test_program_replaces_an_applet_in_the_image(tmp_path: Path, cache: Path) -> None:
    recipe = Recipe(
        busybox=Path("/bin/busybox"), files=(), tools=(), programs=((VFIO_SRC, "/bin/ls"),)
    )
    kernel = SimpleNamespace(modules_dir=None, release="0.0-test")
    _stage(tmp_path, recipe, kernel, ModuleIndex({}, {}, frozenset()), [])  # type: ignore[arg-type]
    # A kernel that cannot mount the tools disk gets its tree in the initramfs.
    stage_links(tmp_path, DiskPlan("tools", staged_tree(tools_content(recipe)), True))
    target = tmp_path / "bin/ls"
    assert not target.is_symlink() and target.stat().st_mode & 0o111
    assert target.read_bytes() == compile_program(VFIO_SRC).read_bytes()
    # The applet link was replaced, not followed: busybox itself is intact.
    assert (tmp_path / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()


@needs_compiler
def test_source_that_does_not_compile_names_the_file_and_gcc_message(
    tmp_path: Path, cache: Path
) -> None:
    src = tmp_path / "broken.c"
    src.write_text("int main(void) { return undeclared_thing; }\n")
    with pytest.raises(ArtifactError) as e:
        compile_program(src)
    assert f"compiling guest program {src}" in str(e.value)
    assert "undeclared_thing" in str(e.value) and "error" in str(e.value)
    assert not any((cache / "programs").glob("broken-*"))  # nothing half-built is kept
    # -Werror: a warning is a failure too.
    src.write_text("int main(void) { int unused; return 0; }\n")
    with pytest.raises(ArtifactError, match="unused"):
        compile_program(src)
