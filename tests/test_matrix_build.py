"""Matrix `build:` kernels and `expect:` rules: parsing, per-cell expectations, and one
precise file:line:key error per kind of bad input. Nothing is fetched or built."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kmatrix.errors import MatrixError
from kmatrix.kernels import load_matrix

ROOT = Path(__file__).resolve().parent.parent

BASE = """
kernels:
  - name: v2
    build:
      source: linux-source-6.12
      patches: series
      skip: ["0002-*"]
      config: tinyconfig
      fragments: [tree:kernel/configs/kvm_guest.config, frag.config, CONFIG_PRINTK=y]
  - name: v3
    build:
      source: linux-source-6.12
      make_vars: {KCFLAGS: -march=x86-64-v3}
  - name: deb
    deb: linux-image-6.1.0-57-cloud-amd64-unsigned
cpus: [Nehalem, Haswell]
devices: [{name: plain}]
"""


def write(tmp_path: Path, text: str) -> Path:
    series = tmp_path / "series"
    series.mkdir(exist_ok=True)
    for name in ("0001-a.patch", "0002-b.patch"):
        (series / name).write_text("--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n-a\n+b\n")
    (tmp_path / "frag.config").write_text("CONFIG_SMP=y\n")
    p = tmp_path / "m.yaml"
    p.write_text(textwrap.dedent(text).lstrip())
    return p


def test_build_kernels_parse(tmp_path: Path) -> None:
    m = load_matrix(write(tmp_path, BASE))
    v2, v3, deb = m.kernels
    assert v2.source == "build" and v2.location == "linux-source-6.12"
    assert v2.build is not None and v3.build is not None and deb.build is None
    assert v2.build.patches == tmp_path / "series"
    assert v2.build.skip == ("0002-*",)
    assert v2.build.fragments == (
        "tree:kernel/configs/kvm_guest.config",
        str(tmp_path / "frag.config"),
        "CONFIG_PRINTK=y",
    )
    assert v3.build.config == "tinyconfig" and v3.build.patches is None
    assert v3.build.make_vars == (("KCFLAGS", "-march=x86-64-v3"),)


def test_patched_example_matrix() -> None:
    m = load_matrix(ROOT / "matrix" / "patched.yaml")
    assert {k.name for k in m.kernels} == {"kmx-6.1", "kmx-6.12", "kmx-6.12-v3"}
    assert all(k.build is not None for k in m.kernels)
    expected = {c.id: e.outcome for c in m.cells if (e := c.expected("test_x")) is not None}
    assert expected == {"kmx-6.12-v3/Nehalem/virtio": "no-boot"}


EXPECT = (
    BASE
    + """
expect:
  - {kernel: v3, cpu: Nehalem, outcome: no-boot, reason: AVX2 kernel on a pre-AVX2 CPU}
  - {kernel: "v*", cpu: Haswell, test: test_flaky*, outcome: fail}
  - {kernel: v3, cpu: Nehalem, test: test_clean_poweroff, outcome: pass}
