"""What kmatrix knows of kselftest targets before building or booting anything: the
programs (the Makefile's emit_tests), the kernel options they need against a real kernel
config (the prerequisite check), the runner's per-program timeout."""

from __future__ import annotations

from pathlib import Path

from kmatrix.build.kselftest import (
    SelftestSource,
    emit_programs,
    missing_options,
    requirements,
    settings_timeout,
    target_files,
)
from kmatrix.kernels.kconfig import parse_config

DATA = Path(__file__).parent / "data" / "kselftest"
TREE = DATA / "tree"


def test_prerequisites_of_a_real_target_on_a_real_tinyconfig_kernel() -> None:
    """6.1's cgroup/config against the patched.yaml 6.1 tinyconfig build's .config: the
    options that kernel lacks, named, in the config file's order."""
    required = requirements(DATA / "cgroup-6.1.config")
    assert list(required) == [
        "CONFIG_CGROUPS", "CONFIG_CGROUP_CPUACCT", "CONFIG_CGROUP_FREEZER",
        "CONFIG_CGROUP_SCHED", "CONFIG_MEMCG", "CONFIG_MEMCG_KMEM", "CONFIG_PAGE_COUNTER",
    ]  # fmt: skip
    config = parse_config((DATA / "kmx-6.1-tinyconfig.config").read_text())
    assert missing_options(required, config) == [
        "CONFIG_CGROUP_CPUACCT", "CONFIG_CGROUP_FREEZER", "CONFIG_MEMCG",
        "CONFIG_MEMCG_KMEM", "CONFIG_PAGE_COUNTER",
    ]  # fmt: skip
    met = {**config, **{k: "y" for k in required}}
    assert missing_options(required, met) == []


def test_prerequisite_values() -> None:
    """A module satisfies y; n means absent; other values must match."""
    required = {"CONFIG_A": "y", "CONFIG_B": "m", "CONFIG_C": "n", "CONFIG_HZ": "250"}
    assert missing_options(required, {"CONFIG_A": "m", "CONFIG_B": "y", "CONFIG_HZ": "250"}) == []
    assert missing_options(required, {"CONFIG_C": "y", "CONFIG_HZ": "1000"}) == [
        "CONFIG_A", "CONFIG_B", "CONFIG_C=n (is y)", "CONFIG_HZ=250 (is 1000)",
    ]  # fmt: skip
    assert requirements(DATA / "no-such-config") == {}


def test_programs_and_settings_from_the_source_tree() -> None:
    assert emit_programs(TREE, "demo") == ("demo_one", "demo_two", "demo_script.sh")
    assert emit_programs(TREE, "no-such-target") == ()
    where = target_files(SelftestSource(str(TREE)), "demo")
    assert where == TREE / "tools/testing/selftests/demo"
    assert settings_timeout(where) == 120
    # No settings file: the runner's default, as its runner.sh says.
    assert (
        settings_timeout(TREE / "tools/testing/selftests", TREE / "tools/testing/selftests") == 45
    )
