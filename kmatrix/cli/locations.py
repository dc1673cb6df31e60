"""Where the commands find what they run: the directory's own testcases or the built-in ones."""

from __future__ import annotations

from pathlib import Path

from kmatrix.resources import data_dir


def testcase_dirs() -> list[Path]:
    """./testcases when there is one, else kmatrix's built-in suites (`kmatrix run` adds
    those with --kmatrix-builtin-suites: pytest finds the ini file of the repository from
    the paths it is given, so site-packages is not one of them)."""
    local = Path.cwd() / "testcases"
    return [local] if local.is_dir() else [data_dir("testcases")]
