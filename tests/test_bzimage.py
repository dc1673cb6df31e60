"""Tests for kmatrix.bzimage.

Three layers:

* synthetic bzImage/ELF blobs built here, covering header parsing, every error path, each
  payload magic, and a full extract round trip per compression;
* tests/data/kernels/: the first bytes of two real Debian bzImages (linux-image-6.1.0-57-amd64
  and linux-image-6.12.117+deb12-cloud-amd64, unsigned), i.e. real setup headers followed by
  the start of a real xz / zstd payload;
* whole real kernels from $KMATRIX_TEST_KERNELS (searched recursively for vmlinuz-*), skipped
  when the variable is unset.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import random
import shutil
import stat
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from kmatrix.kernels import bzimage
from kmatrix.kernels.bzimage import (
    KernelImageError,
    KernelImageInfo,
    elf_has_pvh_note,
    extract_vmlinux,
    read_kernel_image,
)

DATA = Path(__file__).parent / "data" / "kernels"

# --------------------------------------------------------------------------------------------
# Synthetic image builders
# --------------------------------------------------------------------------------------------

VERSION = b"6.6.6-kmx (builder@host) #3 SMP PREEMPT_DYNAMIC Thu Jan  1 00:00:00 UTC 2026"
VERSION_AT = 0x300  # where the builder puts the kernel_version string (pointer = 0x100)
PM_PREFIX = 0x40  # bytes of "decompressor code" before the payload


def make_bzimage(
    payload: bytes,
    *,
    setup_sects: int = 1,
    protocol: int = 0x20F,
    version: bytes = VERSION + b"\x00",
    kver_ptr: int = VERSION_AT - 0x200,
    magic: bytes = b"HdrS",
    payload_length: int | None = None,
    syssize: int | None = None,
) -> bytes:
    """A minimal bzImage: setup area with a header, then protected-mode code with the payload."""
    setup_size = ((setup_sects or 4) + 1) * 512
    setup = bytearray(setup_size)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x202:0x206] = magic
    struct.pack_into("<H", setup, 0x206, protocol)
    struct.pack_into("<H", setup, 0x20E, kver_ptr)
    setup[VERSION_AT : VERSION_AT + len(version)] = version
    pm = bytearray(b"\xcc" * PM_PREFIX + payload + b"\x90" * 48)
    pm += b"\x00" * (-len(pm) % 16)
    struct.pack_into("<I", setup, 0x1F4, len(pm) // 16 if syssize is None else syssize)
    struct.pack_into(
        "<II", setup, 0x248, PM_PREFIX, len(payload) if payload_length is None else payload_length
    )
    return bytes(setup + pm)


def make_elf(
    banners: tuple[bytes, ...] = (b"Linux version " + VERSION[:26] + b"(gcc 12) " + VERSION[26:],),
    *,
    notes: tuple[tuple[bytes, int], ...] = ((b"Xen", 6), (b"Xen", 18)),
    note_align: int = 4,
    ei_class: int = 2,
    ei_data: int = 1,
    machine: int = 62,
    load_vaddr: int = 0xFFFFFFFF81000000,
    with_sections: bool = True,
    banner_outside_rodata: bool = False,
) -> bytes:
    """A small x86-64 "vmlinux": one PT_LOAD, one PT_NOTE, .rodata holding the banners."""

    def pad(b: bytes) -> bytes:
        return b + b"\x00" * (-len(b) % note_align)

    note_blob = b""
    for owner, n_type in notes:
        name = owner + b"\x00"
        desc = struct.pack("<I", 0x1000000)
        note_blob += struct.pack("<III", len(name), len(desc), n_type) + pad(name) + pad(desc)

    rodata = b"\x00" * 16
    for banner in banners:
        rodata += banner + b"\n\x00" + b"\x00" * 7
    other = b"filler\x00" * 4
    if banner_outside_rodata:
        rodata, other = other, rodata

    note_off = 0x100
    rodata_off = 0x400
    other_off = rodata_off + len(rodata) + 16
    shstrtab = b"\x00.rodata\x00.shstrtab\x00.other\x00"
    shstrtab_off = other_off + len(other)
    shoff = (shstrtab_off + len(shstrtab) + 7) & ~7
    shdrs = b"\x00" * 64  # SHN_UNDEF
    shdrs += struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, rodata_off, len(rodata), 0, 0, 1, 0)
    shdrs += struct.pack("<IIQQQQIIQQ", 9, 3, 0, 0, shstrtab_off, len(shstrtab), 0, 0, 1, 0)
    shdrs += struct.pack("<IIQQQQIIQQ", 19, 1, 2, 0, other_off, len(other), 0, 0, 1, 0)

    phdrs = struct.pack("<IIQQQQQQ", 1, 5, 0, load_vaddr, 0x1000000, shoff, shoff, 0x1000)
    phdrs += struct.pack(
        "<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note_blob), len(note_blob), note_align
    )
    ident = b"\x7fELF" + bytes([ei_class, ei_data, 1]) + b"\x00" * 9
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH",
        ident,
        2,
        machine,
        1,
        0x1000000,
        64,
        shoff if with_sections else 0,
        0,
        64,
        56,
        2,
        64 if with_sections else 0,
        4 if with_sections else 0,
        2 if with_sections else 0,
    )
    out = bytearray(shoff + len(shdrs))
    out[0:64] = ehdr
    out[64 : 64 + len(phdrs)] = phdrs
    out[note_off : note_off + len(note_blob)] = note_blob
    out[rodata_off : rodata_off + len(rodata)] = rodata
    out[other_off : other_off + len(other)] = other
    out[shstrtab_off : shstrtab_off + len(shstrtab)] = shstrtab
    if with_sections:
        out[shoff:] = shdrs
    return bytes(out)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def expect_error(path: Path, *fragments: str) -> KernelImageError:
    with pytest.raises(KernelImageError) as exc_info:
        read_kernel_image(path)
    msg = str(exc_info.value)
    assert msg.startswith(f"{path}: "), msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    assert exc_info.value.path == path
    return exc_info.value


def le32(n: int) -> bytes:
    return struct.pack("<I", n)


def _tool(argv: list[str], data: bytes) -> bytes:
    return subprocess.run(argv, input=data, stdout=subprocess.PIPE, check=True).stdout


# How the kernel build makes each payload (arch/x86/boot/compressed/Makefile): the stream
# followed by the le32 uncompressed size, except gzip, whose own trailer ends with it.
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda d: gzip.compress(d, mtime=0),
    "bzip2": lambda d: bz2.compress(d) + le32(len(d)),
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE) + le32(len(d)),
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + le32(len(d)),
    "lzo": lambda d: _tool(["lzop", "-c", "-9"], d) + le32(len(d)),
    "lz4": lambda d: _tool(["lz4", "-l", "-c", "-q"], d) + le32(len(d)),
    "zstd": lambda d: _tool(["zstd", "-c", "-q", "-19"], d) + le32(len(d)),
}
TOOLS = {"lzo": "lzop", "lz4": "lz4", "zstd": "zstd"}


def needs_tool(name: str) -> pytest.MarkDecorator:
    tool = TOOLS.get(name)
    return pytest.mark.skipif(
        tool is not None and shutil.which(tool) is None,
        reason=f"the '{tool}' command is not installed (apt-get install {tool})",
    )


ALL_COMPRESSIONS = [pytest.param(n, marks=needs_tool(n)) for n in COMPRESSORS]

# Expected magics, written out independently of the module's table.
MAGICS = {
    "gzip": bytes.fromhex("1f8b08"),
    "bzip2": b"BZh9",
    "lzma": bytes.fromhex("5d00008000"),
    "xz": bytes.fromhex("fd377a585a000004"),
    "lzo": bytes.fromhex("894c5a4f000d0a1a0a"),
    "lz4": bytes.fromhex("02214c18"),
    "zstd": bytes.fromhex("28b52ffd"),
}

# --------------------------------------------------------------------------------------------
# bzImage header parsing
# --------------------------------------------------------------------------------------------


def test_parses_synthetic_bzimage(tmp_path: Path) -> None:
    payload = MAGICS["xz"] + b"\x00" * 100
    p = write(tmp_path, "vmlinuz", make_bzimage(payload))
    assert read_kernel_image(p) == KernelImageInfo(
        path=p,
        kind="bzimage",
        release="6.6.6-kmx",
        version_string=VERSION.decode(),
        boot_protocol=(2, 15),
        compression="xz",
        payload_offset=2 * 512 + PM_PREFIX,
        payload_length=len(payload),
        pvh=None,
    )


def test_setup_sects_zero_means_four(tmp_path: Path) -> None:
    p = write(tmp_path, "vmlinuz", make_bzimage(MAGICS["gzip"] + b"\x00" * 40, setup_sects=0))
    info = read_kernel_image(p)
    assert info.payload_offset == 5 * 512 + PM_PREFIX
    assert info.compression == "gzip"


@pytest.mark.parametrize("name", list(MAGICS))
def test_detects_each_compression_magic(tmp_path: Path, name: str) -> None:
    p = write(tmp_path, "vmlinuz", make_bzimage(MAGICS[name] + b"\x00" * 64))
    assert read_kernel_image(p).compression == name


def test_accepts_str_path(tmp_path: Path) -> None:
    p = write(tmp_path, "vmlinuz", make_bzimage(MAGICS["zstd"] + b"\x00" * 64))
    assert read_kernel_image(str(p)).path == p  # type: ignore[arg-type]


def test_empty_file(tmp_path: Path) -> None:
    expect_error(write(tmp_path, "empty", b""), "empty file (0 bytes)")


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope", "cannot open", "No such file")


def test_directory(tmp_path: Path) -> None:
    expect_error(tmp_path, "is a directory")


def test_random_data(tmp_path: Path) -> None:
    data = random.Random(1234).randbytes(8192)
    assert data[0x202:0x206] != b"HdrS" and not data.startswith(b"\x7fELF")
    expect_error(
        write(tmp_path, "random", data),
        "not a Linux kernel image (no 'HdrS' boot header magic at offset 0x202;",
        f"it starts with {data[:8].hex(' ')}",
    )


def test_gzipped_text(tmp_path: Path) -> None:
    rng = random.Random(5)
    text = "".join(f"line {i}: value {rng.random()}\n" for i in range(200)).encode()
    gz = gzip.compress(text)
    assert len(gz) > 0x250
    expect_error(
        write(tmp_path, "log.gz", gz),
        "no 'HdrS' boot header magic at offset 0x202",
        "gzip-compressed data",
    )


def test_small_gzipped_text(tmp_path: Path) -> None:
    expect_error(
        write(tmp_path, "tiny.gz", gzip.compress(b"hi\n")),
        "no 'HdrS'",
        "too short to hold it",
        "gzip-compressed data",
    )


def test_shell_script(tmp_path: Path) -> None:
    script = b"#!/bin/sh\n" + b"echo 'this is not a kernel'\n" * 40
    expect_error(write(tmp_path, "run.sh", script), "no 'HdrS'", "looks like a script")


def test_short_shell_script(tmp_path: Path) -> None:
    expect_error(
        write(tmp_path, "run.sh", b"#!/bin/sh\nexit 0\n"),
        "not a Linux kernel image",
        "only 17 bytes",
        "looks like a script",
    )


def test_text_file(tmp_path: Path) -> None:
    expect_error(
        write(tmp_path, "README", b"hello world\n" * 100), "no 'HdrS'", "looks like a text file"
    )


def test_header_truncated_after_magic(tmp_path: Path) -> None:
    data = make_bzimage(MAGICS["xz"] + b"\x00" * 64)[:0x220]
    expect_error(
        write(tmp_path, "cut", data),
        "truncated: the file is 544 bytes, but its boot setup header (protocol 2.15) "
        "extends to offset 0x250",
    )


def test_protocol_too_old(tmp_path: Path) -> None:
    data = make_bzimage(MAGICS["xz"] + b"\x00" * 64, protocol=0x204)
    expect_error(write(tmp_path, "old", data), "boot protocol 2.04 is too old", "2.08")


def test_no_kernel_version_pointer(tmp_path: Path) -> None:
    data = make_bzimage(MAGICS["xz"] + b"\x00" * 64, kver_ptr=0)
    expect_error(write(tmp_path, "nokver", data), "no kernel_version string (pointer is 0)")


def test_kernel_version_outside_setup(tmp_path: Path) -> None:
    data = make_bzimage(MAGICS["xz"] + b"\x00" * 64, kver_ptr=0x300)
    expect_error(
        write(tmp_path, "badkver", data),
        "kernel_version string offset 0x500 lies outside the 1024-byte setup area",
    )


def test_kernel_version_not_terminated(tmp_path: Path) -> None:
    data = make_bzimage(MAGICS["xz"] + b"\x00" * 64, version=b"A" * 0x100)
    expect_error(
        write(tmp_path, "noterm", data),
        "kernel_version string at 0x300 is not NUL-terminated within 256 bytes",
    )


def test_kernel_version_not_printable(tmp_path: Path) -> None:
    data = make_bzimage(MAGICS["xz"] + b"\x00" * 64, version=b"6.1\x01\x02\x00")
    expect_error(
        write(tmp_path, "binkver", data),
        "kernel_version string at 0x300 is empty or not printable ASCII",
    )


def test_kernel_version_empty(tmp_path: Path) -> None:
    data = make_bzimage(MAGICS["xz"] + b"\x00" * 64, version=b"\x00")
    expect_error(write(tmp_path, "emptykver", data), "empty or not printable ASCII")


def test_truncated_inside_kernel_version(tmp_path: Path) -> None:
    data = make_bzimage(MAGICS["xz"] + b"\x00" * 64)[: VERSION_AT + 10]
    expect_error(
        write(tmp_path, "cut", data),
        "truncated: the file ends inside the kernel_version string at 0x300",
    )


def test_truncated_before_kernel_version(tmp_path: Path) -> None:
    data = make_bzimage(MAGICS["xz"] + b"\x00" * 64)[:0x280]
    expect_error(
        write(tmp_path, "cut", data),
        "truncated: the file is 640 bytes, but the kernel_version string starts at offset 0x300",
    )


def test_truncated_protected_mode_code(tmp_path: Path) -> None:
    full = make_bzimage(MAGICS["xz"] + b"\x00" * 1000)
    cut = full[:2000]
    expect_error(
        write(tmp_path, "cut", cut),
        f"truncated: the file is 2000 bytes, but its boot header describes "
        f"{len(full)} bytes (1024 setup + {len(full) - 1024} protected-mode code; "
        f"compressed payload at {1024 + PM_PREFIX:#x}, 1008 bytes)",
    )


def test_payload_length_too_small(tmp_path: Path) -> None:
    data = make_bzimage(MAGICS["xz"] + b"\x00" * 64, payload_length=3)
    expect_error(write(tmp_path, "short", data), "payload length of 3 bytes, too short")


def test_payload_beyond_protected_mode_code(tmp_path: Path) -> None:
    data = make_bzimage(MAGICS["xz"] + b"\x00" * 64, payload_length=100_000)
    expect_error(
        write(tmp_path, "long", data),
        "payload (0x440+100000) lies beyond the end",
        "corrupt boot header",
    )


def test_unknown_compression(tmp_path: Path) -> None:
    data = make_bzimage(b"\xde\xad\xbe\xef\x01\x02\x03\x04" + b"\x00" * 64)
    expect_error(
        write(tmp_path, "weird", data),
        "unknown payload compression at offset 0x440 (first bytes: de ad be ef 01 02 03 04)",
    )


@pytest.mark.parametrize("valid", [False, True], ids=["not-a-kernel", "4MiB-bzimage"])
def test_header_read_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, valid: bool
) -> None:
    """Only headers are read: a 4 MiB file costs a few hundred bytes of I/O either way."""
    big = b"\x00" * (4 << 20)
    p = write(tmp_path, "big", make_bzimage(MAGICS["xz"] + big) if valid else big)
    reads: list[int] = []
    real_read_at = bzimage._read_at

    def counting(f: BinaryIO, offset: int, length: int) -> bytes:
        data = real_read_at(f, offset, length)
        reads.append(len(data))
        return data

    monkeypatch.setattr(bzimage, "_read_at", counting)
    if valid:
        assert read_kernel_image(p).payload_length == len(MAGICS["xz"] + big)
    else:
        expect_error(p, "no 'HdrS'")
    assert 0 < sum(reads) <= 0x1000, reads


# --------------------------------------------------------------------------------------------
# ELF parsing
# --------------------------------------------------------------------------------------------

ELF_VERSION = (VERSION[:26] + b"(gcc 12) " + VERSION[26:]).decode()


def test_parses_synthetic_elf(tmp_path: Path) -> None:
    p = write(tmp_path, "vmlinux", make_elf())
    assert read_kernel_image(p) == KernelImageInfo(
        path=p,
        kind="elf",
        release="6.6.6-kmx",
        version_string=ELF_VERSION,
        boot_protocol=None,
        compression=None,
        payload_offset=0,
        payload_length=0,
        pvh=True,
    )
    assert elf_has_pvh_note(p) is True


def test_elf_without_pvh_note(tmp_path: Path) -> None:
    # Type 18 from another owner, and other Xen notes, must not count.
    p = write(tmp_path, "vmlinux", make_elf(notes=((b"GNU", 18), (b"Xen", 17), (b"Xen", 6))))
    assert read_kernel_image(p).pvh is False
    assert elf_has_pvh_note(p) is False


def test_elf_pvh_note_with_8_byte_alignment(tmp_path: Path) -> None:
    p = write(tmp_path, "vmlinux", make_elf(notes=((b"GNU", 5), (b"Xen", 18)), note_align=8))
    assert elf_has_pvh_note(p) is True


def test_elf_last_banner_wins(tmp_path: Path) -> None:
    # Like 6.1+ kernels: a __weak placeholder banner without build number, then the real one.
    weak = b"Linux version 6.6.6-kmx (b@h) (gcc 12) # SMP PREEMPT_DYNAMIC"
    real = b"Linux version 6.6.6-kmx (b@h) (gcc 12) #7 SMP PREEMPT_DYNAMIC"
    p = write(tmp_path, "vmlinux", make_elf((weak, real)))
    assert read_kernel_image(p).version_string == real.decode()[len("Linux version ") :]


def test_elf_ignores_format_string_banners(tmp_path: Path) -> None:
    fmt = b"Linux version %s (%s)"
    real = b"Linux version 5.10.0-1 (b@h) (gcc) #1 SMP"
    p = write(tmp_path, "vmlinux", make_elf((real, fmt)))
    assert read_kernel_image(p).release == "5.10.0-1"


def test_elf_without_section_headers(tmp_path: Path) -> None:
    p = write(tmp_path, "vmlinux", make_elf(with_sections=False))
    info = read_kernel_image(p)
    assert (info.release, info.pvh) == ("6.6.6-kmx", True)


def test_elf_banner_outside_rodata(tmp_path: Path) -> None:
    p = write(tmp_path, "vmlinux", make_elf(banner_outside_rodata=True))
    assert read_kernel_image(p).version_string == ELF_VERSION


def test_elf_no_banner(tmp_path: Path) -> None:
    p = write(tmp_path, "vmlinux", make_elf(banners=(b"Linux version %s",)))
    expect_error(p, "no 'Linux version ' banner; not a Linux vmlinux")


def test_elf_32bit(tmp_path: Path) -> None:
    expect_error(
        write(tmp_path, "v", make_elf(ei_class=1)), "32-bit ELF; expected a 64-bit x86-64 vmlinux"
    )


def test_elf_big_endian(tmp_path: Path) -> None:
    expect_error(write(tmp_path, "v", make_elf(ei_data=2)), "big-endian ELF (EI_DATA=2)")


def test_elf_wrong_machine(tmp_path: Path) -> None:
    expect_error(
        write(tmp_path, "v", make_elf(machine=183)),
        "ELF for machine 183 (AArch64); expected x86-64 (e_machine 62)",
    )


def test_elf_userspace_binary(tmp_path: Path) -> None:
    expect_error(
        write(tmp_path, "v", make_elf(load_vaddr=0x400000)),
        "x86-64 ELF but not a Linux vmlinux",
        "first PT_LOAD at 0x400000",
    )


@pytest.mark.parametrize("size", [5, 20, 63])
def test_elf_truncated_header(tmp_path: Path, size: int) -> None:
    expect_error(
        write(tmp_path, "v", make_elf()[:size]),
        f"truncated ELF header: the file is only {size} bytes, an ELF64 header needs 64",
    )


def test_elf_truncated_program_headers(tmp_path: Path) -> None:
    expect_error(
        write(tmp_path, "v", make_elf()[:100]),
        "truncated: ELF program headers end at 0xb0, the file is 100 bytes",
    )


def test_elf_truncated_note_segment(tmp_path: Path) -> None:
    data = bytearray(make_elf(with_sections=False))
    struct.pack_into("<Q", data, 64 + 56 + 8, len(data) - 8)  # PT_NOTE p_offset near EOF
    expect_error(write(tmp_path, "v", bytes(data)), "truncated: PT_NOTE segment ends at")


def test_elf_huge_note_segment(tmp_path: Path) -> None:
    data = bytearray(make_elf())
    struct.pack_into("<Q", data, 64 + 56 + 32, 1 << 30)  # PT_NOTE p_filesz
    p = write(tmp_path, "v", bytes(data))
    with pytest.raises(KernelImageError, match="PT_NOTE segment at 0x100 is implausibly large"):
        elf_has_pvh_note(p)


def test_elf_has_pvh_note_rejects_non_elf(tmp_path: Path) -> None:
    p = write(tmp_path, "vmlinuz", make_bzimage(MAGICS["xz"] + b"\x00" * 64))
    with pytest.raises(KernelImageError, match=r"not an ELF file \(it starts with"):
        elf_has_pvh_note(p)


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_COMPRESSIONS)
def test_extract_round_trip(tmp_path: Path, name: str) -> None:
    elf = make_elf()
    src = write(tmp_path, "vmlinuz", make_bzimage(COMPRESSORS[name](elf)))
    info = read_kernel_image(src)
    assert info.compression == name
    dest = tmp_path / "out" / "vmlinux"
    dest.parent.mkdir()
    result = extract_vmlinux(info, dest)
    assert dest.read_bytes() == elf
    assert result == read_kernel_image(dest)
    assert (result.path, result.kind, result.release, result.pvh) == (
        dest,
        "elf",
        "6.6.6-kmx",
        True,
    )
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert os.listdir(dest.parent) == ["vmlinux"]  # no temporary files left


def test_extract_tolerates_trailing_bytes_after_xz_stream(tmp_path: Path) -> None:
    elf = make_elf()
    # Stream padding and junk between the stream and the size word must not matter.
    payload = lzma.compress(elf, format=lzma.FORMAT_XZ) + b"\x00" * 8 + b"junk" + le32(len(elf))
    info = read_kernel_image(write(tmp_path, "vmlinuz", make_bzimage(payload)))
    extract_vmlinux(info, tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == elf


def test_extract_replaces_existing_dest(tmp_path: Path) -> None:
    elf = make_elf()
    info = read_kernel_image(write(tmp_path, "vmlinuz", make_bzimage(COMPRESSORS["xz"](elf))))
    dest = write(tmp_path, "vmlinux", b"old contents")
    extract_vmlinux(info, dest)
    assert dest.read_bytes() == elf


def test_extract_rejects_elf_input(tmp_path: Path) -> None:
    info = read_kernel_image(write(tmp_path, "vmlinux", make_elf()))
    with pytest.raises(KernelImageError, match="is a 'elf' image, not a bzImage"):
        extract_vmlinux(info, tmp_path / "out")


def _failed_extract(tmp_path: Path, payload: bytes, *fragments: str) -> None:
    """Extraction must fail with the fragments in the message and leave dest untouched."""
    src = write(tmp_path, "vmlinuz", make_bzimage(payload))
    info = read_kernel_image(src)
    outdir = tmp_path / "out"
    outdir.mkdir()
    dest = write(outdir, "vmlinux", b"previous")
    with pytest.raises(KernelImageError) as exc_info:
        extract_vmlinux(info, dest)
    msg = str(exc_info.value)
    assert msg.startswith(f"{src}: "), msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    assert dest.read_bytes() == b"previous"
    assert os.listdir(outdir) == ["vmlinux"]


@pytest.mark.parametrize("name", ["gzip", "xz", "lzma", "bzip2"])
def test_extract_corrupt_stream(tmp_path: Path, name: str) -> None:
    good = COMPRESSORS[name](make_elf())
    bad = good[: len(MAGICS[name]) + 4] + bytes(b ^ 0x5A for b in good[len(MAGICS[name]) + 4 :])
    # A decoder may see garbage as "needs more input", so either wording is acceptable.
    _failed_extract(tmp_path, bad, f"{name} payload is ", "corrupt")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=needs_tool(n)) for n in ["zstd", "lz4", "lzo"]]
)
def test_extract_corrupt_stream_tool(tmp_path: Path, name: str) -> None:
    good = COMPRESSORS[name](make_elf())
    bad = good[: len(MAGICS[name])] + b"\xff" * (len(good) - len(MAGICS[name]))
    _failed_extract(
        tmp_path,
        bad,
        f"{name} payload could not be decompressed",
        f"'{TOOLS[name]} -dc' exited with status",
    )


def test_extract_truncated_stream(tmp_path: Path) -> None:
    good = lzma.compress(make_elf(), format=lzma.FORMAT_XZ)
    _failed_extract(
        tmp_path,
        good[: len(good) // 2],
        f"xz payload is truncated or corrupt: the stream does not end within the "
        f"{len(good) // 2}-byte payload",
    )


def test_extract_size_mismatch(tmp_path: Path) -> None:
    elf = make_elf()
    payload = bz2.compress(elf) + le32(len(elf) + 1)
    _failed_extract(
        tmp_path,
        payload,
        f"bzip2 payload decompressed to {len(elf)} bytes, but the image records "
        f"{len(elf) + 1} bytes",
    )


def test_extract_payload_not_elf(tmp_path: Path) -> None:
    _failed_extract(
        tmp_path,
        gzip.compress(b"just some text\n" * 10),
        "decompressed payload is not an x86-64 vmlinux: not an ELF file",
        "looks like a text file",
    )


def test_extract_payload_wrong_arch(tmp_path: Path) -> None:
    _failed_extract(
        tmp_path,
        COMPRESSORS["xz"](make_elf(machine=183)),
        "decompressed payload is not an x86-64 vmlinux: ELF for machine 183",
    )


@pytest.mark.parametrize(("name", "tool"), [("zstd", "zstd"), ("lz4", "lz4"), ("lzo", "lzop")])
def test_extract_missing_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, tool: str
) -> None:
    payload = MAGICS[name] + b"\x00" * 64
    monkeypatch.setattr(shutil, "which", lambda cmd: None)
    _failed_extract(
        tmp_path,
        payload,
        f"payload is {name}-compressed, but the '{tool}' command needed to "
        f"decompress it is not installed (Debian package: {tool})",
    )


def test_extract_detects_changed_file(tmp_path: Path) -> None:
    src = write(tmp_path, "vmlinuz", make_bzimage(COMPRESSORS["xz"](make_elf())))
    info = read_kernel_image(src)
    src.write_bytes(src.read_bytes()[: info.payload_offset + 10])
    with pytest.raises(KernelImageError, match="file changed since it was read"):
        extract_vmlinux(info, tmp_path / "vmlinux")
    assert not (tmp_path / "vmlinux").exists()


# --------------------------------------------------------------------------------------------
# Real header fixtures (tests/data/kernels)
# --------------------------------------------------------------------------------------------

HEAD_61 = DATA / "vmlinuz-6.1.0-57-amd64.head64k"
HEAD_612 = DATA / "vmlinuz-6.12.117+deb12-cloud-amd64.head24k"


def fit_header_to_file(data: bytes) -> bytes:
    """Shrink syssize and payload_length so a truncated real image is self-consistent."""
    buf = bytearray(data)
    setup_size = ((buf[0x1F1] or 4) + 1) * 512
    (payload_rel,) = struct.unpack_from("<I", buf, 0x248)
    struct.pack_into("<I", buf, 0x1F4, (len(buf) - setup_size) // 16)
    struct.pack_into("<I", buf, 0x24C, len(buf) - setup_size - payload_rel)
    return bytes(buf)


def test_fixtures_are_small() -> None:
    sizes = {p.name: p.stat().st_size for p in DATA.iterdir()}
    assert sizes == {HEAD_61.name: 65536, HEAD_612.name: 24576}
    assert sum(sizes.values()) < 100_000


def test_real_truncated_header_reports_sizes() -> None:
    expect_error(
        HEAD_61,
        "truncated: the file is 65536 bytes, but its boot header describes 8245760 "
        "bytes (20480 setup + 8225280 protected-mode code; compressed payload at "
        "0x52cc, 8122340 bytes)",
    )


def test_real_truncated_inside_setup(tmp_path: Path) -> None:
    p = write(tmp_path, "cut", HEAD_61.read_bytes()[:17000])
    expect_error(
        p,
        "truncated: the file is 17000 bytes, but the kernel_version string starts at offset 0x44c0",
    )


@pytest.mark.parametrize(
    ("fixture", "release", "version", "compression"),
    [
        (
            HEAD_61,
            "6.1.0-57-amd64",
            "6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC "
            "Debian 6.1.192-3 (2026-11-26)",
            "xz",
        ),
        (
            HEAD_612,
            "6.12.117+deb12-cloud-amd64",
            "6.12.117+deb12-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC "
            "Debian 6.12.117-1~deb12u1 (2026-11-14)",
            "zstd",
        ),
    ],
    ids=["6.1-xz", "6.12-zstd"],
)
def test_real_header_parsing(
    tmp_path: Path, fixture: Path, release: str, version: str, compression: str
) -> None:
    data = fit_header_to_file(fixture.read_bytes())
    p = write(tmp_path, "vmlinuz", data)
    assert read_kernel_image(p) == KernelImageInfo(
        path=p,
        kind="bzimage",
        release=release,
        version_string=version,
        boot_protocol=(2, 15),
        compression=compression,
        payload_offset=0x52CC,
        payload_length=len(data) - 0x52CC,
        pvh=None,
    )


def test_real_truncated_xz_payload_fails_extraction(tmp_path: Path) -> None:
    info = read_kernel_image(write(tmp_path, "vmlinuz", fit_header_to_file(HEAD_61.read_bytes())))
    with pytest.raises(KernelImageError, match="xz payload is truncated or corrupt"):
        extract_vmlinux(info, tmp_path / "vmlinux")
    assert os.listdir(tmp_path) == ["vmlinuz"]


# --------------------------------------------------------------------------------------------
# Whole real kernels ($KMATRIX_TEST_KERNELS)
# --------------------------------------------------------------------------------------------

_KERNEL_DIR = os.environ.get("KMATRIX_TEST_KERNELS")


def _real_kernels() -> list[object]:
    if not _KERNEL_DIR:
        return [
            pytest.param(
                None,
                id="no-kernels",
                marks=pytest.mark.skip(
                    reason="set KMATRIX_TEST_KERNELS to a directory containing vmlinuz-* files "
                    "(searched recursively) to test real kernels"
                ),
            )
        ]
    found = sorted(Path(_KERNEL_DIR).rglob("vmlinuz-*"))
    # Set but empty is a misconfiguration: fail rather than silently skip.
    return [pytest.param(p, id=p.name) for p in found] or [pytest.param(None, id="none-found")]


def _config_for(kernel: Path) -> dict[str, str]:
    """The kernel's config-<release> next to it, if any, as {option: value}."""
    cfg = kernel.with_name("config-" + kernel.name.removeprefix("vmlinuz-"))
    if not cfg.is_file():
        return {}
    pairs = (line.split("=", 1) for line in cfg.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs if k.startswith("CONFIG_")}