"""
)


def test_expectations_per_cell_and_test(tmp_path: Path) -> None:
    m = load_matrix(write(tmp_path, EXPECT))
    neh = m.cell("v3/Nehalem/plain")
    e = neh.expected("test_userspace_reached")
    assert e is not None and e.outcome == "no-boot" and e.reason == "AVX2 kernel on a pre-AVX2 CPU"
    assert e.origin.endswith("m.yaml:19")
    assert neh.expected("test_clean_poweroff") is None, "the later, more specific rule wins"
    has = m.cell("v2/Haswell/plain")
    f = has.expected("test_flaky_thing")
    assert f is not None and f.outcome == "fail"
    assert has.expected("test_other") is None
    assert m.cell("deb/Haswell/plain").expected("test_flaky_thing") is None
    assert m.cell("v2/Nehalem/plain").expect == ()


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        (
            "      config: tinyconfig\n",
            "      config: bigconfig\n",
            r":7: kernels\[0\].build.config: 'bigconfig' is neither",
        ),
        (
            "      config: tinyconfig\n",
            "      config: missing.config\n",
            r":7: kernels\[0\].build.config: file not found",
        ),
        (
            '      skip: ["0002-*"]\n',
            '      skip: ["0009-*"]\n',
            r":6: kernels\[0\].build.skip: '0009-\*' matches no patch",
        ),
        (
            "      patches: series\n",
            "      patches: nowhere\n",
            r":5: kernels\[0\].build.patches: file not found",
        ),
        (
            "      source: linux-source-6.12\n      patches",
            "      source: Linux Source\n      patches",
            r":4: kernels\[0\].build.source: 'Linux Source' is neither a path",
        ),
        (
            "      source: linux-source-6.12\n      patches",
            "      source: linux-source-6.12\n      ref: v6.12\n      patches",
            r":5: kernels\[0\].build.ref: a ref needs a git checkout",
        ),
        ("CONFIG_PRINTK=y]", "PRINTK=y]", r":8: kernels\[0\].build.fragments\[2\]: file not found"),
        (
            "CONFIG_PRINTK=y]",
            "CONFIG_PRINTK]",
            r":8: kernels\[0\].build.fragments\[2\]: 'CONFIG_PRINTK' is not CONFIG_NAME=value",
        ),
        (
            "CONFIG_PRINTK=y]",
            "tree:../etc/passwd]",
            r":8: kernels\[0\].build.fragments\[2\]: 'tree:../etc/passwd': tree: takes a path",
        ),
        (
            "{KCFLAGS: -march=x86-64-v3}",
            "{O: /tmp/x}",
            r":12: kernels\[1\].build.make_vars.O: set by kmatrix",
        ),
        (
            "{KCFLAGS: -march=x86-64-v3}",
            "{KC-FLAGS: x}",
            r":12: kernels\[1\].build.make_vars.KC-FLAGS: not a make variable",
        ),
        (
            "      make_vars:",
            "      mak_vars:",
            r":12: kernels\[1\].build.mak_vars: unknown key \(valid keys: baseline, config, "
            r"fragments, make_vars, patches, ref, skip, source\)",
        ),
        (
            "    deb: linux-image",
            "    build: {source: linux-source-6.1}\n    deb: linux-image",
            r":13: kernels\[2\]: kernel 'deb' needs exactly one of deb, image, tree, build",
        ),
    ],
)
def test_build_errors_name_file_line_and_key(
    tmp_path: Path, old: str, new: str, where: str
) -> None:
    assert old in BASE
    p = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(MatrixError, match=r"m\.yaml" + where):
        load_matrix(p)


@pytest.mark.parametrize(
    ("rule", "where"),
    [
        (
            "{kernel: v3, outcome: boots}",
            r":18: expect\[0\].outcome: 'boots' is not one of pass, no-boot, build-fail, fail",
        ),
        (
            "{kernel: v4, outcome: no-boot}",
            r":18: expect\[0\].kernel: 'v4' matches no kernel \(known: deb, v2, v3\)",
        ),
        ("{cpu: Zen, outcome: no-boot}", r":18: expect\[0\].cpu: 'Zen' matches no cpu"),
        ("{kernel: v3}", r":18: expect\[0\].outcome: required key is missing"),
        (
            "{kernel: deb, outcome: build-fail}",
            r":18: expect\[0\].outcome: build-fail matches no kernel built from source",
        ),
        ("{kernel: v3, outcome: fail, why: x}", r":18: expect\[0\].why: unknown key"),
    ],
)
def test_expect_errors_name_file_line_and_key(tmp_path: Path, rule: str, where: str) -> None:
    p = write(tmp_path, BASE + f"expect:\n  - {rule}\n")
    with pytest.raises(MatrixError, match=r"m\.yaml" + where):
        load_matrix(p)
