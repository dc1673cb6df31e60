"""kmatrix: boot kernels in QEMU across a matrix, as a pytest plugin.

What testcases need is importable from here, so a suite imports only `kmatrix`:

    from kmatrix import Cell, Guest, GuestSession, KernelArtifact, require_config

Names are loaded on first use, so `import kmatrix` costs nothing before the first boot.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "Cell": "kmatrix.config.specs",
    "CpuSpec": "kmatrix.config.specs",
    "DeviceProfile": "kmatrix.config.specs",
    "GpuStub": "kmatrix.config.specs",
    "KernelSpec": "kmatrix.config.specs",
    "Matrix": "kmatrix.config.specs",
    "QemuDevice": "kmatrix.config.specs",
    "fmt_size": "kmatrix.config.yamlnode",
    "load_matrix": "kmatrix.kernels.registry",
    "KernelArtifact": "kmatrix.kernels.artifact",
    "build_module": "kmatrix.kernels.extmod",
    "crash_module": "kmatrix.kernels.extmod",
    "Guest": "kmatrix.guest.guest",
    "GuestSession": "kmatrix.guest.session",
    "CommandResult": "kmatrix.guest.session",
    "CommandFailed": "kmatrix.guest.session",
    "require_config": "kmatrix.pytest.helpers",
    "KernelTests": "kmatrix.pytest.kerneltests",
    "needs_tools": "kmatrix.pytest.helpers",
    "not_applicable": "kmatrix.pytest.helpers",
    "NotApplicable": "kmatrix.pytest.helpers",
    "LogMark": "kmatrix.guest.logmark",
    "log_mark": "kmatrix.guest.logmark",
    "new_log": "kmatrix.guest.logmark",
    "Finding": "kmatrix.results.logparse",
    "parse_kernel_log": "kmatrix.results.logparse",
    "findings_summary": "kmatrix.results.logparse",
    "assert_no_findings": "kmatrix.results.findings",
    "KernelReportsFound": "kmatrix.results.findings",
    "KmatrixError": "kmatrix.errors",
    "base_modules": "kmatrix.guest.image",
    "qemu_layout": "kmatrix.vm.devices",
}

__all__ = [
    "Cell",
    "CommandFailed",
    "CommandResult",
    "CpuSpec",
    "DeviceProfile",
    "Finding",
    "GpuStub",
    "Guest",
    "GuestSession",
    "KernelArtifact",
    "KernelReportsFound",
    "KernelSpec",
    "KernelTests",
    "KmatrixError",
    "LogMark",
    "Matrix",
    "NotApplicable",
    "QemuDevice",
    "__version__",
    "assert_no_findings",
    "base_modules",
    "build_module",
    "crash_module",
    "findings_summary",
    "fmt_size",
    "load_matrix",
    "log_mark",
    "needs_tools",
    "new_log",
    "not_applicable",
    "parse_kernel_log",
    "qemu_layout",
    "require_config",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kmatrix' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from kmatrix.config.specs import (
        Cell,
        CpuSpec,
        DeviceProfile,
        GpuStub,
        KernelSpec,
        Matrix,
        QemuDevice,
    )
    from kmatrix.config.yamlnode import fmt_size
    from kmatrix.errors import KmatrixError
    from kmatrix.guest.guest import Guest
    from kmatrix.guest.image import base_modules
    from kmatrix.guest.logmark import LogMark, log_mark, new_log
    from kmatrix.guest.session import CommandFailed, CommandResult, GuestSession
    from kmatrix.kernels.artifact import KernelArtifact
    from kmatrix.kernels.extmod import build_module, crash_module
    from kmatrix.kernels.registry import load_matrix
    from kmatrix.pytest.helpers import NotApplicable, needs_tools, not_applicable, require_config
    from kmatrix.pytest.kerneltests import KernelTests
    from kmatrix.results.findings import KernelReportsFound, assert_no_findings
    from kmatrix.results.logparse import Finding, findings_summary, parse_kernel_log
    from kmatrix.vm.devices import qemu_layout
