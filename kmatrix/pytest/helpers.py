"""Helpers for testcases, exported as kmatrix.require_config and friends."""

from __future__ import annotations

import pytest

from kmatrix.kernels.artifact import KernelArtifact
from kmatrix.pytest.applicability import NotApplicable, not_applicable

__all__ = ["NotApplicable", "not_applicable", "require_config"]


def require_config(kernel: KernelArtifact, *options: str) -> None:
    """Not applicable, naming the option, when the kernel's config lacks any of options (=y
    or =m); a skip when the config is unknown (it could not be told). Before the boot, the
    kmatrix_config marker decides the same without booting."""
    if not kernel.config_known:
        pytest.skip(f"{kernel.name}: kernel config unknown, cannot tell whether {options} are set")
    missing = [o for o in options if not kernel.has(o)]
    if missing:
        not_applicable(
            f"{kernel.name} ({kernel.release}) lacks "
            + ", ".join(f"CONFIG_{o.removeprefix('CONFIG_')}" for o in missing)
        )


# The suite tools (stress-ng, rt-tests, util-linux, pciutils, kmx-vfio: images/recipe.yaml)
# live on the `tools` data disk: a test that runs them says so, and its cell gets the disk
# attached and mounted before the test (cells whose tests need none boot without it).
needs_tools = pytest.mark.kmatrix_disk("tools")
