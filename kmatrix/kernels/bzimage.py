"""Inspect x86 Linux kernel images (bzImage and uncompressed vmlinux ELF).

The bzImage layout follows Documentation/arch/x86/boot.rst: a real-mode setup area of
``(setup_sects + 1) * 512`` bytes carrying the setup header, followed by the protected-mode
code, inside which ``payload_offset``/``payload_length`` locate the compressed vmlinux.

Every failure to understand a file is reported as :class:`KernelImageError`, naming the file
and what is wrong; files are read in bounded pieces so that a non-kernel is rejected after
reading its first few hundred bytes.
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

__all__ = [
    "KernelImageError",
    "KernelImageInfo",
    "decompress_file",
    "elf_has_pvh_note",
    "extract_vmlinux",
    "read_kernel_image",
]


class KernelImageError(Exception):
    """A file is not a usable x86 Linux kernel image; the message says which file and why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class KernelImageInfo:
    """What :func:`read_kernel_image` learnt about a kernel image file."""

    path: Path
    kind: str  # "bzimage" or "elf" (an uncompressed vmlinux)
    release: str  # first word of version_string, e.g. "6.1.0-57-cloud-amd64"
    # bzImage: the setup header's kernel_version string (no compiler part);
    # ELF: the linux_banner text after "Linux version ".
    version_string: str
    boot_protocol: tuple[int, int] | None  # setup header version, e.g. (2, 15); None for ELF
    compression: str | None  # bzImage payload compression; None for ELF
    payload_offset: int  # absolute file offset of the compressed payload; 0 for ELF
    payload_length: int  # its length, including the appended le32 size; 0 for ELF
    pvh: bool | None  # ELF: has the Xen PVH entry note; None for bzImage (unknown)


# --- bzImage setup header (Documentation/arch/x86/boot.rst) -------------------------------

_HDR_SETUP_SECTS = 0x1F1
_HDR_SYSSIZE = 0x1F4
_HDR_MAGIC = 0x202
_HDR_VERSION = 0x206
_HDR_KERNEL_VERSION = 0x20E
_HDR_PAYLOAD_OFFSET = 0x248
_HDR_PAYLOAD_LENGTH = 0x24C
_HDR_END = 0x250  # everything we parse lies before this offset
_MIN_PROTOCOL = 0x208  # payload_offset/payload_length exist since boot protocol 2.08
_MAX_VERSION_STRING = 512

# Payload magics, as recognised by the kernel's own lib/decompress.c.
_COMPRESSION_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00", "lzma"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x89LZO\x00\r\n\x1a\n", "lzo"),
    (b"\x02\x21\x4c\x18", "lz4"),  # legacy lz4 frame: the only one the kernel uses
    (b"\x28\xb5\x2f\xfd", "zstd"),
)

# --- ELF -----------------------------------------------------------------------------------

_ELF_MAGIC = b"\x7fELF"
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_NHDR = struct.Struct("<III")
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
_EM_X86_64 = 62
_PT_LOAD = 1
_PT_NOTE = 4
_XEN_ELFNOTE_PHYS32_ENTRY = 18
_KERNEL_SPACE_START = 0xFFFF_8000_0000_0000
_MAX_HEADERS = 4096  # bounds e_phnum/e_shnum so a corrupt header can't make us read megabytes
_MAX_NOTE_SEGMENT = 1 << 20
_MAX_SHSTRTAB = 1 << 20
_MACHINE_NAMES = {
    3: "i386",
    8: "MIPS",
    20: "PowerPC",
    21: "PowerPC64",
    40: "ARM",
    62: "x86-64",
    183: "AArch64",
    243: "RISC-V",
    258: "LoongArch",
}

_BANNER_PREFIX = b"Linux version "
# linux_banner is "Linux version <release> (<user>@<host>) (<compiler>) <uts_version>\n".
_BANNER_RE = re.compile(
    rb"Linux version (\d+\.\d+[\x21-\x7e]{0,64}) [\x20-\x7e]{1,400}(?=[\n\x00])"
)
_BANNER_MAX = 512
_SCAN_CHUNK = 4 << 20

