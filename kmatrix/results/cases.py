"""The kernel's own test cases (kselftest, KUnit) as kmatrix tests: ids, the cases known
before a run, and each case's verdict from a parsed KTAP run.

A *unit* is what runs at once in a guest: one kselftest target (its selected programs, by
kselftest's runner) or a boot's KUnit suites. Its KTAP output is a tree (kmatrix.results.ktap);
every node of the tree that is a pytest item gets a verdict here:

* a leaf, from its own result line: pass, fail, SKIP (a skip with the reason), XFAIL, TIMEOUT;
* a parent (a program, a suite, the KUnit root), from what no other *selected* item of the
  run reports: its exit status (`# exit=1` with every case passing), a plan that was not
  met, a bail out, failures of children that are not items (not known before the run, or
  deselected with -k). A case that fails therefore fails exactly once;
* when the output stops early (the guest crashed or hung, or kselftest's runner timed a
  program out), the case that was running fails with that reason and the cases after it
  are "not run" (skipped, saying so). Which case was running is the innermost incomplete
  test, or, inside a program that printed nothing about it yet, the first case of that
  program known from an earlier run that has not reported.

Cases are known before a run from the case index: what earlier runs of the same unit
printed (kmatrix.results.cases.CaseIndex, in the cache). A unit seen for the first time has
items for its programs (kselftest) or its root (KUnit) only; they carry its cases, and the
next run has an item per case.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kmatrix.host.cache import cache_root, digest_bytes
from kmatrix.results import ktap
from kmatrix.results.runs import write_json_atomic

Path_ = tuple[str, ...]
_SPACES = re.compile(r"\s+")
PASSED, FAILED, SKIPPED, XFAILED = "passed", "failed", "skipped", "xfailed"
NOT_RUN = "not run"
_FAILING = (ktap.FAIL, ktap.TIMEOUT, ktap.ERROR)


def sanitize(name: str) -> str:
    """A test name as one component of a pytest id: no '/', brackets or '::', one space."""
    s = _SPACES.sub(" ", name.strip())
    s = s.replace("/", "_").replace("[", "(").replace("]", ")").replace("::", ":")
    return s or "_"


def case_id(path: Iterable[str]) -> str:
    return "/".join(sanitize(p) for p in path)


def sanitized_tree(tree: ktap.KtapTest) -> ktap.KtapTest:
    """The same tree with every name made an id component (in place; returns it)."""
    for _, t in tree.walk():
        t.name = sanitize(t.name)
    return tree


@dataclass(frozen=True)
class Verdict:
    outcome: str  # passed | failed | skipped | xfailed
    message: str = ""  # the reason (skip, xfail) or what failed
    log: str = ""  # what the test printed before its result line
    directive: str = ""  # the KTAP directive, if any (SKIP, XFAIL, TIMEOUT, ...)
    note: str = ""  # for a parent that passes although a child failed: where that is reported


@dataclass
class Unit:
    """One unit's run, parsed: the tree, what was known of it before, and how it ended."""

    tree: ktap.KtapTest
    # Children names known before the run, by parent path (() is the unit itself: for a
    # kselftest target, the programs in the order they were asked to run).
    known: dict[Path_, list[str]] = field(default_factory=dict)
    ended: str | None = None  # why the output stopped early (crash, host timeout); None: it ran
    error: str | None = None  # the unit could not run at all: every item fails with this


def _status(unit: Unit, path: Path_, node: ktap.KtapTest) -> str:
    """A node's KTAP status; the unit's root has no result line of its own: it is complete
    when the unit ran to its end."""
    if not path:
        return ktap.INCOMPLETE if unit.ended is not None else ktap.PASS
    return node.status


def _running_child(unit: Unit, parent: Path_, node: ktap.KtapTest) -> str | None:
    """Which child of an incomplete or timed-out node was running."""
    for t in reversed(node.subtests):
        if t.ok is None:
            return t.name
    printed = {t.name for t in node.subtests}
    return next((n for n in unit.known.get(parent, []) if n not in printed), None)


def _stopped(unit: Unit, path: Path_, node: ktap.KtapTest) -> str | None:
    """Why node's output stopped before all of it ran, or None if it ran to its end."""
    status = _status(unit, path, node)
    if status == ktap.INCOMPLETE:
        return unit.ended or "the output ended before its result line"
    if status == ktap.TIMEOUT:
        return f"timed out (TIMEOUT {node.reason})".replace(" )", ")")
    if node.bailout is not None:
        return f"bailed out: {node.bailout}".rstrip(": ")
    return None


