"""Where kmatrix finds the data it ships: the guest image recipe (images/), the built-in
suites (testcases/), and the default matrix with its device profiles (matrix/).

In a checkout they are the top-level directories beside the package, which are their
source; a wheel carries copies of them under kmatrix/_data/ (see pyproject.toml), so an
installed kmatrix works from any directory.
"""

from __future__ import annotations

from pathlib import Path

from kmatrix.errors import InfraError

PACKAGE = Path(__file__).resolve().parent
NAMES = ("images", "testcases", "matrix")


def data_dir(name: str) -> Path:
    """images, testcases or matrix: the installed copy, else the checkout's own."""
    if name not in NAMES:
        raise ValueError(f"no bundled data {name!r} (known: {', '.join(NAMES)})")
    installed = PACKAGE / "_data" / name
    if installed.is_dir():
        return installed
    checkout = PACKAGE.parent / name
    # Only beside kmatrix's own pyproject: site-packages may hold another package's matrix/.
    if checkout.is_dir() and (PACKAGE.parent / "pyproject.toml").is_file():
        return checkout
    raise InfraError(
        f"kmatrix's bundled {name}/ is missing (looked in {installed} and {checkout}); "
        "reinstall kmatrix"
    )
