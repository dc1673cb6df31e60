"""The matrix's `suites:` key: the kernel's own tests a cell runs (kselftest targets, KUnit).

```yaml
suites:                          # matrix level: every cell (a mapping), or a list of rules
  kselftest:
    targets:
      - cgroup                   # every program of the target
      - {name: timers, tests: [posix_timers, nanosleep], timeout: 120}
    timeout: 60                  # per-program timeout for every target (default: `settings`)
    source: linux-source-6.1     # where the selftests come from when the kernel's source
                                 # is not known (an image) or not the default (a .deb)
  kunit:                         # also raises the console log level (loglevel=7)
    filter: "example*,cmdline"   # kunit.filter_glob: the suites (and cases) that run at boot
kernels:
  - name: k
    suites: {kselftest: {targets: [cgroup]}}       # kernel level
```

Cell level: the top-level `suites:` may instead be a list of rules, each with optional
`kernel`/`cpu`/`device` globs like `include:` and the suites for the cells it matches. For
each suite (kselftest, kunit) the most specific setting wins: the matrix's mapping, then
the kernel's, then the matching rules in file order. `kselftest: {targets: []}` turns it
off again.
"""

from __future__ import annotations

import fnmatch
import re

import yaml

from kmatrix.config.specs import KselftestSpec, KselftestTarget, KunitSpec, SuiteRule, Suites
from kmatrix.config.yamlnode import NodeReader

# Each component starts with a letter or digit: a target is a directory under the selftests
# tree and under the install, so `.` and `..` components would lead outside them.
TARGET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*(/[A-Za-z0-9][A-Za-z0-9_.+-]*)*$")
# The keys each mapping accepts, and those it requires (docs/matrix.md documents exactly
# these; tests/test_docs.py checks it).
SUITE_KEYS = ("kselftest", "kunit")
RULE_KEYS = ("kernel", "cpu", "device")
SUITE_RULE_KEYS = (*RULE_KEYS, *SUITE_KEYS)
KSELFTEST_KEYS = ("targets", "timeout", "source")
KSELFTEST_REQUIRED = ("targets",)
TARGET_KEYS = ("name", "tests", "timeout")
TARGET_REQUIRED = ("name",)
KUNIT_KEYS = ("filter", "enabled")
FILTER_RE = re.compile(r"^[^\s]+$")


def _timeout(r: NodeReader, node: yaml.Node, key: str) -> float:
    return r.number(node, key, 0, 86400, False)


def _target(r: NodeReader, node: yaml.Node, key: str) -> KselftestTarget:
    origin = f"{r.path}:{node.start_mark.line + 1}"
    if isinstance(node, yaml.ScalarNode):
        return KselftestTarget(name=r.string(node, key, TARGET_NAME_RE), origin=origin)
    m = r.mapping(node, key, TARGET_KEYS, TARGET_REQUIRED)
    name = r.string(m["name"][1], f"{key}.name", TARGET_NAME_RE)
    tests = r.strings(m["tests"][1], f"{key}.tests") if "tests" in m else ()
    timeout = _timeout(r, m["timeout"][1], f"{key}.timeout") if "timeout" in m else None
    return KselftestTarget(name=name, tests=tests, timeout=timeout, origin=origin)


def _kselftest(r: NodeReader, node: yaml.Node, key: str) -> KselftestSpec:
    m = r.mapping(node, key, KSELFTEST_KEYS, KSELFTEST_REQUIRED)
    targets = []
    seen: dict[str, int] = {}
    for i, n in enumerate(r.seq(m["targets"][1], f"{key}.targets")):
        t = _target(r, n, f"{key}.targets[{i}]")
        if t.name in seen:
            raise r.err(
                n, f"{key}.targets[{i}]", f"target {t.name!r} twice (first on line {seen[t.name]})"
            )
        seen[t.name] = n.start_mark.line + 1
        targets.append(t)
    timeout = _timeout(r, m["timeout"][1], f"{key}.timeout") if "timeout" in m else None
    source = r.string(m["source"][1], f"{key}.source") if "source" in m else None
    if source is not None and ("/" in source or source.startswith(".")):
        source = str(r.file(m["source"][1], f"{key}.source"))
    return KselftestSpec(
        targets=tuple(targets),
        timeout=timeout,
        source=source,
        origin=f"{r.path}:{node.start_mark.line + 1}",
    )


