"""`kmatrix build`: build (or find in the cache) a matrix's source-built kernels, and the
kselftest targets their cells run (matrix `suites.kselftest`)."""

from __future__ import annotations

import time
from pathlib import Path

from kmatrix.build.builder import build_kernel
from kmatrix.build.kselftest import (
    SelftestSource,
    build_target,
    missing_options,
    requirements,
    target_files,
)
from kmatrix.cli.signals import sigterm_unwinds
from kmatrix.errors import BuildFailure, KmatrixError
from kmatrix.guest.kselftest import selftest_source
from kmatrix.kernels import load_matrix
from kmatrix.kernels.kconfig import parse_config


@sigterm_unwinds()
def build_command(matrix_path: Path, names: list[str]) -> int:
    """`kmatrix build`: builds (or finds in the cache) the matrix's source-built kernels."""
    m = load_matrix(matrix_path)
    kernels = [k for k in m.kernels if k.build is not None and (not names or k.name in names)]
    unknown = set(names) - {k.name for k in m.kernels if k.build is not None}
    if unknown:
        built_names = ", ".join(k.name for k in m.kernels if k.build is not None) or "none"
        raise KmatrixError(
            f"{m.path}: no source-built kernel {', '.join(sorted(unknown))} (they are: "
            f"{built_names})"
        )

    failed = 0
    configs: dict[str, dict[str, str]] = {}  # kernel name -> its built config
    for k in kernels:
        assert k.build is not None
        t0 = time.monotonic()
        try:
            b = build_kernel(k.build, k.origin)
        except BuildFailure as e:
            failed += 1
            print(f"{k.name}: BUILD FAILED\n{e}", flush=True)
            continue
        configs[k.name] = parse_config(b.config_path.read_text(errors="replace"))
        how = "cached, nothing compiled" if b.cached else f"built in {b.seconds:.0f}s"
        print(
            f"{k.name}: {b.version} {how} ({time.monotonic() - t0:.1f}s here); {b.image}",
            flush=True,
        )
        for p in b.patches:
            print(f"    {p.patch}: {p.short()}")
        for d in b.dropped:
            print(f"    config: {d.option}={d.wanted} (from {d.fragment}) is {d.got} in .config")
    # The selftests the cells of these kernels run, once per source, series and target.
    wanted: dict[tuple[SelftestSource, str], str] = {}
    for c in m.cells:
        if c.kernel.name in configs and c.suites.kselftest is not None:
            sel, _ = selftest_source(c)
            for t in c.suites.kselftest.targets if sel is not None else ():
                assert sel is not None
                wanted.setdefault((sel, t.name), c.kernel.name)
    for (sel, target), kernel in wanted.items():
        where = target_files(sel, target)
        missing = missing_options(requirements(where / "config"), configs[kernel]) if where else []
        if missing:
            print(f"{kernel}: kselftest {target}: not applicable, needs {', '.join(missing)}")
            continue
        t0 = time.monotonic()
        try:
            tb = build_target(sel, target)
        except KmatrixError as e:
            failed += 1
            print(f"{kernel}: kselftest {target}: BUILD FAILED\n{e}", flush=True)
            continue
        how = "cached, nothing compiled" if tb.cached else f"built in {tb.seconds:.0f}s"
        print(
            f"{kernel}: kselftest {target}: {len(tb.programs)} programs, {how} "
            f"({time.monotonic() - t0:.1f}s here)",
            flush=True,
        )
    return 1 if failed else 0
