"""The error tree. Every error says what was wrong and where, in one line a user can act on.

InputError and its children mean the user's input is bad: nothing is booted and nothing is
retried. InfraError means the harness or host failed (never blamed on the kernel).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class KmatrixError(Exception):
    """Base of every error kmatrix raises on purpose."""


class BuildFailure(KmatrixError):
    """The kernel did not build from its inputs (a patch conflicts, the compiler failed).

    A kernel failure: its cells fail, not error. Carries the first compiler error and the log.
    Defined here, not in kmatrix.build, so the plugin need not import the builder (and its
    patch and mail parsing, ~15 ms) before the first boot.
    """

    def __init__(self, message: str, log: Path | None = None, first_error: str = "") -> None:
        self.log = log
        self.first_error = first_error
        super().__init__(message)


class InputError(KmatrixError):
    """Bad input from the user: a matrix, a kernel file, a profile. Never retried."""


class MatrixError(InputError):
    """A matrix or device-profile file is malformed; names file, line and key."""

    def __init__(self, path: Path | str, line: int | None, key: str | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.key = key
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"{key}: {message}" if key else message
        super().__init__(f"{where}: {what}")


class ArtifactError(InputError):
    """A kernel or image artefact cannot be obtained or is not what the matrix says."""


class HostDeviceUnavailable(KmatrixError):
    """A host device a profile passes through cannot be used here (no IOMMU, wrong driver, a
    group that is not viable). Checked before anything boots; its cells are skipped."""


class InfraError(KmatrixError):
    """The host or the harness failed; the kernel is not to blame. May be retried."""


class VMError(InfraError):
    """QEMU failed to start or died; carries the command line, exit code and output."""

    def __init__(
        self,
        message: str,
        argv: Sequence[str] = (),
        exitcode: int | None = None,
        output: str = "",
    ) -> None:
        self.argv = list(argv)
        self.exitcode = exitcode
        self.output = output
        detail = message
        if exitcode is not None:
            detail += f" (exit code {exitcode})"
        if output.strip():
            detail += f"\nQEMU said:\n{output.strip()[-2000:]}"
        super().__init__(detail)


class GuestError(KmatrixError):
    """The guest stopped answering or its VM went away while a command ran."""


class GuestTimeout(GuestError):
    """A guest action overran its deadline."""


class GuestDied(GuestError):
    """The VM exited (panic, poweroff, crash) while the guest was needed."""

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        self.exitcode = exitcode
        super().__init__(message)
