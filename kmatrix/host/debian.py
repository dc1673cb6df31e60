"""Debian packages as artefacts: fetched with `apt-get download` into the cache and unpacked
with `dpkg-deb -x`; never installed on the host."""

from __future__ import annotations

from pathlib import Path

from kmatrix.errors import ArtifactError
from kmatrix.host.cache import cache_root, locked
from kmatrix.host.tools import run_tool

APT_TIMEOUT = 600.0


def run_apt_tool(argv: list[str], cwd: Path, what: str, timeout: float = APT_TIMEOUT) -> str:
    return run_tool(argv, what, cwd=cwd, timeout=timeout)


def fetch_deb(package: str, origin: str) -> Path:
    """Downloads a Debian package into the cache (once) and returns the .deb path."""
    debs = cache_root() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    with locked(debs / package):
        found = sorted(debs.glob(f"{package}_*.deb"))
        if found:
            return found[-1]
        try:
            run_apt_tool(["apt-get", "download", package], debs, f"{origin}: fetching {package}")
        except ArtifactError as e:
            raise ArtifactError(
                f"{e} (is the name right? `apt-cache policy {package}`; "
                "a fresh machine needs `apt-get update` first)"
            ) from None
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            raise ArtifactError(f"{origin}: apt-get download {package} produced no .deb")
        return found[-1]