_READ_CHUNK = 1 << 20
_TOOL_TIMEOUT = 600.0


# --- small helpers -------------------------------------------------------------------------


def _read_at(f: BinaryIO, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


def _hexbytes(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def _describe_start(head: bytes) -> str:
    """Guess what a non-kernel file is from its first bytes, for a more useful error."""
    guesses: tuple[tuple[bytes, str], ...] = (
        (b"\x1f\x8b", "gzip-compressed data"),
        (b"\xfd7zXZ\x00", "xz-compressed data"),
        (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
        (b"BZh", "bzip2-compressed data"),
        (b"\x89LZO", "lzop-compressed data"),
        (b"\x02\x21\x4c\x18", "lz4-compressed data"),
        (b"#!", "a script"),
        (b"MZ", "a DOS/PE executable"),
        (b"070701", "a cpio archive (initramfs?)"),
    )
    for magic, what in guesses:
        if head.startswith(magic):
            return f"it starts with {_hexbytes(head[: len(magic)])}, which looks like {what}"
    sample = head[:512]
    if sample and all(b in b"\t\n\r" or 0x20 <= b < 0x7F for b in sample):
        return "it looks like a text file"
    return f"it starts with {_hexbytes(head[:8])}"


def _file_size(f: BinaryIO) -> int:
    return os.fstat(f.fileno()).st_size


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except IsADirectoryError:
        raise KernelImageError(path, "is a directory, not a kernel image") from None
    except OSError as exc:
        raise KernelImageError(path, f"cannot open: {exc.strerror or exc}") from exc


# --- public API ------------------------------------------------------------------------------


def read_kernel_image(path: Path) -> KernelImageInfo:
    """Describe a bzImage or an uncompressed x86-64 vmlinux ELF, or raise KernelImageError."""
    path = Path(path)
    with _open(path) as f:
        size = _file_size(f)
        if size == 0:
            raise KernelImageError(path, "empty file (0 bytes), not a kernel image")
        head = _read_at(f, 0, _HDR_END)
        if head.startswith(_ELF_MAGIC):
            return _read_elf(path, f, size)
        return _read_bzimage(path, f, size, head)


def elf_has_pvh_note(path: Path) -> bool:
    """Whether an x86-64 ELF carries the Xen PVH entry note (type 18, owner "Xen").

    Only PT_NOTE program headers are searched: that is where QEMU's ELF loader looks for
    the PVH entry point, so a note that is only in a section would not make it bootable.
    """
    path = Path(path)
    with _open(path) as f:
        size = _file_size(f)
        ehdr = _parse_elf_header(path, f, size)
        return _has_pvh_note(path, f, size, ehdr)


def extract_vmlinux(info: KernelImageInfo, dest: Path) -> KernelImageInfo:
    """Decompress a bzImage's payload into an ELF vmlinux at ``dest``.

    The data goes to a temporary file next to ``dest`` that is checked to have the size the
    build recorded after the payload and to be an x86-64 kernel ELF before it is atomically
    renamed over ``dest``, so ``dest`` never holds a partial or bogus file. Returns the
    description of ``dest`` (what ``read_kernel_image(dest)`` returns). Problems with
    ``dest``'s directory itself surface as OSError.
    """
    dest = Path(dest)
    src = info.path
    if info.kind != "bzimage" or info.compression is None:
        raise KernelImageError(src, f"is a {info.kind!r} image, not a bzImage; nothing to extract")
    extractor = _EXTRACTORS.get(info.compression)
    if extractor is None:
        raise KernelImageError(src, f"unsupported payload compression {info.compression!r}")

    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, _open(src) as f:
            size = _file_size(f)
            end = info.payload_offset + info.payload_length
            if info.payload_length < 4 or end > size:
                raise KernelImageError(
                    src,
                    f"truncated: payload ends at {end:#x} but the file is {size:#x} bytes "
                    "(file changed since it was read?)",
                )
            magic = _read_at(f, info.payload_offset, 16)
            if _detect_compression(magic) != info.compression:
                raise KernelImageError(
                    src,
                    f"payload at {info.payload_offset:#x} no longer starts with "
                    f"{info.compression} magic (file changed since it was read?)",
                )
            # The build appends the uncompressed size as le32 (for gzip it is the ISIZE field).
            (expected_size,) = struct.unpack("<I", _read_at(f, end - 4, 4))
            # Output is capped at the recorded size (and at MAX_VMLINUX): a payload that
            # decompresses to more is corrupt (or a bomb) and is stopped there.
            cap = min(expected_size, MAX_VMLINUX)
            written = extractor(src, f, info.payload_offset, info.payload_length, out, cap, 4)
        if written != expected_size:
            raise KernelImageError(
                src,
                f"{info.compression} payload decompressed to {written} bytes, but the "
                f"image records {expected_size} bytes: corrupt payload",
            )
        try:
            result = _read_elf_file(tmp)
        except KernelImageError as exc:
            raise KernelImageError(
                src, f"decompressed payload is not an x86-64 vmlinux: {exc.reason}"
            ) from exc
        # mkstemp creates 0600; a kernel image is not secret and other tools may need to read it.
        tmp.chmod(0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # Same content as read_kernel_image(dest) would give; saves scanning the file again.
    return dataclasses.replace(result, path=dest)


# --- bzImage -------------------------------------------------------------------------------


def _detect_compression(data: bytes) -> str | None:
    for magic, name in _COMPRESSION_MAGICS:
        if data.startswith(magic):
            return name
    return None


def _read_bzimage(path: Path, f: BinaryIO, size: int, head: bytes) -> KernelImageInfo:
    if len(head) < _HDR_MAGIC + 4 or head[_HDR_MAGIC : _HDR_MAGIC + 4] != b"HdrS":
        where = _describe_start(head)
        if len(head) < _HDR_MAGIC + 4:
            where = f"the file is only {size} bytes, too short to hold it; {where}"
        raise KernelImageError(
            path,
            f"not a Linux kernel image (no 'HdrS' boot header magic at offset "
            f"{_HDR_MAGIC:#x}; {where})",
        )

    (proto,) = struct.unpack_from("<H", head, _HDR_VERSION)
    protocol = (proto >> 8, proto & 0xFF)
    proto_str = f"{protocol[0]}.{protocol[1]:02d}"
    if proto < _MIN_PROTOCOL:
        raise KernelImageError(
            path,
            f"boot protocol {proto_str} is too old: payload_offset/payload_length need "
            "2.08 or later",
        )
    if len(head) < _HDR_END:
        raise KernelImageError(
            path,
            f"truncated: the file is {size} bytes, but its boot setup header (protocol "
            f"{proto_str}) extends to offset {_HDR_END:#x}",
        )

    setup_sects = head[_HDR_SETUP_SECTS] or 4  # 0 means 4 for historical reasons
    setup_size = (setup_sects + 1) * 512
    (syssize,) = struct.unpack_from("<I", head, _HDR_SYSSIZE)
    (kver_ptr,) = struct.unpack_from("<H", head, _HDR_KERNEL_VERSION)
    payload_rel, payload_length = struct.unpack_from("<II", head, _HDR_PAYLOAD_OFFSET)
    payload_offset = setup_size + payload_rel

    version_string = _read_header_version(path, f, size, setup_size, kver_ptr)

    image_size = setup_size + syssize * 16
    if size < image_size:
        raise KernelImageError(
            path,
            f"truncated: the file is {size} bytes, but its boot header describes "
            f"{image_size} bytes ({setup_size} setup + {syssize * 16} protected-mode code; "
            f"compressed payload at {payload_offset:#x}, {payload_length} bytes)",
        )
    if payload_length < 8:
        raise KernelImageError(
            path,
            f"boot header gives a payload length of {payload_length} bytes, too short "
            "for a compressed kernel",
        )
    if payload_offset + payload_length > image_size:
        raise KernelImageError(
            path,
            f"payload ({payload_offset:#x}+{payload_length}) lies beyond the end of the "
            f"protected-mode code at {image_size:#x}: corrupt boot header",
        )

    magic = _read_at(f, payload_offset, 16)
    compression = _detect_compression(magic)
    if compression is None:
        raise KernelImageError(
            path,
            f"unknown payload compression at offset {payload_offset:#x} "
            f"(first bytes: {_hexbytes(magic[:8])})",
        )

    return KernelImageInfo(
        path=path,
        kind="bzimage",
        release=version_string.split()[0],
        version_string=version_string,
        boot_protocol=protocol,
        compression=compression,
        payload_offset=payload_offset,
        payload_length=payload_length,
        pvh=None,
    )


def _read_header_version(path: Path, f: BinaryIO, size: int, setup_size: int, kver_ptr: int) -> str:
    if kver_ptr == 0:
        raise KernelImageError(path, "boot header has no kernel_version string (pointer is 0)")
    start = kver_ptr + 0x200
    if start >= setup_size:
        raise KernelImageError(
            path,
            f"kernel_version string offset {start:#x} lies outside the {setup_size}-byte "
            "setup area: corrupt boot header",
        )
    if start >= size:
        raise KernelImageError(
            path,
            f"truncated: the file is {size} bytes, but the kernel_version string starts "
            f"at offset {start:#x}",
        )
    raw = _read_at(f, start, min(_MAX_VERSION_STRING, setup_size - start))
    nul = raw.find(b"\x00")
    if nul < 0:
        if start + len(raw) >= size:
            raise KernelImageError(
                path, f"truncated: the file ends inside the kernel_version string at {start:#x}"
            )
        raise KernelImageError(
            path,
            f"kernel_version string at {start:#x} is not NUL-terminated within {len(raw)} bytes",
        )
    text = raw[:nul]
    if not text.strip() or any(b < 0x20 or b > 0x7E for b in text):
        raise KernelImageError(
            path,
            f"kernel_version string at {start:#x} is empty or not printable ASCII: {text[:40]!r}",
        )
    return text.decode("ascii").strip()


# --- ELF -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ElfHeader:
    phoff: int
    phnum: int
    phentsize: int
    shoff: int
    shnum: int
    shentsize: int
    shstrndx: int


def _parse_elf_header(path: Path, f: BinaryIO, size: int) -> _ElfHeader:
    head = _read_at(f, 0, _EHDR.size)
    if not head.startswith(_ELF_MAGIC):
        raise KernelImageError(path, f"not an ELF file ({_describe_start(head)})")
    truncated = (
        f"truncated ELF header: the file is only {size} bytes, an ELF64 header needs {_EHDR.size}"
    )
    if len(head) < 6:
        raise KernelImageError(path, truncated)
    ei_class, ei_data = head[4], head[5]
    if ei_class != _ELFCLASS64:
        bits = {1: "32-bit"}.get(ei_class, f"EI_CLASS={ei_class}")
        raise KernelImageError(path, f"{bits} ELF; expected a 64-bit x86-64 vmlinux")
    if ei_data != _ELFDATA2LSB:
        raise KernelImageError(path, f"big-endian ELF (EI_DATA={ei_data}); expected x86-64")
    if len(head) < _EHDR.size:
        raise KernelImageError(path, truncated)
    (_, _, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, shstrndx) = (
        _EHDR.unpack(head)
    )
    if machine != _EM_X86_64:
        name = _MACHINE_NAMES.get(machine, "unknown")
        raise KernelImageError(
            path, f"ELF for machine {machine} ({name}); expected x86-64 (e_machine 62)"
        )
    return _ElfHeader(phoff, phnum, phentsize, shoff, shnum, shentsize, shstrndx)


def _program_headers(
    path: Path, f: BinaryIO, size: int, ehdr: _ElfHeader
) -> list[tuple[int, int, int, int, int]]:
    """Return (p_type, p_offset, p_vaddr, p_filesz, p_align) for each program header."""
    if ehdr.phnum == 0:
        return []
    if ehdr.phentsize < _PHDR.size or ehdr.phnum > _MAX_HEADERS:
        raise KernelImageError(
            path,
            f"corrupt ELF program header table (e_phentsize={ehdr.phentsize}, "
            f"e_phnum={ehdr.phnum})",
        )
    table_end = ehdr.phoff + ehdr.phnum * ehdr.phentsize
    if table_end > size:
        raise KernelImageError(
            path, f"truncated: ELF program headers end at {table_end:#x}, the file is {size} bytes"
        )
    table = _read_at(f, ehdr.phoff, ehdr.phnum * ehdr.phentsize)
    result = []
    for i in range(ehdr.phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, p_align = _PHDR.unpack_from(
            table, i * ehdr.phentsize
        )
        result.append((p_type, p_offset, p_vaddr, p_filesz, p_align))
    return result


def _has_pvh_note(path: Path, f: BinaryIO, size: int, ehdr: _ElfHeader) -> bool:
    for p_type, p_offset, _, p_filesz, p_align in _program_headers(path, f, size, ehdr):
        if p_type != _PT_NOTE:
            continue
        if p_filesz > _MAX_NOTE_SEGMENT:
            raise KernelImageError(
                path, f"PT_NOTE segment at {p_offset:#x} is implausibly large ({p_filesz} bytes)"
            )
        if p_offset + p_filesz > size:
            raise KernelImageError(
                path,
                f"truncated: PT_NOTE segment ends at {p_offset + p_filesz:#x}, the file "
                f"is {size} bytes",
            )
        notes = _read_at(f, p_offset, p_filesz)
        for name, n_type in _iter_notes(notes, 8 if p_align == 8 else 4):
            if name == b"Xen" and n_type == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
    return False


def _iter_notes(data: bytes, align: int) -> Iterator[tuple[bytes, int]]:
    def pad(n: int) -> int:
        return (n + align - 1) & ~(align - 1)

    pos = 0
    while pos + _NHDR.size <= len(data):
        namesz, descsz, n_type = _NHDR.unpack_from(data, pos)
        name_start = pos + _NHDR.size
        desc_start = name_start + pad(namesz)
        next_pos = desc_start + pad(descsz)
        if desc_start + descsz > len(data):
            return  # a malformed trailing note can't hide one we already passed
        yield data[name_start : name_start + namesz].rstrip(b"\x00"), n_type
        pos = next_pos


def _read_elf_file(path: Path) -> KernelImageInfo:
    with _open(path) as f:
        return _read_elf(path, f, _file_size(f))


def _read_elf(path: Path, f: BinaryIO, size: int) -> KernelImageInfo:
    ehdr = _parse_elf_header(path, f, size)
    phdrs = _program_headers(path, f, size, ehdr)
    # Checked before any scanning: a user-space binary is rejected after reading its headers.
    if not any(t == _PT_LOAD and vaddr >= _KERNEL_SPACE_START for t, _, vaddr, _, _ in phdrs):
        loads = [vaddr for t, _, vaddr, _, _ in phdrs if t == _PT_LOAD]
        first = f"first PT_LOAD at {loads[0]:#x}" if loads else "no PT_LOAD segments"
        raise KernelImageError(
            path,
            f"x86-64 ELF but not a Linux vmlinux (no segment loaded at a kernel-space "
            f"address; {first})",
        )

    banner = None
    rodata = _find_section(path, f, size, ehdr, b".rodata")
    if rodata is not None:
        banner = _find_banner(f, *rodata)
    if banner is None:  # no section headers, or an unusual layout: look everywhere
        banner = _find_banner(f, 0, size)
    if banner is None:
        raise KernelImageError(
            path,
            "x86-64 ELF with kernel-space segments but no 'Linux version ' banner; "
            "not a Linux vmlinux",
        )
    version_string = banner.decode("ascii").strip()

    return KernelImageInfo(
        path=path,
        kind="elf",
        release=version_string.split()[0],
        version_string=version_string,
        boot_protocol=None,
        compression=None,
        payload_offset=0,
        payload_length=0,
        pvh=_has_pvh_note(path, f, size, ehdr),
    )


def _find_section(
    path: Path, f: BinaryIO, size: int, ehdr: _ElfHeader, wanted: bytes
) -> tuple[int, int] | None:
    """(start, end) file range of a named section, or None when it can't be found."""
    if (
        ehdr.shnum == 0
        or ehdr.shnum > _MAX_HEADERS
        or ehdr.shentsize < _SHDR.size
        or ehdr.shstrndx >= ehdr.shnum
        or ehdr.shoff + ehdr.shnum * ehdr.shentsize > size
    ):
        return None  # section headers are optional; the caller falls back to a full scan
    table = _read_at(f, ehdr.shoff, ehdr.shnum * ehdr.shentsize)
    shdrs = [_SHDR.unpack_from(table, i * ehdr.shentsize) for i in range(ehdr.shnum)]
    strtab_off, strtab_size = shdrs[ehdr.shstrndx][4], shdrs[ehdr.shstrndx][5]
    if strtab_size > _MAX_SHSTRTAB or strtab_off + strtab_size > size:
        return None
    strtab = _read_at(f, strtab_off, strtab_size)
    for sh_name, _, _, _, sh_offset, sh_size, *_ in shdrs:
        end = strtab.find(b"\x00", sh_name)
        if strtab[sh_name:end] == wanted and sh_offset + sh_size <= size:
            return sh_offset, sh_offset + sh_size
    return None


def _find_banner(f: BinaryIO, start: int, end: int) -> bytes | None:
    """The text after "Linux version " of the *last* well-formed banner in [start, end).

    Since 6.1 a vmlinux carries two banners: a __weak placeholder from init/version.o whose
    UTS_VERSION lacks the build number ("# SMP ...") and, linked after it, the real
    linux_banner from init/version-timestamp.o ("#1 SMP ..."), so the last one wins.
    """
    found: bytes | None = None
    pos = start
    while pos < end:
        # Overlap chunks by one banner length so a banner straddling a boundary is seen whole.
        chunk = _read_at(f, pos, min(_SCAN_CHUNK + _BANNER_MAX, end - pos))
        if not chunk:
            break
        i = chunk.find(_BANNER_PREFIX)
        while 0 <= i < _SCAN_CHUNK:
            m = _BANNER_RE.match(chunk, i)
            if m is not None:
                found = m.group(0)[len(_BANNER_PREFIX) :]
            i = chunk.find(_BANNER_PREFIX, i + 1)
        pos += _SCAN_CHUNK
    return found


# --- decompression ---------------------------------------------------------------------------

# No x86 vmlinux is anywhere near this (Debian's generic 6.12 is ~70 MB); a payload that
# claims more, or decompresses to more than it claims, is refused before it fills the disk.
MAX_VMLINUX = 1 << 30


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: bytes, /, max_length: int = -1) -> bytes: ...


class _Zlib:
    """zlib's decompressobj with the needs_input/max_length interface of lzma and bz2."""

    def __init__(self) -> None:
        # wbits=16+MAX_WBITS: a single gzip member, with its header and trailer checked.
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def needs_input(self) -> bool:
        return not self._d.unconsumed_tail

    def decompress(self, data: bytes, /, max_length: int = -1) -> bytes:
        return self._d.decompress(self._d.unconsumed_tail + data, max(max_length, 0))


# (src path, open file, offset, length, output, limit, trailer bytes) -> bytes written.
# At most limit bytes are written: more is a KernelImageError. trailer: bytes at the end of
# the region that are not part of the compressed stream (a bzImage's le32 size).
_Extractor = Callable[[Path, BinaryIO, int, int, BinaryIO, int, int], int]


def _too_big(src: Path, name: str, limit: int) -> KernelImageError:
    return KernelImageError(
        src, f"{name} data decompresses to more than {limit} bytes, the most expected: refused"
    )


def _stream_extractor(
    name: str, factory: Callable[[], _Decompressor], errors: tuple[type[Exception], ...]
) -> _Extractor:
    def extract(
        src: Path, f: BinaryIO, offset: int, length: int, out: BinaryIO, limit: int, trailer: int
    ) -> int:
        dec = factory()
        written = 0
        remaining = length
        f.seek(offset)
        # Feed the whole region; bytes after the end of the first stream (the le32 size,
        # padding, anything else) are left unused rather than treated as an error. Each call
        # may produce at most what is still allowed, so a bomb never gets further.
        while remaining > 0 and not dec.eof:
            chunk = f.read(min(_READ_CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            while True:
                try:
                    data = dec.decompress(chunk, max_length=limit + 1 - written)
                except errors as exc:
                    raise KernelImageError(src, f"{name} payload is corrupt: {exc}") from exc
                chunk = b""
                written += len(data)
                if written > limit:
                    raise _too_big(src, name, limit)
                out.write(data)
                if dec.eof or dec.needs_input:
                    break
        if not dec.eof:
            raise KernelImageError(
                src,
                f"{name} payload is truncated or corrupt: the stream does not end "
                f"within the {length}-byte payload",
            )
        return written

    return extract


def _tool_extractor(name: str, tool: str, package: str) -> _Extractor:
    def extract(
        src: Path, f: BinaryIO, offset: int, length: int, out: BinaryIO, limit: int, trailer: int
    ) -> int:
        exe = shutil.which(tool)
        if exe is None:
            raise KernelImageError(
                src,
                f"payload is {name}-compressed, but the '{tool}' command needed to "
                f"decompress it is not installed (Debian package: {package})",
            )
        # These tools reject the appended le32 size as a malformed next frame, so cut it off.
        payload = _read_at(f, offset, length - trailer)
        return _capped_tool(src, name, [exe, "-dc"], payload, out, limit)

    return extract


def _capped_tool(
    src: Path, name: str, argv: list[str], payload: bytes, out: BinaryIO, limit: int
) -> int:
    """argv reading payload on stdin; its stdout copied to out until limit, then killed."""
    tool = Path(argv[0]).name
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin, stdout = proc.stdin, proc.stdout

    def feed() -> None:
        with contextlib.suppress(OSError):  # the tool may stop reading (an error, a kill)
            stdin.write(payload)
        with contextlib.suppress(OSError):
            stdin.close()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(_TOOL_TIMEOUT, expire)
    timer.start()
    written = 0
    try:
        while chunk := stdout.read(_READ_CHUNK):
            written += len(chunk)
            if written > limit:
                raise _too_big(src, name, limit)
            out.write(chunk)
        err = proc.stderr.read(64 << 10)
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        writer.join(10)
        for stream in (stdout, proc.stderr):
            stream.close()
    if timed_out.is_set():
        raise KernelImageError(src, f"'{tool} -dc' did not finish within {_TOOL_TIMEOUT:.0f} s")
    if code != 0:
        msg = err.decode(errors="replace").strip().splitlines()
        detail = msg[-1] if msg else "no message"
        raise KernelImageError(
            src,
            f"{name} payload could not be decompressed: '{tool} -dc' exited with "
            f"status {code}: {detail}",
        )
    return written


_EXTRACTORS: dict[str, _Extractor] = {
    "gzip": _stream_extractor("gzip", _Zlib, (zlib.error,)),
    "bzip2": _stream_extractor("bzip2", bz2.BZ2Decompressor, (OSError, ValueError)),
    "lzma": _stream_extractor(
        "lzma", lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE), (lzma.LZMAError,)
    ),
    "xz": _stream_extractor("xz", lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ), (lzma.LZMAError,)),
    "lzo": _tool_extractor("lzo", "lzop", "lzop"),
    "lz4": _tool_extractor("lz4", "lz4", "lz4"),
    "zstd": _tool_extractor("zstd", "zstd", "zstd"),
}


def decompress_file(src: Path, compression: str, out: BinaryIO, limit: int) -> int:
    """A whole compressed file (e.g. a kernel module .ko.xz) into out, at most limit bytes;
    KernelImageError when it is corrupt or would be larger."""
    extractor = _EXTRACTORS.get(compression)
    if extractor is None:
        raise KernelImageError(src, f"unsupported compression {compression!r}")
    with _open(src) as f:
        return extractor(src, f, 0, _file_size(f), out, limit, 0)
