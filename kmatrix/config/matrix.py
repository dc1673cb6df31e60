"""Matrix files: load, validate (every error names file, line and key), expand into cells.

A matrix is kernels x CPU models x device profiles, filtered by include/exclude rules.
Validation walks the YAML node tree rather than the loaded data so that each error can
point at the line of the offending key; nothing here touches QEMU. Kernel entries are read
by the source kinds the caller hands in (kmatrix.kernels.KINDS).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from kmatrix.config.hostaccess import CPU_RE, refusal, ungranted
from kmatrix.config.kinds import KindParser
from kmatrix.config.pciaddr import parse_address
from kmatrix.config.profiles import device_ref
from kmatrix.config.specs import (
    BASELINE_SUFFIX,
    Cell,
    CpuSpec,
    Defaults,
    Expectation,
    HostAccess,
    KernelSpec,
    Matrix,
    Rule,
    Suites,
)
from kmatrix.config.suites import kernel_args as suite_kernel_args
from kmatrix.config.suites import merge, parse_suite_rules, parse_suites
from kmatrix.config.yamlnode import NAME_RE, NodeReader, compose_file, unique
from kmatrix.errors import MatrixError

ACCELS = ("auto", "kvm", "tcg")
# Far above any matrix one machine or CI pipeline runs (the 1,000-cell matrix measured in
# the design notes); a few short lists must not expand into millions of cells.
MAX_COMBINATIONS = 20_000
EXPECT_OUTCOMES = ("pass", "no-boot", "build-fail", "fail")
# The keys each mapping of a matrix file accepts, and those it requires (docs/matrix.md
# documents exactly these; tests/test_docs.py checks it).
MATRIX_KEYS = (
    "name", "description", "defaults", "kernels", "cpus", "devices", "include", "exclude",
    "expect", "suites", "host_access",
)  # fmt: skip
MATRIX_REQUIRED = ("kernels", "cpus", "devices")
DEFAULTS_KEYS = ("memory", "smp", "boot_timeout", "test_timeout", "accel", "kernel_args")
# A kernel entry: these plus exactly one source kind's key (deb, image, tree, build, ...).
KERNEL_KEYS = ("name", "modules", "config", "release", "kernel_args", "suites")
KERNEL_REQUIRED = ("name",)
CPU_KEYS = ("name", "model", "flags", "absent", "smp")
CPU_REQUIRED = ("name",)
RULE_KEYS = ("kernel", "cpu", "device")  # include/exclude rules
EXPECT_KEYS = ("kernel", "cpu", "device", "test", "outcome", "reason")
EXPECT_REQUIRED = ("outcome",)
HOST_ACCESS_KEYS = ("reason", "files", "devices", "networks")  # docs/security.md
HOST_ACCESS_REQUIRED = ("reason",)


def _kernel(
    r: NodeReader, node: yaml.Node, key: str, kinds: Mapping[str, KindParser]
) -> tuple[KernelSpec, KernelSpec | None]:
    """The kernel entry, and its baseline twin when it declares a baseline."""
    m = r.mapping(node, key, (*KERNEL_KEYS[:1], *kinds, *KERNEL_KEYS[1:]), KERNEL_REQUIRED)
    name = r.string(m["name"][1], f"{key}.name", NAME_RE)
    sources = [s for s in kinds if s in m]
    if len(sources) != 1:
        raise r.err(node, key, f"kernel {name!r} needs exactly one of {', '.join(kinds)}")
    kind = kinds[sources[0]]
    for k in kind.exclusive:
        if k in m:
            raise r.err(
                m[k][0], f"{key}.{k}", f"comes from the {kind.name}; not allowed with {kind.name}"
            )
    parsed = kind.parse(r, m[kind.name][1], f"{key}.{kind.name}")
    modules = r.file(m["modules"][1], f"{key}.modules") if "modules" in m else None
    config = r.file(m["config"][1], f"{key}.config") if "config" in m else None
    release = r.string(m["release"][1], f"{key}.release") if "release" in m else None
    kargs = r.args(m["kernel_args"][1], f"{key}.kernel_args") if "kernel_args" in m else ()
    suites = parse_suites(r, m["suites"][1], f"{key}.suites") if "suites" in m else None
    origin = f"{r.path}:{node.start_mark.line + 1}"
    twin = None
    if parsed.baseline is not None:
        # Same source, config, fragments, make variables and command line, without (part
        # of) the series; no declared release (a series may change the version string).
        twin = KernelSpec(
            name=name + BASELINE_SUFFIX,
            source=kind.name,
            location=parsed.location,
            identity=parsed.identity,
            kernel_args=kargs,
            origin=origin,
            build=parsed.baseline,
            baseline_of=name,
            baseline_label=parsed.baseline_label,
            suites=suites,
        )
    spec = KernelSpec(
        name=name,
        source=kind.name,
        location=parsed.location,
        identity=parsed.identity,
        modules=modules,
        config=config,
        release=release,
        kernel_args=kargs,
        origin=origin,
        build=parsed.build,
        baseline=twin.name if twin is not None else "",
        baseline_label=parsed.baseline_label,
        suites=suites,
    )
    return spec, twin


def _cpu(r: NodeReader, node: yaml.Node, key: str) -> CpuSpec:
    if isinstance(node, yaml.ScalarNode):
        name = r.string(node, key, NAME_RE)
        return CpuSpec(name=name, model=name)
    m = r.mapping(node, key, CPU_KEYS, CPU_REQUIRED)
    name = r.string(m["name"][1], f"{key}.name", NAME_RE)
    model = r.string(m["model"][1], f"{key}.model", CPU_RE) if "model" in m else name
    flags = r.strings(m["flags"][1], f"{key}.flags") if "flags" in m else ()
    absent = r.strings(m["absent"][1], f"{key}.absent") if "absent" in m else ()
    smp = int(r.number(m["smp"][1], f"{key}.smp", 1, 64, True)) if "smp" in m else None
    both = set(flags) & set(absent)
    if both:
        raise r.err(node, key, f"flags both required and absent: {', '.join(sorted(both))}")
    return CpuSpec(name=name, model=model, flags=flags, absent=absent, smp=smp)


def _rule(r: NodeReader, node: yaml.Node, key: str, names: dict[str, set[str]]) -> Rule:
    m = r.mapping(node, key, RULE_KEYS)
    if not m:
        raise r.err(node, key, "a rule needs at least one of kernel, cpu, device")
    vals: dict[str, str] = {}
    for axis, (_, vnode) in m.items():
        pat = r.string(vnode, f"{key}.{axis}")
        if not any(fnmatch.fnmatchcase(n, pat) for n in names[axis]):
            known = ", ".join(sorted(names[axis]))
            raise r.err(vnode, f"{key}.{axis}", f"{pat!r} matches no {axis} (known: {known})")
        vals[axis] = pat
    return Rule(**vals)


def _expectation(
    r: NodeReader, node: yaml.Node, key: str, names: dict[str, set[str]], built: set[str]
) -> Expectation:
    m = r.mapping(node, key, EXPECT_KEYS, EXPECT_REQUIRED)
    outcome = r.choice(m["outcome"][1], f"{key}.outcome", EXPECT_OUTCOMES)
    globs: dict[str, str] = {}
    for axis in ("kernel", "cpu", "device"):
        if axis in m:
            vnode = m[axis][1]
            pat = r.string(vnode, f"{key}.{axis}")
            if not any(fnmatch.fnmatchcase(n, pat) for n in names[axis]):
                known = ", ".join(sorted(names[axis]))
                raise r.err(vnode, f"{key}.{axis}", f"{pat!r} matches no {axis} (known: {known})")
            globs[axis] = pat
    if outcome == "build-fail" and not any(
        fnmatch.fnmatchcase(k, globs.get("kernel", "*")) for k in built
    ):
        raise r.err(
            m["outcome"][1], f"{key}.outcome", "build-fail matches no kernel built from source"
        )
    return Expectation(
        outcome=outcome,
        reason=r.string(m["reason"][1], f"{key}.reason") if "reason" in m else "",
        test=r.string(m["test"][1], f"{key}.test") if "test" in m else "*",
        origin=f"{r.path}:{node.start_mark.line + 1}",
        **globs,
    )


def _host_access(r: NodeReader, node: yaml.Node) -> HostAccess:
    """host_access: what this matrix's profiles may reach on the host (docs/security.md)."""
    m = r.mapping(node, "host_access", HOST_ACCESS_KEYS, HOST_ACCESS_REQUIRED)
    files = []
    if "files" in m:
        fnode = m["files"][1]
        items = fnode.value if isinstance(fnode, yaml.SequenceNode) else [fnode]
        for i, (raw, item) in enumerate(
            zip(r.strings(fnode, "host_access.files"), items, strict=True)
        ):
            if not raw.startswith("/"):
                raise r.err(item, f"host_access.files[{i}]", f"{raw!r}: must be an absolute path")
            if os.path.realpath(raw) == "/":
                raise r.err(item, f"host_access.files[{i}]", "granting all of / is not allowed")
            files.append(os.path.realpath(raw))
    devices = []
    if "devices" in m:
        dnode = m["devices"][1]
        items = dnode.value if isinstance(dnode, yaml.SequenceNode) else [dnode]
        for i, item in enumerate(items):
            text = item.value if isinstance(item, yaml.ScalarNode) else None
            try:
                devices.append(parse_address(text))
            except ValueError as e:
                raise r.err(item, f"host_access.devices[{i}]", str(e)) from None
    return HostAccess(
        reason=r.string(m["reason"][1], "host_access.reason"),
        files=tuple(files),
        devices=tuple(devices),
        networks=r.boolean(m["networks"][1], "host_access.networks") if "networks" in m else False,
        path=str(r.path),
        line=node.start_mark.line + 1,
    )


