"""kmatrix's built-in suites in a plain `pytest` run, wherever it runs.

A repository that uses an installed kmatrix keeps its own matrix/ and testcases/; `pytest`
there runs kmatrix's built-in suites (boot, sched, memory, drivers, GPU) as well as the
repository's own tests, as `kmatrix run` does. So when pytest was given no paths (it collects
the invocation directory or the `testpaths` ini value), a matrix was found and the
`kmatrix_builtin_suites` ini option is true (the default), the bundled testcases directory
joins what pytest collects. Paths given on the command line (`pytest testcases`,
`pytest file.py::test`) are collected alone, as pytest users expect, unless
`--kmatrix-builtin-suites` asks for the built-in suites too (`kmatrix run` does).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kmatrix.errors import InfraError
from kmatrix.resources import data_dir

INI = "kmatrix_builtin_suites"


def add_option(parser: pytest.Parser, group: pytest.OptionGroup) -> None:
    group.addoption(
        "--kmatrix-builtin-suites",
        action="store_true",
        help="collect kmatrix's built-in suites as well as the paths given (without paths "
        "they are collected unless the kmatrix_builtin_suites ini option is false)",
    )
    parser.addini(
        INI,
        "collect kmatrix's built-in suites too when pytest is given no paths (default: true)",
        type="bool",
        default=True,
    )


def add_builtin_suites(config: pytest.Config) -> Path | None:
    """Adds the built-in suites to config.args when the rules above say so; returns their
    directory when added."""
    if not config.getoption("kmatrix_builtin_suites") and (
        config.args_source == pytest.Config.ArgsSource.ARGS or not config.getini(INI)
    ):
        return None
    try:
        suites = data_dir("testcases").resolve()
    except InfraError as e:
        raise pytest.UsageError(f"kmatrix: {e}") from None
    here = Path(config.invocation_params.dir)
    for arg in config.args:
        path = (here / arg.split("::", 1)[0]).resolve()
        if path == suites or path in suites.parents or suites in path.parents:
            return None  # already collected (kmatrix's own checkout: testpaths = testcases)
    config.args.append(str(suites))
    return suites