def running_chain(unit: Unit, path: Path_ = ()) -> Path_ | None:
    """From path down, the chain of tests that were running when its output stopped."""
    node = unit.tree.find(path)
    if node is None or _stopped(unit, path, node) is None:
        return None
    out = path
    cur: ktap.KtapTest | None = node
    while cur is not None:
        child = _running_child(unit, out, cur)
        if child is None:
            return out
        out = (*out, child)
        cur = cur.find([child])
    # Not printed at all yet: its own first known child would be running, and so on.
    nxt = unit.known.get(out)
    while nxt:
        out = (*out, nxt[0])
        nxt = unit.known.get(out)
    return out


def _covered(full: Path_, below: Path_, selected: set[Path_]) -> bool:
    """Whether a selected item at or above full, strictly below `below`, reports it."""
    return any(full[: i + 1] in selected for i in range(len(below), len(full)))


def _failing(unit: Unit, path: Path_, node: ktap.KtapTest | None, chain: Path_ | None) -> bool:
    if node is None:
        return chain is not None and chain[: len(path)] == path
    status = _status(unit, path, node)
    return status in _FAILING or (status == ktap.INCOMPLETE and chain is not None)


def _log(node: ktap.KtapTest | None, root: bool = False, limit: int = 200) -> str:
    """What a test printed before its result line (a nested test's trailing lines are in
    its log already, as its parent saw them; the root's are its tail)."""
    if node is None:
        return ""
    lines = [*node.log, *node.tail] if root else list(node.log)
    if len(lines) > limit:
        lines = [f"[... {len(lines) - limit} earlier lines]", *lines[-limit:]]
    return "\n".join(lines)


def _problems(unit: Unit, path: Path_, node: ktap.KtapTest, selected: set[Path_]) -> list[str]:
    """Failures under node (node excluded) that no other selected item reports."""
    out: list[str] = []
    for rel, t in [((), node), *node.walk()]:
        full = (*path, *rel)
        if rel and _covered(full, path, selected):
            continue
        if rel and t.status in _FAILING:
            out.append(f"{case_id(full)}: {t.status}" + (f" ({t.reason})" if t.reason else ""))
        if (not rel or t.ok is not None) and t.missing and _stopped(unit, full, t) is None:
            where = case_id(full) or "the run"
            out.append(f"{where}: the plan announced {t.plan} tests, {len(t.subtests)} reported")
        if rel and t.bailout is not None:
            out.append(f"{case_id(full)}: bailed out: {t.bailout}")
    chain = running_chain(unit, path)
    if chain is not None and chain != path and not _covered(chain, path, selected):
        out.append(f"{case_id(chain)}: {_stopped(unit, path, node)}")
    return out


def _reported_below(unit: Unit, p: Path_, node: ktap.KtapTest, sel: set[Path_]) -> list[str]:
    """Selected descendants whose own failure explains node's."""
    chain = running_chain(unit, p)
    out = []
    for rel, t in node.walk():
        full = (*p, *rel)
        if full in sel and _failing(
            unit, full, t, chain if chain and chain[: len(full)] == full else None
        ):
            out.append(case_id(full))
    if chain is not None and chain != p and chain in sel and unit.tree.find(chain) is None:
        out.append(case_id(chain))
    return out


def verdict(unit: Unit, path: Sequence[str], selected: Iterable[Sequence[str]]) -> Verdict:
    """The verdict of the item at path (relative to the unit) in this run. selected: the
    paths of every item of this unit selected in this run (path among them)."""
    p = tuple(path)
    sel = {tuple(s) for s in selected} | {p}
    if unit.error is not None:
        return Verdict(FAILED, unit.error)
    node = unit.tree.find(p)
    if node is None:
        return _absent(unit, p)
    log = _log(node, root=not p)
    status = _status(unit, p, node)
    if status == ktap.INCOMPLETE:
        # Started, never finished: the crash is this item's unless a selected descendant on
        # the running chain reports it.
        chain = running_chain(unit, p) or p
        reporter = next((chain[:i] for i in range(len(chain), len(p), -1) if chain[:i] in sel), p)
        why = _stopped(unit, p, node)
        if reporter != p:
            return Verdict(
                SKIPPED,
                f"{NOT_RUN} to its end: {why}; {case_id(reporter)} was running (reported there)",
                log,
            )
        return Verdict(FAILED, f"{why}; it was running {case_id(chain)}", log)
    if status == ktap.SKIP:
        return Verdict(SKIPPED, node.reason or "SKIP", log, node.directive)
    if status == ktap.XFAIL:
        return Verdict(XFAILED, node.reason or "XFAIL", log, node.directive)
    problems = _problems(unit, p, node, sel)
    below = _reported_below(unit, p, node, sel)
    own = ""
    if status in _FAILING and not below and not problems:
        own = _own_failure(node)
    if own or problems:
        msg = "; ".join([own, *problems] if own else problems)
        return Verdict(FAILED, msg, log, node.directive)
    note = f"{status} because of {', '.join(below)} (reported there)" if below else ""
    if status == ktap.XPASS:
        return Verdict(PASSED, node.reason or "XPASS", log, node.directive, note)
    return Verdict(PASSED, "", log, node.directive, note)