def _defaults(r: NodeReader, node: yaml.Node | None) -> Defaults:
    if node is None:
        return Defaults()
    m = r.mapping(node, "defaults", DEFAULTS_KEYS)
    d = Defaults()
    get: dict[str, Callable[[yaml.Node, str], Any]] = {
        "memory": lambda n, k: int(r.number(n, k, 64, 1 << 20, True)),
        "smp": lambda n, k: int(r.number(n, k, 1, 64, True)),
        "boot_timeout": lambda n, k: r.number(n, k, 1, 3600, False),
        "test_timeout": lambda n, k: r.number(n, k, 1, 3600, False),
        "accel": lambda n, k: r.choice(n, k, ACCELS),
        "kernel_args": lambda n, k: r.args(n, k),
    }
    values = {k: get[k](v, f"defaults.{k}") for k, (_, v) in m.items()}
    return Defaults(**{**d.__dict__, **values})


def load_matrix(path: Path | str, kinds: Mapping[str, KindParser]) -> Matrix:
    """Loads and validates a matrix file and expands it into cells. Raises MatrixError."""
    try:
        path = Path(path).resolve()
    except (RuntimeError, OSError):  # a symbolic link loop
        raise MatrixError(path, None, None, "a symbolic link loop") from None
    r = NodeReader(path)
    root = compose_file(path)
    m = r.mapping(root, "", MATRIX_KEYS, MATRIX_REQUIRED)
    access = _host_access(r, m["host_access"][1]) if "host_access" in m else None
    name = r.string(m["name"][1], "name", NAME_RE) if "name" in m else path.stem
    defaults = _defaults(r, m["defaults"][1] if "defaults" in m else None)

    seen: dict[str, int] = {}
    kernels = []
    declared: dict[str, tuple[yaml.Node, str]] = {}  # name -> (node, key) as written
    twins: dict[str, str] = {}  # baseline twin name -> key of the kernel that declared it
    for i, n in enumerate(r.seq(m["kernels"][1], "kernels", nonempty=True)):
        k, twin = _kernel(r, n, f"kernels[{i}]", kinds)
        unique(r, seen, k.name, n, f"kernels[{i}].name")
        declared[k.name] = (n, f"kernels[{i}].name")
        kernels.append(k)
        if twin is not None:
            kernels.append(twin)
            twins[twin.name] = f"kernels[{i}]"
    for twin_name, key in twins.items():
        if twin_name in declared:
            node, nkey = declared[twin_name]
            raise r.err(
                node,
                nkey,
                f"{twin_name!r} is the name of the baseline of {key} "
                f"({twin_name.removesuffix(BASELINE_SUFFIX)!r}); rename this kernel",
            )
    seen = {}
    cpus = []
    for i, n in enumerate(r.seq(m["cpus"][1], "cpus", nonempty=True)):
        c = _cpu(r, n, f"cpus[{i}]")
        unique(r, seen, c.name, n, f"cpus[{i}].name")
        cpus.append(c)
    seen = {}
    devices = []
    for i, n in enumerate(r.seq(m["devices"][1], "devices", nonempty=True)):
        d = device_ref(r, n, f"devices[{i}]")
        unique(r, seen, d.name, n, f"devices[{i}]")
        use = ungranted(access, d.host_uses)
        if use is not None:
            raise MatrixError(use.path, use.line, use.key, refusal(use))
        devices.append(d)

    names = {
        "kernel": {k.name for k in kernels},
        "cpu": {c.name for c in cpus},
        "device": {d.name for d in devices},
    }
    rules: dict[str, tuple[Rule, ...]] = {}
    for section in ("include", "exclude"):
        if section in m:
            nodes = r.seq(m[section][1], section)
            rules[section] = tuple(
                _rule(r, n, f"{section}[{i}]", names) for i, n in enumerate(nodes)
            )
    built = {k.name for k in kernels if k.build is not None}
    expect = tuple(
        _expectation(r, n, f"expect[{i}]", names, built)
        for i, n in enumerate(r.seq(m["expect"][1], "expect") if "expect" in m else [])
    )
    suites, suite_rules = (
        parse_suite_rules(r, m["suites"][1], "suites", names) if "suites" in m else (Suites(), ())
    )
    mat = Matrix(
        path=path,
        name=name,
        description=r.string(m["description"][1], "description") if "description" in m else "",
        defaults=defaults,
        kernels=tuple(kernels),
        cpus=tuple(cpus),
        devices=tuple(devices),
        include=rules.get("include", ()),
        exclude=rules.get("exclude", ()),
        expect=expect,
        suites=suites,
        suite_rules=suite_rules,
        host_access=access,
    )
    combos = len(kernels) * len(cpus) * len(devices)
    if combos > MAX_COMBINATIONS:
        raise MatrixError(
            path, None, "kernels x cpus x devices",
            f"{len(kernels)} x {len(cpus)} x {len(devices)} = {combos} combinations; at most "
            f"{MAX_COMBINATIONS} are expanded (split the matrix)",
        )  # fmt: skip
    cells = expand(mat)
    _check_maxmem(cells)
    if not cells:
        raise MatrixError(path, None, "include/exclude", "the rules leave no cell to run")
    return Matrix(**{**mat.__dict__, "cells": cells})


