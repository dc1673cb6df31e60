"""The documentation cannot drift: docs/matrix.md documents exactly the keys the loaders
accept (read from the loaders' own constants and the registered kernel source kinds), its
example matrices load, and every relative link in README.md and docs/ resolves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT
from kmatrix.config import matrix as matrix_keys
from kmatrix.config import profiles
from kmatrix.config import suites as suite_keys
from kmatrix.kernels import KINDS, load_matrix
from kmatrix.kernels import source as build_keys
from kmatrix.results import known_issues

DOCS = ROOT / "docs"
REFERENCE = DOCS / "matrix.md"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@dataclass(frozen=True)
class Mapping:
    """One YAML mapping as the loader reads it: the keys it accepts and those it requires."""

    keys: tuple[str, ...]
    required: tuple[str, ...] = ()
    values: tuple[str, ...] = ()  # fixed values (choices) of its keys the page must name


# docs/matrix.md section id (a backticked path in a heading) -> the loader's mapping there.
MAPPINGS: dict[str, Mapping] = {
    "matrix/NAME.yaml": Mapping(matrix_keys.MATRIX_KEYS, matrix_keys.MATRIX_REQUIRED),
    "defaults": Mapping(matrix_keys.DEFAULTS_KEYS, values=matrix_keys.ACCELS),
    "host_access": Mapping(matrix_keys.HOST_ACCESS_KEYS, matrix_keys.HOST_ACCESS_REQUIRED),
    "kernels[]": Mapping(
        (*matrix_keys.KERNEL_KEYS, *KINDS), matrix_keys.KERNEL_REQUIRED, values=tuple(KINDS)
    ),
    "kernels[].build": Mapping(
        build_keys.BUILD_KEYS,
        build_keys.BUILD_REQUIRED,
        values=(*build_keys.CONFIG_TARGETS, *build_keys.TARBALL_SUFFIXES),
    ),
    "cpus[]": Mapping(matrix_keys.CPU_KEYS, matrix_keys.CPU_REQUIRED),
    "include[]": Mapping(matrix_keys.RULE_KEYS),
    "exclude[]": Mapping(matrix_keys.RULE_KEYS),
    "expect[]": Mapping(
        matrix_keys.EXPECT_KEYS, matrix_keys.EXPECT_REQUIRED, values=matrix_keys.EXPECT_OUTCOMES
    ),
    "suites": Mapping(suite_keys.SUITE_KEYS),
    "suites[]": Mapping(suite_keys.SUITE_RULE_KEYS),
    "suites.kselftest": Mapping(suite_keys.KSELFTEST_KEYS, suite_keys.KSELFTEST_REQUIRED),
    "suites.kselftest.targets[]": Mapping(suite_keys.TARGET_KEYS, suite_keys.TARGET_REQUIRED),
    "suites.kunit": Mapping(suite_keys.KUNIT_KEYS),
    "devices[]": Mapping(
        profiles.PROFILE_KEYS,
        profiles.PROFILE_REQUIRED,
        values=(*profiles.MACHINES, *profiles.IOMMUS),
    ),
    "devices[].devices[]": Mapping(profiles.QEMU_DEVICE_KEYS, profiles.QEMU_DEVICE_REQUIRED),
    "devices[].objects[]": Mapping(profiles.QEMU_OBJECT_KEYS, profiles.QEMU_OBJECT_REQUIRED),
    "devices[].expect_pci[]": Mapping(profiles.PCI_EXPECT_KEYS, profiles.PCI_EXPECT_REQUIRED),
    "devices[].scratch_disk": Mapping(profiles.SCRATCH_DISK_KEYS, profiles.SCRATCH_DISK_REQUIRED),
    "devices[].memory_hotplug": Mapping(
        profiles.MEMORY_HOTPLUG_KEYS, profiles.MEMORY_HOTPLUG_REQUIRED
    ),
    "devices[].gpu_stubs": Mapping(profiles.GPU_STUBS_KEYS),
    "devices[].host_devices[]": Mapping(profiles.HOST_DEVICE_KEYS, profiles.HOST_DEVICE_REQUIRED),
    "known-issues.yaml": Mapping(known_issues.FILE_KEYS, known_issues.FILE_KEYS),
    "issues[]": Mapping(known_issues.ISSUE_KEYS, known_issues.ISSUE_REQUIRED),
}

FENCE_RE = re.compile(r"^(```|~~~)")
HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
KEY_ROW_RE = re.compile(r"^\|\s*`([^`]+)`\s*\|")
CODE_SPAN_RE = re.compile(r"`[^`]*`")
LINK_RE = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


# --- reading the reference ---------------------------------------------------------------------


@dataclass
class Section:
    heading: str
    ids: list[str]
    rows: dict[str, str] = field(default_factory=dict)  # documented key -> its table row
    text: list[str] = field(default_factory=list)


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE_RE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            yield n, line


def reference_sections() -> list[Section]:
    out: list[Section] = []
    for _, line in prose_lines(REFERENCE.read_text()):
        h = HEADING_RE.match(line)
        if h:
            out.append(Section(h.group(2), re.findall(r"`([^`]+)`", h.group(2))))
            continue
        if not out:
            continue
        out[-1].text.append(line)
        row = KEY_ROW_RE.match(line)
        if row:
            key = row.group(1)
            assert key not in out[-1].rows, f"{key!r} twice under {out[-1].heading!r}"
            out[-1].rows[key] = line
    return out


def documented() -> dict[str, Section]:
    """Section id -> the section documenting that mapping."""
    found: dict[str, Section] = {}
    for s in reference_sections():
        ids = [i for i in s.ids if i in MAPPINGS]
        if s.rows:
            assert ids, (
                f"docs/matrix.md: {s.heading!r} documents keys ({', '.join(s.rows)}) but names "
                f"no mapping the loader reads (one of: {', '.join(MAPPINGS)})"
            )
        for i in ids:
            assert i not in found, f"docs/matrix.md documents {i} twice"
            found[i] = s
    return found


def test_every_mapping_the_loader_reads_has_a_section() -> None:
    missing = sorted(set(MAPPINGS) - set(documented()))
    assert not missing, f"docs/matrix.md has no section for {missing}"


@pytest.mark.parametrize("section_id", list(MAPPINGS))
def test_reference_documents_exactly_the_accepted_keys(section_id: str) -> None:
    mapping = MAPPINGS[section_id]
    section = documented().get(section_id)
    assert section is not None, f"docs/matrix.md has no section for {section_id}"
    undocumented = [k for k in mapping.keys if k not in section.rows]
    rejected = [k for k in section.rows if k not in mapping.keys]
    assert not undocumented, f"{section_id}: accepted keys, not documented: {undocumented}"
    assert not rejected, f"{section_id}: documented keys the loader rejects: {rejected}"
    marked = {k for k, row in section.rows.items() if "**required**" in row}
    assert marked == set(mapping.required), (
        f"{section_id}: marked **required**: {sorted(marked)}; "
        f"the loader requires: {sorted(mapping.required)}"
    )
    text = "\n".join(section.text)
    unnamed = [v for v in mapping.values if f"`{v}`" not in text]
    assert not unnamed, f"{section_id}: values the loader accepts, not named: {unnamed}"


def test_the_reference_checks_every_registered_source_kind() -> None:
    # A new kind (KINDS) must be a row of kernels[]: the check above covers it; this test
    # fails if the check stopped reading KINDS.
    assert set(KINDS) <= set(MAPPINGS["kernels[]"].keys)
    assert {"deb", "image", "tree", "build"} <= set(KINDS)


def yaml_blocks(page: Path) -> Iterator[str]:
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```yaml":
            j = i + 1
            while not lines[j].strip().startswith("```"):
                j += 1
            yield "\n".join(lines[i + 1 : j]) + "\n"
            i = j
        i += 1


def example_matrices() -> list[tuple[str, str]]:
    return [
        (f"{page.name}#{n}", block)
        for page in PAGES
        for n, block in enumerate(yaml_blocks(page))
        if re.search(r"^kernels:", block, re.MULTILINE) and re.search(r"^cpus:", block, re.M)
    ]


def test_the_front_page_and_the_reference_show_a_matrix() -> None:
    where = {name.split("#")[0] for name, _ in example_matrices()}
    assert {"README.md", "matrix.md"} <= where, where


@pytest.mark.parametrize(("name", "text"), example_matrices(), ids=lambda v: str(v)[:20])
def test_example_matrices_load(name: str, text: str, tmp_path: Path) -> None:
    """A whole matrix shown in the docs is valid as written (profiles by name resolve to the
    repository's matrix/devices/)."""
    (tmp_path / "devices").symlink_to(ROOT / "matrix" / "devices")
    path = tmp_path / "example.yaml"
    path.write_text(text)
    assert load_matrix(path).cells, name


# --- links ---------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped (`_` and `-`
    kept), spaces to hyphens."""
    text = heading.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(page.read_text()):
        h = HEADING_RE.match(line)
        if h:
            base = slug(h.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    out |= set(re.findall(r"<a (?:name|id)=\"([^\"]+)\"", page.read_text()))
    return out


def links(page: Path) -> Iterator[tuple[int, str]]:
    for n, line in prose_lines(page.read_text()):
        for m in LINK_RE.finditer(CODE_SPAN_RE.sub("", line)):
            yield n, m.group(1)


def test_slug_matches_github() -> None:
    assert slug("Device profiles: `devices[]`, `matrix/devices/NAME.yaml`") == (
        "device-profiles-devices-matrixdevicesnameyaml"
    )
    assert slug("Expected PCI devices: `devices[].expect_pci[]`") == (
        "expected-pci-devices-devicesexpect_pci"
    )
    assert slug("Scale-out: shards, merge, CI engines, progress") == (
        "scale-out-shards-merge-ci-engines-progress"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for line, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{page.name}:{line}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{page.name}:{line}: {target}: no heading #{anchor} in {dest.name}")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_linked_from_the_front_page() -> None:
    linked = {
        (ROOT / target.partition("#")[0]).resolve() for _, target in links(ROOT / "README.md")
    }
    orphans = [p.name for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"