def _require(kernel: Path | None) -> Path:
    if kernel is None:
        pytest.fail(f"KMATRIX_TEST_KERNELS={_KERNEL_DIR} contains no vmlinuz-* files")
    return kernel


@pytest.mark.parametrize("kernel", _real_kernels())
def test_real_kernel_header(kernel: Path | None) -> None:
    kernel = _require(kernel)
    info = read_kernel_image(kernel)
    assert info.kind == "bzimage"
    assert info.release == kernel.name.removeprefix("vmlinuz-")
    assert info.version_string.startswith(info.release + " (")
    assert info.boot_protocol is not None and info.boot_protocol >= (2, 8)
    assert info.payload_offset + info.payload_length <= kernel.stat().st_size
    config = _config_for(kernel)
    configured = [n for n in MAGICS if config.get(f"CONFIG_KERNEL_{n.upper()}") == "y"]
    if config:
        assert [info.compression] == configured
    else:
        assert info.compression in MAGICS


@pytest.mark.parametrize("kernel", _real_kernels())
def test_real_kernel_extract(kernel: Path | None, tmp_path: Path) -> None:
    kernel = _require(kernel)
    info = read_kernel_image(kernel)
    dest = tmp_path / f"vmlinux-{info.release}"
    elf = extract_vmlinux(info, dest)
    assert elf == read_kernel_image(dest)
    assert (elf.kind, elf.release, elf.path) == ("elf", info.release, dest)
    # Header string: "<release> (<by>@<host>) <uts_version>"; the ELF banner additionally has
    # "(<compiler>) " before uts_version. Matching uts_version ("#1 SMP ...") proves we picked
    # the real linux_banner, not the 6.1+ __weak placeholder ("# SMP ...").
    who, uts_version = info.version_string.split(") ", 1)
    assert elf.version_string.startswith(who + ") (")
    assert elf.version_string.endswith(") " + uts_version)
    assert elf.pvh is elf_has_pvh_note(dest)
    if _config_for(kernel).get("CONFIG_PVH") == "y":
        assert elf.pvh is True
