"""Applicability decided before a boot: markers evaluated per cell, the reason naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from conftest import DATA
from kmatrix.config.specs import Cell
from kmatrix.guest.lifecycle import CellPool
from kmatrix.kernels import load_matrix
from kmatrix.kernels.artifact import KernelArtifact
from kmatrix.pytest import applicability
from kmatrix.pytest.applicability import NotApplicable

# The plugin registers its markers; this suite runs without it (-p no:kmatrix).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")
TWO = load_matrix(DATA / "matrices" / "two.yaml")
CELL = TWO.cells[0]


class Item:
    """What the applicability code reads of a pytest item."""

    def __init__(self, cell: Cell, *marks: pytest.MarkDecorator) -> None:
        self.callspec = type("CallSpec", (), {"params": {"cell": cell}})()
        self.stash = pytest.Stash()
        self.marks = [m.mark for m in marks]

    def iter_markers(self, name: str) -> list[Any]:
        return [m for m in self.marks if m.name == name]


def verdict(item: Item, pool: Any = None) -> str:
    applicability.mark_collected([cast(pytest.Item, item)])
    try:
        applicability.before_boot(cast(pytest.Item, item), cast(CellPool, pool), CELL)
    except NotApplicable as e:
        return f"n/a: {e.msg}"
    return "applies"


def test_predicates_on_the_cell_with_the_reason_naming_it() -> None:
    two_cpus = pytest.mark.kmatrix_applies(lambda c: c.smp >= 2, "needs 2, has {cell.smp}")
    four = pytest.mark.kmatrix_applies(lambda c: c.smp >= 4, "needs 4 vCPUs, has {cell.smp}")
    iommu = pytest.mark.kmatrix_applies(lambda c: False, "{cell.device.name} has no IOMMU")
    assert verdict(Item(CELL, two_cpus)) == "applies"
    assert verdict(Item(CELL, four)) == f"n/a: needs 4 vCPUs, has {CELL.smp}"
    # Stored bottom-up, as decorators apply: the one written first gives the reason.
    assert verdict(Item(CELL, iommu, four)) == f"n/a: needs 4 vCPUs, has {CELL.smp}"


class Pool:
    def __init__(self, config: dict[str, str]) -> None:
        self.kernel = KernelArtifact("k", Path("/k"), Path("/k"), "6.1.0", "", None, None, config)

    def kernel_of(self, cell: Cell) -> KernelArtifact:
        return self.kernel


def test_config_options_read_before_the_boot() -> None:
    zswap = pytest.mark.kmatrix_config("ZSWAP", "CONFIG_THP")
    assert verdict(Item(CELL, zswap), Pool({"CONFIG_ZSWAP": "y", "CONFIG_THP": "m"})) == "applies"
    got = verdict(Item(CELL, zswap), Pool({"CONFIG_ZSWAP": "y", "CONFIG_OTHER": "y"}))
    assert got == "n/a: k (6.1.0) lacks CONFIG_THP"
    with pytest.raises(pytest.skip.Exception, match="kernel config unknown"):
        verdict(Item(CELL, zswap), Pool({}))  # unknown: a skip, it could not be told
