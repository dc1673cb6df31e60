"""The guest image recipe: the base image, the tools disk's tree, tools replacing busybox
applets (as links into the mounted disk, or in the initramfs), data files riding along."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from kmatrix.errors import InfraError
from kmatrix.guest.datadisk import DiskPlan, stage_links, staged_tree
from kmatrix.guest.image import ModuleIndex, Recipe, _stage, load_recipe, tools_content


def test_default_recipe_has_the_suite_tools() -> None:
    recipe = load_recipe()
    names = {t.name for t in recipe.tools}
    assert {"stress-ng", "cyclictest", "hackbench", "chrt", "taskset", "lspci"} <= names
    assert Path("/usr/share/misc/pci.ids") in recipe.data


@pytest.mark.skipif(not Path("/usr/bin/taskset").is_file(), reason="util-linux taskset absent")
@pytest.mark.parametrize("attached", [True, False], ids=["disk", "initramfs"])
def test_tool_replaces_applet_and_data_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attached: bool
) -> None:
    monkeypatch.setenv("KMATRIX_CACHE", str(tmp_path / "cache"))
    recipe = Recipe(
        busybox=Path("/bin/busybox"),
        files=(),
        tools=(Path("/usr/bin/taskset"),),
        data=(Path("/usr/share/misc/pci.ids"),),
    )
    tree = staged_tree(tools_content(recipe))
    # The tools disk's tree: the real tool, its libraries and the data at their paths.
    assert (tree / "usr/bin/taskset").read_bytes() == Path("/usr/bin/taskset").read_bytes()
    assert (tree / "usr/share/misc/pci.ids").stat().st_size > 0
    assert any(tree.rglob("libc.so.6"))
    assert not (tree / "bin/busybox").exists()  # the base image's, not the disk's
    root = tmp_path / "root"
    kernel = SimpleNamespace(modules_dir=None, release="0.0-test")
    _stage(root, recipe, kernel, ModuleIndex({}, {}, frozenset()), [])  # type: ignore[arg-type]
    if attached:
        plan = DiskPlan("tools", tree, True, "erofs", "erofs", tmp_path / "img", ("erofs",))
    else:
        plan = DiskPlan("tools", tree, True, reason="no filesystem")
    stage_links(root, plan)
    taskset = root / "usr/bin/taskset"
    # busybox-static has a taskset applet at the same path; the real tool must win: a link
    # into the mounted disk, or the file itself when the tools ride in the initramfs.
    if attached:
        assert os.readlink(taskset) == "/usr/lib/kmatrix/disks/tools/usr/bin/taskset"
        assert (root / "usr/lib/kmatrix/disks/tools").is_dir()  # the mount point
        desc = "disk kmxro-tools erofs erofs\n"
    else:
        assert taskset.read_bytes() == Path("/usr/bin/taskset").read_bytes()
        assert (root / "usr/share/misc/pci.ids").stat().st_size > 0
        desc = "initramfs\n"
    assert (root / "etc/kmatrix/datadisks/tools").read_text() == desc
    assert (root / "bin/sh").is_symlink()  # the other applets stay
    assert (root / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()


def test_missing_data_file_is_one_clear_error(tmp_path: Path) -> None:
    shutil.copytree(Path(__file__).resolve().parent.parent / "images", tmp_path / "images")
    recipe = tmp_path / "images" / "recipe.yaml"
    recipe.write_text(recipe.read_text() + "  - /nonexistent/kmx.ids\n")
    with pytest.raises(InfraError, match=r"recipe.yaml: guest data file /nonexistent/kmx.ids"):
        load_recipe(tmp_path / "images")