def _own_failure(node: ktap.KtapTest) -> str:
    """What a failed result line says, for a test whose subtests do not explain it."""
    if node.status == ktap.TIMEOUT:
        text = f"timed out (TIMEOUT {node.reason})".replace(" )", ")")
    else:
        text = f"not ok ({node.directive or ''} {node.reason})".replace("( ", "(")
        text = text.replace(" ()", "").replace("()", "").rstrip()
    if node.subtests:
        done = f"{len(node.subtests)} of {node.plan}" if node.plan else f"{len(node.subtests)}"
        bad = [t.name for t in node.subtests if t.status in _FAILING]
        text += f"; {done} subtests reported" + (
            f", failing: {', '.join(bad)}" if bad else ", none failing"
        )
    return text


def _absent(unit: Unit, p: Path_) -> Verdict:
    """An item whose test printed nothing: it was running, or it never ran."""
    anc = p
    while anc and unit.tree.find(anc) is None:
        anc = anc[:-1]
    anode = unit.tree.find(anc)
    assert anode is not None
    chain = running_chain(unit, anc)
    why = _stopped(unit, anc, anode)
    if chain is not None and chain[: len(p)] == p:
        if chain == p:
            return Verdict(FAILED, f"{why}; it was running {case_id(p)}")
        return Verdict(SKIPPED, f"{NOT_RUN}: {why}; {case_id(chain)} was running (reported there)")
    if why is not None:
        where = f" while {case_id(chain)} ran" if chain is not None else ""
        return Verdict(SKIPPED, f"{NOT_RUN}: {why}{where}")
    if anc and anode.status == ktap.SKIP:
        # The whole program (or suite) skipped itself, e.g. a missing controller.
        return Verdict(SKIPPED, f"{case_id(anc)} skipped: {anode.reason or 'SKIP'}")
    return Verdict(
        SKIPPED,
        f"{NOT_RUN}: the run did not report {case_id(p)} (known from an earlier run; "
        f"{case_id(anc) or 'the run'} printed {len(anode.subtests)} tests this time)",
    )


# --- the case index -------------------------------------------------------------------------


def tree_cases(tree: ktap.KtapTest) -> dict[Path_, list[str]]:
    """Children names by parent path, as the index keeps them."""
    out: dict[Path_, list[str]] = {(): [t.name for t in tree.subtests]}
    for p, t in tree.walk():
        if t.subtests:
            out[p] = [c.name for c in t.subtests]
    return out


class CaseIndex:
    """The cases each unit printed the last time it ran to its end, kept in the cache so
    that the next collection has an item per case. Keyed by what determines a unit's cases
    (a kselftest target's build, a kernel's identity and KUnit filter)."""

    def __init__(self, root: Path | None = None) -> None:
        env = os.environ.get("KMATRIX_CASE_INDEX")  # a private index (the project's tests)
        self.root = root or (Path(env) if env else cache_root() / "cases")

    def _path(self, key: str) -> Path:
        return self.root / f"{digest_bytes(key)[:24]}.json"

    def known(self, key: str) -> dict[Path_, list[str]]:
        try:
            data = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("key") != key:
            return {}
        out: dict[Path_, list[str]] = {}
        for row in data.get("children", []):
            if isinstance(row, list) and len(row) == 2:
                parent, names = row
                out[tuple(str(x) for x in parent)] = [str(n) for n in names]
        return out

    def learn(self, key: str, tree: ktap.KtapTest, scope: Path_ = ()) -> None:
        """Records the cases of a run that reached its end. scope: a subtree of the unit
        that ran (a program of a target); other parts keep what was known."""
        cases = self.known(key)
        for parent in [k for k in cases if k[: len(scope)] == scope and k != ()]:
            del cases[parent]
        found = tree_cases(tree)
        if scope:
            cases.update({k: v for k, v in found.items() if k[: len(scope)] == scope})
            top = cases.setdefault((), [])
            if scope[0] not in top:
                top.append(scope[0])
        else:
            cases = found
        self.root.mkdir(parents=True, exist_ok=True)
        rows = [[list(k), v] for k, v in sorted(cases.items())]
        write_json_atomic(self._path(key), {"key": key, "children": rows})


def item_paths(known: dict[Path_, list[str]], roots: Sequence[Path_]) -> list[Path_]:
    """Every known path under each of roots (roots included), parents before children."""
    out: list[Path_] = []

    def visit(p: Path_) -> None:
        out.append(p)
        for c in known.get(p, []):
            visit((*p, c))

    for r in roots:
        visit(r)
    return out
