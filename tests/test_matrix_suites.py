"""The matrix's `suites:` key (kmatrix.config.suites): matrix, kernel and cell levels, what
it adds to a cell, and one precise error per kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_matrix import expect_error, write

from kmatrix.kernels import load_matrix

BASE = """
kernels:
  - name: k1
    image: bzImage
  - name: k2
    image: bzImage
    suites: {kselftest: {targets: [timers]}}
cpus: [Nehalem, Haswell]
devices: [{name: plain}]
"""


def test_levels_and_precedence(tmp_path: Path) -> None:
    m = load_matrix(
        write(
            tmp_path,
            BASE
            + """
suites:
  - kselftest:
      targets: [cgroup, {name: timers, tests: [nanosleep, "posix_*"], timeout: 30}]
      timeout: 90
  - {kernel: k2, cpu: Haswell, kunit: {filter: "example*"}}
""",
        )
    )
    by = {c.id: c.suites for c in m.cells}
    # Cell rules come after the kernel's own setting: the first rule replaces k2's targets.
    for cid in ("k1/Nehalem/plain", "k2/Nehalem/plain", "k2/Haswell/plain"):
        ks = by[cid].kselftest
        assert ks is not None and [t.name for t in ks.targets] == ["cgroup", "timers"]
        assert ks.timeout == 90 and ks.targets[1].tests == ("nanosleep", "posix_*")
        assert ks.targets[1].timeout == 30 and ks.targets[0].origin.endswith(":12")
    assert by["k2/Haswell/plain"].kunit is not None and by["k1/Haswell/plain"].kunit is None
    cell = next(c for c in m.cells if c.id == "k2/Haswell/plain")
    assert cell.kernel_args[-2:] == ("loglevel=7", "kunit.filter_glob=example*")


def test_matrix_mapping_is_under_the_kernels_own(tmp_path: Path) -> None:
    m = load_matrix(write(tmp_path, BASE + "suites: {kselftest: {targets: [cgroup]}}\n"))
    names = {c.id: [t.name for t in c.suites.kselftest.targets] for c in m.cells}  # type: ignore[union-attr]
    assert names["k1/Nehalem/plain"] == ["cgroup"] and names["k2/Nehalem/plain"] == ["timers"]
    off = load_matrix(write(tmp_path, BASE + "suites: {kunit: {enabled: false}}\n"))
    assert all(c.kernel_args[-1:] == ("kunit.enable=0",) for c in off.cells)


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        ("suites: {ksefltest: {targets: []}}\n", 9, "suites.ksefltest", "unknown key"),
        ("suites: {kselftest: {}}\n", 9, "suites.kselftest.targets", "required key is missing"),
        (
            "suites: {kselftest: {targets: [cgroup, cgroup]}}\n",
            9,
            "suites.kselftest.targets[1]",
            "target 'cgroup' twice",
        ),
        (
            "suites: {kselftest: {targets: [{name: timers, timeout: -1}]}}\n",
            9,
            "suites.kselftest.targets[0].timeout",
            "out of range",
        ),
        (
            "suites: {kselftest: {targets: ['../etc']}}\n",
            9,
            "suites.kselftest.targets[0]",
            "does not match",
        ),
        ("suites:\n  - {kernel: k3, kunit: {}}\n", 10, "suites[0].kernel", "matches no kernel"),
        ("suites:\n  - {cpu: Haswell}\n", 10, "suites[0]", "needs one of kselftest, kunit"),
        ("suites: {kunit: {filter: 'a b'}}\n", 9, "suites.kunit.filter", "does not match"),
    ],
)
def test_errors(tmp_path: Path, text: str, line: int, key: str, message: str) -> None:
    expect_error(write(tmp_path, BASE + text), line, key, message)
