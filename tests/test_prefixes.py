"""Series prefixes (kmatrix.build.prefixes): the canonical specs of a baseline and of bisection
steps, the matrix's `baseline:` key and its twin cells, and `--kmatrix-series-upto`. Nothing
is fetched or built: build keys are computed from a stand-in source identity."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest

from kmatrix.build.builder import build_key, recorded_failure, toolchain_id
from kmatrix.build.patches import load_series
from kmatrix.build.prefixes import PrefixError, applicable, prefix_spec, upto_length
from kmatrix.build.sources import KernelSource, cached_source
from kmatrix.config.specs import BuildSpec
from kmatrix.errors import InputError, MatrixError
from kmatrix.kernels import load_matrix
from kmatrix.kernels.source import with_series_upto

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("0001-a.patch", "0002-b.patch", "0003-c.patch", "0004-d.patch")

MATRIX = """
kernels:
  - name: k
    build:
      source: linux-source-6.1
      patches: series
      skip: ["0003-*"]
      baseline: vanilla
      fragments: [CONFIG_PRINTK=y]
  - name: plain
    build: {source: linux-source-6.1}
cpus: [Nehalem, Haswell]
devices: [{name: a}, {name: b}]
"""


def write(tmp_path: Path, text: str = MATRIX) -> Path:
    series = tmp_path / "series"
    series.mkdir(exist_ok=True)
    for i, name in enumerate(NAMES):
        (series / name).write_text(f"--- a/x{i}.c\n+++ b/x{i}.c\n@@ -1 +1 @@\n-a\n+b\n")
    p = tmp_path / "m.yaml"
    p.write_text(textwrap.dedent(text).lstrip())
    return p


def key(spec: BuildSpec) -> str:
    src = KernelSource("linux-source-6.1", "deb", Path("/nonexistent"), "6.1.1", "deb:abc")
    series = load_series(spec.patches) if spec.patches is not None else None
    return build_key(spec, src, series, "gcc 12")


def test_prefix_specs_are_canonical(tmp_path: Path) -> None:
    write(tmp_path)
    series = load_series(tmp_path / "series")
    spec = BuildSpec("linux-source-6.1", patches=tmp_path / "series", skip=("0003-*",),
                     baseline="vanilla")  # fmt: skip
    assert [p.name for p in applicable(spec, series)] == ["0001-a.patch", "0002-b.patch",
                                                          "0004-d.patch"]  # fmt: skip
    whole = prefix_spec(spec, series, 3)
    assert whole == dataclasses.replace(spec, baseline=None), "the kernel's own build"
    assert key(whole) == key(spec), "so the run's build is reused"
    none = prefix_spec(spec, series, 0)
    assert none.patches is None and none.skip == ()
    two = prefix_spec(spec, series, 2)
    assert two.skip == ("0003-c.patch", "0004-d.patch"), "every patch left out, by its name"
    # Another kernel of the same series with another skip glob shares the prefix build.
    other = BuildSpec("linux-source-6.1", patches=tmp_path / "series", skip=("0004-*",))
    assert key(prefix_spec(other, series, 2)) == key(two)
    with pytest.raises(ValueError):
        prefix_spec(spec, series, 4)


def test_vanilla_prefix_is_the_unpatched_build(tmp_path: Path) -> None:
    write(tmp_path)
    series = load_series(tmp_path / "series")
    spec = BuildSpec("linux-source-6.1", patches=tmp_path / "series", fragments=("CONFIG_X=y",))
    assert key(prefix_spec(spec, series, 0)) == key(
        BuildSpec("linux-source-6.1", fragments=("CONFIG_X=y",))
    )


def test_upto_names(tmp_path: Path) -> None:
    write(tmp_path)
    series = load_series(tmp_path / "series")
    spec = BuildSpec("linux-source-6.1", patches=tmp_path / "series", skip=("0003-*",))
    assert upto_length(spec, series, "vanilla") == 0
    assert upto_length(spec, series, "0002-b.patch") == 2
    assert upto_length(spec, series, "0002-b") == 2
    assert upto_length(spec, series, "0004") == 3
    with pytest.raises(PrefixError, match="'0009' names no patch"):
        upto_length(spec, series, "0009")
    with pytest.raises(PrefixError, match="'000' is ambiguous"):
        upto_length(spec, series, "000")
    with pytest.raises(PrefixError, match=r"0003-c\.patch is left out of this build by its skip"):
        upto_length(spec, series, "0003")


def test_baseline_twin_cells(tmp_path: Path) -> None:
    m = load_matrix(write(tmp_path))
    assert [k.name for k in m.kernels] == ["k", "k+baseline", "plain"]
    k, twin, _ = m.kernels
    assert k.baseline == "k+baseline" and twin.baseline_of == "k"
    assert k.baseline_label == twin.baseline_label == "vanilla"
    assert twin.build is not None and twin.build.patches is None
    assert twin.build.fragments == ("CONFIG_PRINTK=y",), "same config, no series"
    ids = [c.id for c in m.cells]
    assert ids[:8] == [
        "k/Nehalem/a", "k/Nehalem/b", "k/Haswell/a", "k/Haswell/b",
        "k+baseline/Nehalem/a", "k+baseline/Nehalem/b", "k+baseline/Haswell/a",
        "k+baseline/Haswell/b",
    ]  # fmt: skip
    c = m.cell("k/Haswell/b")
    assert c.baseline_cell == "k+baseline/Haswell/b" and c.baseline_of == ""
    t = m.cell("k+baseline/Haswell/b")
    assert t.baseline_of == "k/Haswell/b" and t.baseline_cell == ""


def test_baseline_through_a_patch(tmp_path: Path) -> None:
    m = load_matrix(write(tmp_path, MATRIX.replace("baseline: vanilla", "baseline: '0002'")))
    twin = m.kernels[1]
    assert twin.baseline_label == "through 0002-b.patch"
    assert twin.build is not None and twin.build.skip == ("0003-c.patch", "0004-d.patch")


def test_rules_place_the_twin_with_its_kernel(tmp_path: Path) -> None:
    text = (
        MATRIX + "exclude:\n  - {kernel: k, cpu: Nehalem}\n  - {kernel: '*+baseline', device: b}\n"
    )
    m = load_matrix(write(tmp_path, text))
    ids = {c.id for c in m.cells if c.kernel.name.startswith("k")}
    assert ids == {"k/Haswell/a", "k/Haswell/b", "k+baseline/Haswell/a"}
    exp = MATRIX + "expect:\n  - {kernel: 'k*', cpu: Nehalem, outcome: no-boot}\n"
    m = load_matrix(write(tmp_path, exp))
    assert m.cell("k+baseline/Nehalem/a").expected("test_x") is not None
    exp = MATRIX + "expect:\n  - {kernel: k, cpu: Nehalem, outcome: no-boot}\n"
    m = load_matrix(write(tmp_path, exp))
    assert m.cell("k+baseline/Nehalem/a").expected("test_x") is None, "named by its own name"


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        (
            "baseline: vanilla",
            "baseline: '0009'",
            r":7: kernels\[0\].build.baseline: '0009' names no patch of the series",
        ),
        (
            "baseline: vanilla",
            "baseline: '0003'",
            r":7: kernels\[0\].build.baseline: 0003-c.patch is left out of this build",
        ),
        (
            "baseline: vanilla",
            "baseline: '0004'",
            r":7: kernels\[0\].build.baseline: '0004' is the last patch the build applies",
        ),
        (
            "build: {source: linux-source-6.1}",
            "build: {source: linux-source-6.1, baseline: vanilla}",
            r":10: kernels\[1\].build.baseline: a baseline needs a patch series",
        ),
        (
            "  - name: plain",
            "  - name: k+baseline",
            r":9: kernels\[1\].name: 'k\+baseline' is the name of the baseline of kernels\[0\]",
        ),
    ],
)
def test_baseline_errors_name_file_line_and_key(
    tmp_path: Path, old: str, new: str, where: str
) -> None:
    assert old in MATRIX
    with pytest.raises(MatrixError, match=r"m\.yaml" + where):
        load_matrix(write(tmp_path, MATRIX.replace(old, new, 1)))


def test_series_upto(tmp_path: Path) -> None:
    m = load_matrix(write(tmp_path))
    two = with_series_upto(m, "k", "0002")
    assert [k.name for k in two.kernels] == ["k", "plain"], "a prefix has no baseline twin"
    assert {c.id for c in two.cells} == {c.id for c in m.cells if "+baseline" not in c.id}
    k = two.kernels[0]
    assert k.build is not None and k.build.skip == ("0003-c.patch", "0004-d.patch")
    assert k.baseline == "" and two.cell("k/Haswell/a").kernel == k
    van = with_series_upto(m, "k", "vanilla").kernels[0]
    assert van.build is not None and van.build.patches is None
    for name, upto, match in [
        ("nope", "0001", "no kernel 'nope'"),
        ("plain", "0001", "'plain' is not built with a patch series"),
        ("k+baseline", "0001", "'k\\+baseline' is the baseline of 'k'"),
        ("k", "0009", "'0009' names no patch"),
    ]:
        with pytest.raises(InputError, match=match):
            with_series_upto(m, name, upto)


def test_bisect_example_matrix() -> None:
    m = load_matrix(ROOT / "matrix" / "bisect.yaml")
    names = [k.name for k in m.kernels]
    assert names == ["kmx-bisect-test", "kmx-bisect-test+baseline", "kmx-bisect-build",
                     "kmx-bisect-build+baseline"]  # fmt: skip
    a, ab, b, bb = m.kernels
    assert ab.build == bb.build, "both kernels' vanilla baselines are one build"
    assert a.build is not None and b.build is not None and ab.build is not None
    assert key(ab.build) == key(dataclasses.replace(b.build, patches=None, baseline=None))


def test_recorded_failure_is_per_build_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMATRIX_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    (src / "scripts" / "kconfig").mkdir(parents=True)
    (src / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 0\nEXTRAVERSION =\n")
    write(tmp_path)
    series = load_series(tmp_path / "series")
    spec = BuildSpec(str(src), patches=tmp_path / "series")
    one, two = prefix_spec(spec, series, 1), prefix_spec(spec, series, 2)
    assert recorded_failure(one) is None
    source = cached_source(str(src))
    assert source is not None
    key = build_key(one, source, series, toolchain_id(()))
    failed = tmp_path / "cache" / "builds" / "failed"
    failed.mkdir(parents=True)
    (failed / f"{key}.json").write_text(json.dumps({"error": "x.c:1:1: error: boom"}))
    assert recorded_failure(one) == "x.c:1:1: error: boom"
    assert recorded_failure(two) is None, "another prefix is another build"