def _check_maxmem(cells: tuple[Cell, ...]) -> None:
    """maxmem is only known to be too small once a cell's memory is known."""
    for c in cells:
        hp = c.device.memory_hotplug
        if hp is not None and hp.maxmem <= c.memory:
            path, _, line = hp.origin.rpartition(":")
            raise MatrixError(
                path,
                int(line) if line.isdigit() else None,
                "memory_hotplug.maxmem",
                f"{hp.maxmem} MiB leaves no room to hot-add memory: cell {c.id} already "
                f"has {c.memory} MiB",
            )


def expand(mat: Matrix) -> tuple[Cell, ...]:
    """kernels x cpus x devices, kept by include (if any) and dropped by exclude, in file order."""
    d = mat.defaults
    out = []
    for k in mat.kernels:
        # A baseline twin runs on its patched kernel's cells: a rule naming either one
        # places it (a rule may still name the twin alone, e.g. `kernel: "*+baseline"`).
        names = (k.name, k.baseline_of) if k.baseline_of else (k.name,)
        for c in mat.cpus:
            for dev in mat.devices:
                if mat.include and not any(
                    r.matches(n, c.name, dev.name) for r in mat.include for n in names
                ):
                    continue
                if any(r.matches(n, c.name, dev.name) for r in mat.exclude for n in names):
                    continue
                suites = merge(mat.suites, k.suites)
                for rule in mat.suite_rules:
                    if any(rule.matches(n, c.name, dev.name) for n in names):
                        suites = merge(suites, rule.suites)
                out.append(
                    Cell(
                        kernel=k,
                        cpu=c,
                        device=dev,
                        memory=dev.memory or d.memory,
                        smp=c.smp or d.smp,
                        boot_timeout=d.boot_timeout,
                        test_timeout=d.test_timeout,
                        accel=d.accel,
                        kernel_args=d.kernel_args
                        + k.kernel_args
                        + dev.kernel_args
                        + suite_kernel_args(suites),
                        expect=tuple(e for e in mat.expect if e.matches(k.name, c.name, dev.name)),
                        suites=suites,
                    )
                )
    return tuple(out)


def matrix_digest(matrix: Matrix) -> str:
    """Identity of a matrix's cells, independent of where the checkout lives: two shards
    merge only if this matches (the same cells with the same kernels, CPUs, devices, sizes)."""
    rows = [
        [
            c.id, c.kernel.source, c.kernel.identity, list(c.kernel.kernel_args), c.cpu.model,
            list(c.cpu.flags), c.device.name, c.device.machine, c.memory, c.smp,
            list(c.kernel_args),
        ]
        for c in matrix.cells
    ]  # fmt: skip
    blob = json.dumps([matrix.name, rows], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