def _kunit(r: NodeReader, node: yaml.Node, key: str) -> KunitSpec:
    m = r.mapping(node, key, KUNIT_KEYS)
    filt = r.string(m["filter"][1], f"{key}.filter", FILTER_RE) if "filter" in m else None
    enabled = r.boolean(m["enabled"][1], f"{key}.enabled") if "enabled" in m else True
    return KunitSpec(filter=filt, enabled=enabled, origin=f"{r.path}:{node.start_mark.line + 1}")


def parse_suites(r: NodeReader, node: yaml.Node, key: str) -> Suites:
    """A `suites:` mapping (kselftest, kunit)."""
    m = r.mapping(node, key, SUITE_KEYS)
    return Suites(
        kselftest=_kselftest(r, m["kselftest"][1], f"{key}.kselftest")
        if "kselftest" in m
        else None,
        kunit=_kunit(r, m["kunit"][1], f"{key}.kunit") if "kunit" in m else None,
    )


def parse_suite_rules(
    r: NodeReader, node: yaml.Node, key: str, names: dict[str, set[str]]
) -> tuple[Suites, tuple[SuiteRule, ...]]:
    """The top-level `suites:`: a mapping (matrix level, under the kernels' own) or a list
    of rules (cell level, over the kernels' own)."""
    if isinstance(node, yaml.MappingNode):
        return parse_suites(r, node, key), ()
    rules = []
    for i, n in enumerate(r.seq(node, key)):
        k = f"{key}[{i}]"
        m = r.mapping(n, k, SUITE_RULE_KEYS)
        globs: dict[str, str] = {}
        for axis in RULE_KEYS:
            if axis in m:
                vnode = m[axis][1]
                pat = r.string(vnode, f"{k}.{axis}")
                if not any(fnmatch.fnmatchcase(x, pat) for x in names[axis]):
                    known = ", ".join(sorted(names[axis]))
                    raise r.err(vnode, f"{k}.{axis}", f"{pat!r} matches no {axis} (known: {known})")
                globs[axis] = pat
        if not any(s in m for s in SUITE_KEYS):
            raise r.err(n, k, f"a suites rule needs one of {', '.join(SUITE_KEYS)}")
        suites = Suites(
            kselftest=_kselftest(r, m["kselftest"][1], f"{k}.kselftest")
            if "kselftest" in m
            else None,
            kunit=_kunit(r, m["kunit"][1], f"{k}.kunit") if "kunit" in m else None,
        )
        rules.append(SuiteRule(suites=suites, **globs))
    return Suites(), tuple(rules)


def merge(base: Suites, over: Suites | None) -> Suites:
    """over's suites replace base's, suite by suite."""
    if over is None:
        return base
    return Suites(
        kselftest=over.kselftest if over.kselftest is not None else base.kselftest,
        kunit=over.kunit if over.kunit is not None else base.kunit,
    )


def kernel_args(suites: Suites) -> tuple[str, ...]:
    """What the suites add to a cell's kernel command line (KUnit's filter and switch)."""
    k = suites.kunit
    if k is None:
        return ()
    if not k.enabled:
        return ("kunit.enable=0",)
    # KUnit prints at KERN_INFO, which `quiet` keeps off the console: with it there, a
    # kernel that dies in a suite still shows which case was running.
    out = ["loglevel=7"]
    if k.filter:
        out.append(f"kunit.filter_glob={k.filter}")
    return tuple(out)
