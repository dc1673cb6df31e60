"""`build:` kernels: built from source with a patch series, a base config, fragments and make
variables (kmatrix.build), cached by all of those inputs. A kernel with a series may declare a
`baseline:` (`vanilla`, or a patch of the series): the same build without the series (or
with the series through that patch), which the matrix runs beside it (see KernelSpec).

The builder, the patch reader (with the mail parser) and the prefix code load only when a
matrix has a `build:` kernel: every other run would pay for them before its first boot.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from pathlib import Path

import yaml

from kmatrix.config.kinds import ParsedSource
from kmatrix.config.specs import BuildSpec, KernelSpec, Matrix
from kmatrix.config.yamlnode import NodeReader
from kmatrix.errors import InputError
from kmatrix.kernels.base import DEB_NAME_RE, KernelFiles

CONFIG_TARGETS = ("tinyconfig", "defconfig", "allnoconfig")  # make targets a build may start from
MAKE_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INLINE_OPTION_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+=\S.*|# CONFIG_[A-Za-z0-9_]+ is not set)$")
# The keys of a kernel's `build:` mapping, and those it requires (documented in docs/matrix.md).
BUILD_KEYS = (
    "source", "ref", "patches", "skip", "config", "fragments", "make_vars", "baseline",
)  # fmt: skip
BUILD_REQUIRED = ("source",)
TARBALL_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tar.zst", ".deb")


class SourceBuildKind:
    name = "build"
    exclusive = ("modules", "config")  # they come from the build

    def parse(self, r: NodeReader, node: yaml.Node, key: str) -> ParsedSource:
        spec = parse_build(r, node, key)
        ident = spec.source if DEB_NAME_RE.match(spec.source) else ""
        if spec.baseline is None:
            return ParsedSource(location=spec.source, identity=ident, build=spec)
        from kmatrix.build.prefixes import PrefixError, baseline_spec

        try:
            base, label = baseline_spec(spec)
        except PrefixError as e:
            bnode = next(v for k, v in node.value if k.value == "baseline")
            raise r.err(bnode, f"{key}.baseline", str(e)) from None
        return ParsedSource(
            location=spec.source, identity=ident, build=spec, baseline=base, baseline_label=label
        )

    def locate(self, spec: KernelSpec, origin: str) -> KernelFiles:
        from kmatrix.build.builder import build_kernel

        assert spec.build is not None
        built = build_kernel(spec.build, origin)
        return KernelFiles(
            built.image, built.config_path, built.modules_root, built,
            root=built.directory, root_name="the kernel build's output",
        )  # fmt: skip


def parse_build(r: NodeReader, node: yaml.Node, key: str) -> BuildSpec:
    m = r.mapping(node, key, BUILD_KEYS, BUILD_REQUIRED)
    snode = m["source"][1]
    raw = r.string(snode, f"{key}.source")
    if "/" in raw or raw.endswith(TARBALL_SUFFIXES):
        src_path = r.file(snode, f"{key}.source")
        source = str(src_path)
    elif DEB_NAME_RE.match(raw):
        src_path, source = None, raw
    else:
        raise r.err(
            snode,
            f"{key}.source",
            f"{raw!r} is neither a path (directory, git checkout, tarball, .deb) "
            "nor a Debian package name such as linux-source-6.1",
        )
    ref = None
    if "ref" in m:
        ref = r.string(m["ref"][1], f"{key}.ref")
        if src_path is None or not (src_path / ".git").exists():
            raise r.err(m["ref"][0], f"{key}.ref", "a ref needs a git checkout as the source")
    patches = None
    skip: tuple[str, ...] = ()
    if "patches" in m:
        pnode = m["patches"][1]
        patches = r.file(pnode, f"{key}.patches")
        from kmatrix.build.patches import SeriesError, load_series

        try:
            series = load_series(patches)
        except SeriesError as e:
            raise r.err(pnode, f"{key}.patches", str(e)) from None
        if "skip" in m:
            skip = r.strings(m["skip"][1], f"{key}.skip")
            names = [p.name for p in series.patches]
            for pat in skip:
                if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                    raise r.err(
                        m["skip"][1],
                        f"{key}.skip",
                        f"{pat!r} matches no patch of {patches} (patches: {', '.join(names)})",
                    )
    elif "skip" in m:
        raise r.err(m["skip"][0], f"{key}.skip", "skip needs patches")
    baseline = None
    if "baseline" in m:
        baseline = r.string(m["baseline"][1], f"{key}.baseline")
        if patches is None:
            raise r.err(
                m["baseline"][0],
                f"{key}.baseline",
                "a baseline needs a patch series (patches:): without one there is nothing "
                "to compare the kernel with",
            )
    config = "tinyconfig"
    if "config" in m:
        cnode = m["config"][1]
        c = r.string(cnode, f"{key}.config")
        if c in CONFIG_TARGETS:
            config = c
        elif "/" in c or c.endswith(".config") or c.startswith("config-"):
            config = str(r.file(cnode, f"{key}.config"))
        else:
            raise r.err(
                cnode,
                f"{key}.config",
                f"{c!r} is neither one of {', '.join(CONFIG_TARGETS)} nor a config file path",
            )
    fragments: list[str] = []
    if "fragments" in m:
        fnodes = m["fragments"][1]
        items = (
            [fnodes] if isinstance(fnodes, yaml.ScalarNode) else r.seq(fnodes, f"{key}.fragments")
        )
        for i, fnode in enumerate(items):
            fkey = f"{key}.fragments[{i}]"
            f = r.string(fnode, fkey)
            if f.startswith(("CONFIG_", "# CONFIG_")):
                if not INLINE_OPTION_RE.match(f):
                    raise r.err(fnode, fkey, f"{f!r} is not CONFIG_NAME=value")
                fragments.append(f)
            elif f.startswith("tree:"):
                rel = f.removeprefix("tree:")
                if not rel or rel.startswith("/") or ".." in Path(rel).parts:
                    raise r.err(fnode, fkey, f"{f!r}: tree: takes a path inside the source")
                fragments.append(f)
            else:
                fragments.append(str(r.file(fnode, fkey)))
    make_vars = r.props(m["make_vars"][1], f"{key}.make_vars") if "make_vars" in m else ()
    for k, _ in make_vars:
        if not MAKE_VAR_RE.match(k):
            raise r.err(m["make_vars"][1], f"{key}.make_vars.{k}", "not a make variable name")
        if k in ("O", "ARCH", "SRCARCH"):
            raise r.err(
                m["make_vars"][1], f"{key}.make_vars.{k}", "set by kmatrix (x86_64, out of tree)"
            )
    return BuildSpec(
        source=source,
        ref=ref,
        patches=patches,
        skip=skip,
        config=config,
        fragments=tuple(fragments),
        make_vars=make_vars,
        baseline=baseline,
    )


def with_series_upto(matrix: Matrix, kernel: str, upto: str) -> Matrix:
    """The matrix with kernel built from its series only through the patch upto (a name or
    its leading part, or `vanilla`); the cells keep their ids, the kernel's baseline twin is
    dropped (a prefix has nothing to be compared with). InputError naming what is wrong."""
    spec = next((k for k in matrix.kernels if k.name == kernel), None)
    if spec is None:
        known = ", ".join(k.name for k in matrix.kernels)
        raise InputError(f"{matrix.path}: no kernel {kernel!r} (kernels: {known})")
    if spec.baseline_of:
        raise InputError(f"{matrix.path}: {kernel!r} is the baseline of {spec.baseline_of!r}")
    if spec.build is None or spec.build.patches is None:
        raise InputError(f"{matrix.path}: kernel {kernel!r} is not built with a patch series")
    from kmatrix.build.patches import load_series
    from kmatrix.build.prefixes import prefix_spec, upto_length

    series = load_series(spec.build.patches)
    k = upto_length(spec.build, series, upto)
    new = dataclasses.replace(
        spec, build=prefix_spec(spec.build, series, k), baseline="", baseline_label=""
    )
    kernels = tuple(
        new if kk.name == kernel else kk for kk in matrix.kernels if kk.name != spec.baseline
    )
    cells = tuple(
        dataclasses.replace(c, kernel=new) if c.kernel.name == kernel else c
        for c in matrix.cells
        if c.kernel.name != spec.baseline
    )
    return dataclasses.replace(matrix, kernels=kernels, cells=cells)
