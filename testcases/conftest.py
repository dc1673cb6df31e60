"""The built-in guest suites. Fixtures (cell, guest, booted, kernel, qmp) come from the
kmatrix plugin; helpers such as require_config from `kmatrix` itself."""

from kmatrix import require_config

__all__ = ["require_config"]  # older suites import it from here
