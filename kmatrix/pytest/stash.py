"""What the plugin keeps in pytest's config.stash, and the cell of a test item."""

from __future__ import annotations

import pytest

from kmatrix.config.specs import Cell, Matrix
from kmatrix.errors import (
    HostDeviceUnavailable,
)
from kmatrix.guest.guest import Guest
from kmatrix.guest.lifecycle import CellPool

MATRIX_KEY = pytest.StashKey[Matrix | None]()
POOL_KEY = pytest.StashKey[CellPool]()
SHARD_EMPTY_KEY = pytest.StashKey[str]()  # "I/N" when the shard got no cell at all


def pool_of(config: pytest.Config) -> CellPool:
    return config.stash[POOL_KEY]


def guest_of(config: pytest.Config, cell: Cell) -> Guest:
    """The cell's running guest (booted on first use); a cell this host cannot run (a host
    device that is not usable) is skipped with the reason."""
    try:
        return pool_of(config).get(cell)
    except HostDeviceUnavailable as e:
        pytest.skip(str(e))


def cell_of(item: pytest.Item) -> Cell | None:
    own = getattr(item, "kmatrix_cell", None)  # items that are not functions (kerneltests)
    if isinstance(own, Cell):
        return own
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    c = callspec.params.get("cell")
    return c if isinstance(c, Cell) else None
