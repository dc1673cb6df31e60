"""KTAP / TAP parsing: the kernel's test output (kselftest's runner, KUnit) as a tree.

The kernel prints test results in KTAP (`Documentation/dev-tools/ktap.rst`), a dialect of
TAP: a version line, a plan (`1..N`), one result line per test (`ok 3 name # SKIP why`),
diagnostics (`# ...`) and, before a test's result line, that test's own subtests. Two
nestings exist in practice and both are read here:

* KTAP/KUnit indentation: a subtest's lines are indented (four spaces per level), often
  headed by `# Subtest: name`;
* kselftest's runner (`kselftest/runner.sh`) prefixes everything a test program prints with
  `# `, so a program's own KTAP appears as `# ok 1 case` under `# selftests: target: prog`.

Nothing is flattened: a program's cases stay under the program, a parameterised KUnit case's
parameters stay under the case. Output that ends early (a crash, a timeout, a kernel that
went down) gives tests with no result line, marked `incomplete`; the innermost incomplete
test is the one that was running. Directives: SKIP, XFAIL, XPASS, TODO, TIMEOUT, ERROR
(case-insensitive); anything else after ` # ` on a result line is kept as its comment
(kselftest's `# exit=1`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

VERSION_RE = re.compile(r"^(?:K?TAP) version (\d+)\s*$")
PLAN_RE = re.compile(r"^1\.\.(\d+)(?:\s*#\s*(.*))?\s*$")
RESULT_RE = re.compile(r"^(not ok|ok)\s+(\d+)\b(?:\s*-)?\s*(.*)$")
DIRECTIVE_RE = re.compile(
    r"^(?P<desc>.*?)\s*(?<!\\)#\s*(?P<dir>SKIP|XFAIL|XPASS|TODO|TIMEOUT|ERROR)\b:?\s*(?P<reason>.*)$",
    re.IGNORECASE,
)
COMMENT_RE = re.compile(r"^(?P<desc>.*?)\s+(?<!\\)#\s*(?P<reason>.*)$")
# A result line glued to text a test printed without a newline (kselftest's posix_timers:
# `Diff too high: 5104485..not ok 1 ITIMER_VIRTUAL`).
GLUED_RE = re.compile(r"^(?P<pre>[^#\s].*?[^\w\s])(?P<res>(?:not )?ok \d+\b.*)$")
# kselftest's runner's own result line glued to the end of a program's last output line
# when that line had no newline: `# (cs_prctl_test.c:287) - not ok 1 selftests: sched: ...`.
RUNNER_GLUED_RE = re.compile(r"^(?P<pre># .*?)(?P<res>(?:not )?ok \d+ selftests: \S+: \S+.*)$")
BAILOUT_RE = re.compile(r"^Bail out!\s*(.*)$")
SUBTEST_RE = re.compile(r"^#\s*Subtest:\s*(.*?)\s*$")
# kselftest's runner names the program it starts: `# selftests: cgroup: test_core`.
KSELFTEST_HEADER_RE = re.compile(r"^selftests:\s*(\S+):\s*(\S+)\s*$")
# A printk prefix: `[   12.345678] `, optionally with a caller id `[    T1] ` / `[T1] `.
PRINTK_PREFIX_RE = re.compile(r"^\[\s*\d+\.\d+\](?:\[\s*[TC]\d+\])? ?")
_INDENT_RE = re.compile(r"^(\s*)")

# Outcomes of a test, from its result line.
PASS, FAIL, SKIP, XFAIL, XPASS, TODO, TIMEOUT, ERROR, INCOMPLETE = (
    "pass", "fail", "skip", "xfail", "xpass", "todo", "timeout", "error", "incomplete",
)  # fmt: skip


@dataclass
class KtapTest:
    """One test: its result line, the lines it printed before it, and its subtests."""

    name: str
    number: int | None = None
    ok: bool | None = None  # None: no result line was seen (the output ended first)
    directive: str = ""  # SKIP, XFAIL, ... as printed (upper-cased)
    reason: str = ""  # the directive's text, or the comment after '#'
    log: list[str] = field(default_factory=list)  # lines printed before the result line
    tail: list[str] = field(default_factory=list)  # lines after the last subtest's result
    subtests: list[KtapTest] = field(default_factory=list)
    plan: int | None = None  # the subtests' plan (1..N)
    plan_comment: str = ""  # `1..0 # SKIP why`
    bailout: str | None = None  # `Bail out! why` among its subtests' lines
    version: str = ""  # "KTAP version 1", "TAP version 13"

    @property
    def status(self) -> str:
        if self.ok is None:
            return INCOMPLETE
        d = self.directive
        if d == "SKIP":
            return SKIP
        if d == "TIMEOUT":
            return TIMEOUT
        if d == "ERROR":
            return ERROR
        if d == "XFAIL":
            return XFAIL if self.ok else FAIL
        if d == "XPASS":
            return XPASS
        if d == "TODO":
            return XPASS if self.ok else XFAIL
        if not self.ok:
            return FAIL
        if not self.subtests and self.plan == 0 and self.plan_comment.upper().startswith("SKIP"):
            return SKIP
        return PASS

    @property
    def missing(self) -> int:
        """Subtests the plan announced that never printed a result (nor started)."""
        if self.plan is None:
            return 0
        return max(0, self.plan - len(self.subtests))

    def walk(self, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], KtapTest]]:
        """(path, test) for every subtest, depth first, parents before children."""
        for t in self.subtests:
            p = (*path, t.name)
            yield p, t
            yield from t.walk(p)

    def running(self) -> tuple[str, ...] | None:
        """The path of the innermost incomplete subtest: what was running when output ended."""
        for t in reversed(self.subtests):
            if t.ok is None:
                inner = t.running()
                return (t.name, *inner) if inner is not None else (t.name,)
        return None

    def find(self, path: Iterable[str]) -> KtapTest | None:
        node: KtapTest | None = self
        for part in path:
            assert node is not None
            node = next((t for t in node.subtests if t.name == part), None)
            if node is None:
                return None
        return node


def strip_printk(line: str) -> str:
    """A kernel log line without its timestamp and caller id (printk.time=0 lines as they are)."""
    return PRINTK_PREFIX_RE.sub("", line, count=1)


def _indent(line: str) -> int:
    m = _INDENT_RE.match(line)
    return len(m.group(1).expandtabs(8)) if m else 0


def _structural(text: str) -> bool:
    """A line that only KTAP output has: version, plan, result, bail out, subtest header."""
    s = text.strip()
    return bool(
        VERSION_RE.match(s)
        or PLAN_RE.match(s)
        or RESULT_RE.match(s)
        or BAILOUT_RE.match(s)
        or SUBTEST_RE.match(s)
    )


def _deprefixed(text: str) -> str | None:
    """'# x' -> 'x', '#' -> ''; None for a line without the prefix."""
    if text == "#":
        return ""
    if text.startswith("# "):
        return text[2:]
    return None


def _prefixed_structural(text: str) -> bool:
    """A `# `-prefixed line hiding KTAP structure at any depth (kselftest nesting)."""
    inner = _deprefixed(text)
    while inner is not None:
        if _structural(inner):
            return True
        inner = _deprefixed(inner.lstrip() if inner.startswith(" ") else inner)
    return False


def _unique_name(name: str, seen: dict[str, int]) -> str:
    """Two results with one name (it happens) stay two tests: the second is 'name#2'."""
    n = seen.get(name, 0) + 1
    seen[name] = n
    return name if n == 1 else f"{name}#{n}"


def _result(line: str) -> tuple[bool, int | None, str, str, str] | None:
    m = RESULT_RE.match(line.strip())
    if m is None:
        return None
    ok = m.group(1) == "ok"
    number = int(m.group(2))
    rest = m.group(3).strip()
    d = DIRECTIVE_RE.match(rest)
    if d is not None:
        return ok, number, d.group("desc").strip(), d.group("dir").upper(), d.group("reason")
    c = COMMENT_RE.match(rest)
    if c is not None and c.group("desc").strip():
        return ok, number, c.group("desc").strip(), "", c.group("reason").strip()
    return ok, number, rest, "", ""


def _body(block: list[str]) -> list[str]:
    """The nested lines of a pending block (a subtest's own output), de-nested one level:
    indented lines dedented, or, in kselftest's style, `# `-prefixed lines de-prefixed."""
    indented = [ln for ln in block if ln[:1] in (" ", "\t") and ln.strip()]
    if any(_structural(ln) for ln in indented):
        first = next(ln for ln in indented if _structural(ln))
        width = _indent(first)
        out = []
        for ln in block:
            if ln[:1] in (" ", "\t") and ln.strip():
                out.append(ln.expandtabs(8)[min(width, _indent(ln)) :])
        return out
    if any(_prefixed_structural(ln.strip()) for ln in block):
        out = []
        for ln in block:
            inner = _deprefixed(ln.strip())
            if inner is not None:
                out.append(inner)
        return out
    return []


def _header_name(block: list[str]) -> str:
    """The name of a subtest that has no result line yet: its `# Subtest:` header, or the
    program kselftest's runner said it started."""
    name = ""
    for ln in block:
        s = ln.strip()
        inner = _deprefixed(s)
        m = SUBTEST_RE.match(s)
        if m and not name:
            name = m.group(1)
        k = KSELFTEST_HEADER_RE.match(inner) if inner is not None else None
        if k is not None:
            name = f"selftests: {k.group(1)}: {k.group(2)}"
    return name


def _parse(lines: list[str], into: KtapTest) -> None:
    """Fills into.subtests (and plan, version, bail out) from lines at one nesting level."""
    pending: list[str] = []
    seen: dict[str, int] = {}
    for line in lines:
        s = line.strip()
        top = line[:1] not in (" ", "\t")
        if top and not into.version and VERSION_RE.match(s) and not into.subtests:
            into.version = s
            continue
        if top and (m := PLAN_RE.match(s)) is not None and into.plan is None:
            into.plan, into.plan_comment = int(m.group(1)), (m.group(2) or "").strip()
            continue
        if top and (b := BAILOUT_RE.match(s)) is not None:
            into.bailout = b.group(1)
            pending.append(line)
            continue
        glued = GLUED_RE.match(s) if top and not RESULT_RE.match(s) else None
        if glued is not None:
            pending.append(glued.group("pre"))
            s = glued.group("res")
        if top and (r := _result(s)) is not None:
            ok, number, desc, directive, reason = r
            body = _body(pending)
            # kselftest's ksft_test_result_skip(msg) prints `ok 3 # SKIP msg`: msg names it.
            name = desc or (reason if directive else "") or _header_name(pending) or f"#{number}"
            prev = next((x for x in into.subtests if x.number == number and x.name == name), None)
            if prev is not None and (prev.ok, prev.directive, prev.reason) == (
                ok,
                directive,
                reason,
            ):
                # The same line again: a forked child flushing its copy of the parent's
                # stdout buffer (kselftest's cgroup tests do). One test, not two.
                prev.log.extend(pending)
                pending = []
                continue
            t = KtapTest(
                name=_unique_name(name, seen), number=number, ok=ok, directive=directive,
                reason=reason, log=pending,
            )  # fmt: skip
            if body:
                _parse(body, t)
            into.subtests.append(t)
            pending = []
            continue
        pending.append(line)
    body = _body(pending)
    if body:
        # Output ended inside a subtest: it is incomplete, and so is its running child.
        name = _header_name(pending) or f"#{len(into.subtests) + 1}"
        t = KtapTest(name=_unique_name(name, seen), log=pending)
        _parse(body, t)
        into.subtests.append(t)
    elif pending:
        into.tail.extend(pending)


def parse(text: str | Iterable[str]) -> KtapTest:
    """The KTAP in text as a tree under a nameless root. Lines before the first version line
    are ignored when there is one; a second top-level version line starts another document,
    whose tests join the root (KUnit prints one per batch of suites)."""
    lines = text.splitlines() if isinstance(text, str) else [ln.rstrip("\n") for ln in text]
    lines = [ln.rstrip("\r") for ln in lines]
    split: list[str] = []
    for ln in lines:
        m = RUNNER_GLUED_RE.match(ln)
        split.extend((m.group("pre"), m.group("res")) if m else (ln,))
    lines = split
    starts = [i for i, ln in enumerate(lines) if VERSION_RE.match(ln) and ln[:1] not in " \t#"]
    root = KtapTest(name="")
    if not starts:
        _parse(lines, root)
        return root
    bounds = [*starts, len(lines)]
    plans = 0
    for a, b in itertools.pairwise(bounds):
        doc = KtapTest(name="")
        _parse(lines[a:b], doc)
        root.version = root.version or doc.version
        root.subtests.extend(doc.subtests)
        root.tail.extend(doc.tail)
        if doc.plan is not None:
            plans += doc.plan
            root.plan = plans
        root.bailout = root.bailout or doc.bailout
    return root


def kernel_log_ktap(log: str) -> KtapTest:
    """The KTAP documents in a kernel log (dmesg or the console): printk prefixes removed,
    only lines from the first top-level `KTAP version` / `TAP version` line on."""
    return parse([strip_printk(ln) for ln in log.splitlines()])
