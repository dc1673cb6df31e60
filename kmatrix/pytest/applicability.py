"""Applicability: a test that cannot apply to a cell is *not applicable*, never a skip.

A skip means something that should have been measured was not (an accelerator that cannot
emulate a CPU feature, a host without the device). A test that could never apply to a cell
says so, decided before the cell boots wherever the facts are known by then:

* ``@pytest.mark.kmatrix_applies(predicate, reason)``: predicate(cell) is evaluated at
  collection (the device profile, the vCPU count, the kernel's source and series are all in
  the Cell); reason may name the cell, e.g. ``"device profile {cell.device.name} has no
  IOMMU"``;
* ``@pytest.mark.kmatrix_config("OPT", ...)``: the options the kernel must have (=y or =m),
  read from its config once the kernel is resolved, before it boots (a kernel whose config
  is unknown is a skip: it could not be told);
* inside a test, ``kmatrix.not_applicable(reason)`` (or ``require_config``) for what only
  the kernel artefact or the guest can tell.

Such a test ends as ``not_applicable`` in results.json and every report, counted apart from
skips; a cell none of whose tests apply is never booted. `-k` selects tests as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import pytest

from kmatrix.config.specs import Cell
from kmatrix.guest.lifecycle import CellPool
from kmatrix.pytest.stash import cell_of
from kmatrix.results.schema import Outcome

PROPERTY = "kmatrix.not_applicable"
OUTCOME = Outcome.NOT_APPLICABLE
_NA_KEY = pytest.StashKey[str]()

MARKERS = (
    "kmatrix_applies(predicate, reason): the test applies only to cells for which "
    "predicate(cell) is true; elsewhere it is not applicable (decided at collection)",
    "kmatrix_config(*options): the test applies only to kernels whose config has every "
    "option (=y or =m); decided from the kernel's config before it boots",
)


class NotApplicable(pytest.skip.Exception):  # type: ignore[misc,name-defined]
    """The test cannot apply to this cell; reported as not applicable, not as a skip."""


def not_applicable(reason: str) -> NoReturn:
    """Ends the test as not applicable to its cell, saying why."""
    raise NotApplicable(reason, _use_item_location=True)


def _reason(template: str, cell: Cell) -> str:
    try:
        return template.format(cell=cell)
    except (AttributeError, IndexError, KeyError, ValueError):
        return template


def mark_collected(items: list[pytest.Item]) -> None:
    """Evaluates every kmatrix_applies marker against its item's cell."""
    for it in items:
        cell = cell_of(it)
        if cell is None:
            continue
        # Decorators are stored bottom-up: reversed, the one written first says why first.
        for m in reversed(list(it.iter_markers("kmatrix_applies"))):
            predicate: Callable[[Cell], Any] = m.args[0] if m.args else m.kwargs["predicate"]
            template = m.args[1] if len(m.args) > 1 else m.kwargs.get("reason", "")
            if not predicate(cell):
                it.stash[_NA_KEY] = _reason(str(template) or "does not apply to this cell", cell)
                break


def before_boot(item: pytest.Item, pool: CellPool, cell: Cell) -> None:
    """Raises NotApplicable for a test that cannot apply to its cell (before any boot)."""
    reason = item.stash.get(_NA_KEY, None)
    if reason is not None:
        not_applicable(reason)
    wanted = [str(o) for m in item.iter_markers("kmatrix_config") for o in m.args]
    if not wanted:
        return
    kernel = pool.kernel_of(cell)
    if kernel is None:
        return  # the cell's set-up error is reported when the test asks for its guest
    if not kernel.config_known:
        pytest.skip(f"{kernel.name}: kernel config unknown, cannot tell whether {wanted} are set")
    missing = [o for o in wanted if not kernel.has(o)]
    if missing:
        not_applicable(
            f"{kernel.name} ({kernel.release}) lacks "
            + ", ".join(f"CONFIG_{o.removeprefix('CONFIG_')}" for o in missing)
        )


def record(item: pytest.Item, report: pytest.TestReport, call: pytest.CallInfo[None]) -> None:
    """Marks the report of a NotApplicable test (a property survives xdist's transport),
    and the item, so its teardown report (what pytest's JUnit reads) says so too."""
    if call.excinfo is not None and call.excinfo.errisinstance(NotApplicable):
        prop = (PROPERTY, str(getattr(call.excinfo.value, "msg", "")))
        report.user_properties.append(prop)
        item.user_properties.append(prop)


def is_not_applicable(report: pytest.TestReport) -> bool:
    return bool(report.skipped) and any(k == PROPERTY for k, _ in report.user_properties)
