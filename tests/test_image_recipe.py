"""The guest image recipe: tools replace busybox applets, data files ride along."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from kmatrix.errors import InfraError
from kmatrix.guest.image import ModuleIndex, Recipe, _stage, load_recipe


def test_default_recipe_has_the_suite_tools() -> None:
    recipe = load_recipe()
    names = {t.name for t in recipe.tools}
    assert {"stress-ng", "cyclictest", "hackbench", "chrt", "taskset", "lspci"} <= names
    assert Path("/usr/share/misc/pci.ids") in recipe.data


@pytest.mark.skipif(not Path("/usr/bin/taskset").is_file(), reason="util-linux taskset absent")
def test_tool_replaces_applet_and_data_is_copied(tmp_path: Path) -> None:
    recipe = Recipe(
        busybox=Path("/bin/busybox"),
        files=(),
        tools=(Path("/usr/bin/taskset"),),
        data=(Path("/usr/share/misc/pci.ids"),),
    )
    kernel = SimpleNamespace(modules_dir=None, release="0.0-test")
    _stage(tmp_path, recipe, kernel, ModuleIndex({}, {}, frozenset()), [])  # type: ignore[arg-type]
    taskset = tmp_path / "usr/bin/taskset"
    # busybox-static has a taskset applet at the same path; the real tool must win.
    assert not taskset.is_symlink()
    assert taskset.read_bytes() == Path("/usr/bin/taskset").read_bytes()
    assert (tmp_path / "usr/share/misc/pci.ids").stat().st_size > 0
    assert any((tmp_path / "lib").rglob("libc.so.6")) or any((tmp_path / "usr").rglob("libc.so.6"))
    assert (tmp_path / "bin/sh").is_symlink()  # the other applets stay


def test_missing_data_file_is_one_clear_error(tmp_path: Path) -> None:
    shutil.copytree(Path(__file__).resolve().parent.parent / "images", tmp_path / "images")
    recipe = tmp_path / "images" / "recipe.yaml"
    recipe.write_text(recipe.read_text() + "  - /nonexistent/kmx.ids\n")
    with pytest.raises(InfraError, match=r"recipe.yaml: guest data file /nonexistent/kmx.ids"):
        load_recipe(tmp_path / "images")
