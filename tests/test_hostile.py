"""A corpus of hostile inputs (docs/security.md): each is one clear error, never a traceback,
and no QEMU starts.

Every case runs the command a user would (`kmatrix shell`, `report`, `merge`, `compare`, or
pytest with the plugin) in this process, with a logging fake `qemu-system-x86_64` first on
PATH and a private cache, and checks the exit status, the one line naming what was wrong
(file, line, key or entry), that no traceback was printed and that the fake was never run.
The escape cases also prove that nothing outside the artefact's (or run's) root was read into
the cache or the reports, or written outside it. No VM boots here.
"""

from __future__ import annotations

import contextlib
import io
import json
import lzma
import os
import re
import shutil
import socket
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_bzimage import le32, make_bzimage

from kmatrix import crash
from kmatrix.cli.main import main
from kmatrix.config import yamlnode
from kmatrix.guest import image as guest_image
from kmatrix.vm import machine as vm_machine

RELEASE = "6.6.6-kmx"  # what make_bzimage's header says
CELL = "k/qemu64/d"
SENTINEL = "KMX-SENTINEL-3f9c2a"  # the content of host files an escape would reach


@dataclass
class Outcome:
    rc: int | str | None
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass
class Env:
    """The corpus's world: a temporary directory, a private cache, the fake QEMU's log and a
    'host' file outside every root (its content is the sentinel)."""

    root: Path
    qemu_log: Path
    secret: Path
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def qemu_calls(self) -> list[str]:
        return self.qemu_log.read_text().splitlines() if self.qemu_log.exists() else []

    def write(self, name: str, text: str) -> Path:
        p = self.root / "in" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p


FAKE_QEMU = """#!/bin/sh
echo "$*" >> {log}
echo "fake qemu: not for this test" >&2
exit 1
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "qemu-calls.log"
    fake = bindir / "qemu-system-x86_64"
    fake.write_text(FAKE_QEMU.format(log=log))
    fake.chmod(0o755)
    secret = tmp_path / "host" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text(SENTINEL + "\n")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("KMATRIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.chdir(tmp_path)
    e = Env(tmp_path, log, secret)
    yield e
    # Answers computed with the fake QEMU must not leak into later tests of this process.
    vm_machine.sandbox_state.cache_clear()


def cli(*argv: str | Path) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc: int | str | None = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's own usage errors
            rc = e.code
    return Outcome(rc, out.getvalue(), err.getvalue())


def plugin(env: Env, *args: str | Path) -> Outcome:
    """pytest with the kmatrix plugin, in this process (every case fails before collection)."""
    test = env.write("test_nothing.py", "def test_x(cell):\n    pass\n")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = pytest.main(
            [str(test), "-p", "kmatrix", "-p", "no:cacheprovider", "-q",
             f"--kmatrix-reports={env.root / 'reports'}", *map(str, args)]
        )  # fmt: skip
    return Outcome(int(rc), out.getvalue(), err.getvalue())


def check(env: Env, res: Outcome, rc: int, *expect: str, qemu: bool = False) -> None:
    """The exit status, each expected fragment (a regex when it starts with ^), no traceback,
    and no QEMU (none at all unless qemu=True, then no VM: nothing with -kernel)."""
    assert res.rc == rc, res.text
    for frag in expect:
        if frag.startswith("^"):
            assert re.search(frag, res.text, re.M), (frag, res.text)
        else:
            assert frag in res.text, (frag, res.text)
    assert "Traceback" not in res.text and "INTERNALERROR" not in res.text, res.text
    calls = env.qemu_calls()
    if qemu:
        assert not [c for c in calls if "-kernel" in c], calls
    else:
        assert calls == [], calls


def leaked(env: Env, *dirs: Path) -> list[Path]:
    """Files under dirs (default: the cache and reports) that hold the sentinel's content."""
    found = []
    for d in dirs or (env.cache, env.root / "reports"):
        if not d.exists():
            continue
        for p in d.rglob("*"):
            if p.is_file() and not p.is_symlink() and SENTINEL.encode() in p.read_bytes():
                found.append(p)
    return found


# --- class 5: YAML and file-system corners --------------------------------------------------

MATRIX = """\
name: hostile
defaults: {memory: 256, smp: 1, accel: tcg}
kernels:
  - {name: k, image: bzImage}
cpus: [qemu64]
devices:
  - name: d
    machine: q35
"""


def fake_kernel(env: Env) -> Path:
    """A bzImage whose header parses (release 6.6.6-kmx); it never needs to boot here."""
    p = env.root / "in" / "bzImage"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(make_bzimage(bytes.fromhex("fd377a585a000004") + b"\0" * 64 + le32(100)))
    return p


def shell(env: Env, matrix: Path, *extra: str) -> Outcome:
    return cli("shell", "-m", matrix, CELL, "--reports", env.root / "reports", *extra)


YAML_CASES: dict[str, tuple[str, int | None, str]] = {
    # id: (file text, line, message fragment)
    "python-object": ("name: !!python/object/apply:os.system [id]\n", 1, "!!python/object"),
    "python-name": ("name: !!python/name:os.system\n", 1, "!!python/name:os.system"),
    "python-module": ("name: !!python/module:os\n", 1, "!!python/module:os"),
    "custom-tag": ("kernels: !evil [1]\n", 1, "tag !evil is not allowed"),
    "local-tag-scalar": ("name: !x y\n", 1, "tag !x is not allowed"),
    "binary-tag": ("name: !!binary aGVsbG8=\n", 1, "tag !!binary is not allowed"),
    "set-tag": ("name: !!set {a, b}\n", 1, "tag !!set is not allowed"),
    "omap-tag": ("name: !!omap [a: 1]\n", 1, "tag !!omap is not allowed"),
    "verbatim-tag": ("name: !<tag:evil.com,2000:x> y\n", 1, "is not allowed"),
    "deep-flow-5000": ("a: " + "[" * 5000 + "]" * 5000 + "\n", 1, "nest"),
    "deep-flow-100": ("a: " + "[" * 100 + "]" * 100 + "\n", 1, "nested deeper than 64"),
    "deep-block-100": (
        "".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "x: 1\n",
        None,
        "nested deeper than 64",
    ),
    "many-items": ("a: [" + "1," * 400_000 + "1]\n", 1, "more than 10000 YAML nodes"),
    "many-keys": ("".join(f"k{i}: {i}\n" for i in range(15_000)), None, "YAML nodes"),
    "billion-laughs": (
        "a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
        "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
        "e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
        4,
        "more than 10000 YAML nodes",
    ),
    "recursive-alias": ("a: &a [1, *a]\n", 1, "alias *a refers to a node that contains it"),
    "undefined-alias": ("a: *nope\n", 1, "YAML syntax error"),
    "empty": ("", None, "file is empty"),
    "comments-only": ("# nothing\n", None, "file is empty"),
    "two-documents": ("a: 1\n---\nb: 2\n", 2, "YAML syntax error"),
    "tab-indent": ("a:\n\t- 1\n", 2, "YAML syntax error"),
    "unclosed-flow": ("a: [1, 2\n", None, "YAML syntax error"),
    "nul-in-name": ('name: "a\\0b"\nkernels: []\ncpus: []\ndevices: []\n', 1, "NUL"),
    "top-level-list": ("- 1\n- 2\n", 1, "expected a mapping"),
    "merge-key": ("base: &b {x: 1}\nname: hostile\n<<: *b\n", 3, "tag !!merge is not allowed"),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_yaml_corner_is_one_error(env: Env, case: str) -> None:
    text, line, frag = YAML_CASES[case]
    m = env.write("m.yaml", text)
    where = f"{m}:{line}: " if line else f"{m}"
    check(env, shell(env, m), 2, where, frag)


def test_oversized_matrix_is_refused_unread(env: Env) -> None:
    m = env.root / "in" / "big.yaml"
    m.parent.mkdir()
    with m.open("wb") as f:
        f.truncate(50 << 20)  # 50 MB (sparse): refused from its size, never read
    check(env, shell(env, m), 2, f"{m}: is 50 MiB; at most 1 MiB is read")


def _special(env: Env, kind: str) -> Path:
    p = env.root / "in" / f"{kind}.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()
    elif kind == "dir":
        p.mkdir()
    elif kind == "loop":
        p.symlink_to(p.with_name("loop2.yaml"))
        p.with_name("loop2.yaml").symlink_to(p)
    elif kind == "chardev":
        p.symlink_to("/dev/zero")
    elif kind == "dangling":
        p.symlink_to(env.root / "nowhere.yaml")
    elif kind == "not-utf8":
        p.write_bytes(b"name: \xff\xfe\n")
    return p


SPECIAL = {
    "fifo": "is a FIFO (named pipe), not a regular file",
    "socket": "is a socket, not a regular file",
    "dir": "is a directory, not a regular file",
    "loop": "a symbolic link loop",
    "chardev": "is a character device, not a regular file",
    "dangling": "file not found",
    "not-utf8": "is not UTF-8 text",
}


@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_matrix_file_that_is_not_a_file(env: Env, kind: str) -> None:
    """A FIFO would block forever if opened; /dev/zero would never end. The file is named as
    the loader resolved it (the link's target)."""
    m = _special(env, kind)
    named = {"chardev": Path("/dev/zero"), "dangling": env.root / "nowhere.yaml"}.get(kind, m)
    check(env, shell(env, m), 2, f"{named}: {SPECIAL[kind]}")


@pytest.mark.parametrize("kind", ["fifo", "chardev", "loop", "dir", "socket"])
def test_profile_file_that_is_not_a_file(env: Env, kind: str) -> None:
    prof = _special(env, kind)
    m = env.write("m.yaml", MATRIX.replace("  - name: d\n    machine: q35\n", f"  - {prof}\n"))
    fake_kernel(env)
    frag = SPECIAL[kind].replace("regular ", "") if kind in ("fifo", "loop", "socket") else ""
    res = shell(env, m)
    check(env, res, 2, f"{m}:7: devices[0]" if kind != "dir" else str(prof), frag)


@pytest.mark.parametrize(("key", "kind"), [("config", "fifo"), ("config", "chardev"),
                                           ("modules", "fifo"), ("image", "fifo"),
                                           ("image", "socket")])  # fmt: skip
def test_kernel_file_that_is_not_a_file(env: Env, key: str, kind: str) -> None:
    fake_kernel(env)
    special = _special(env, kind)
    entry = (
        f"{{name: k, image: {special}}}"
        if key == "image"
        else (f"{{name: k, image: bzImage, {key}: {special}}}")
    )
    m = env.write("m.yaml", MATRIX.replace("{name: k, image: bzImage}", entry))
    check(env, shell(env, m), 2, f"{m}:4: kernels[0].{key}: ", "not a file")


def test_yaml_guard_is_fast_and_small(env: Env) -> None:
    """The worst of the corpus within the limits: refused in well under a second of CPU."""
    import resource

    m = env.write("m.yaml", "a: [" + "1," * 450_000 + "1]\n")  # just under 1 MiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    with pytest.raises(Exception, match="YAML nodes"):
        yamlnode.compose_file(m)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_utime - before < 5  # CPU, not wall


# --- class 3: QEMU options that reach the host ----------------------------------------------


def device_matrix(env: Env, profile: str, access: str = "") -> tuple[Path, str]:
    """MATRIX with the device profile's extra lines (indented under `- name: d`)."""
    fake_kernel(env)
    body = textwrap.indent(textwrap.dedent(profile).strip("\n"), "    ") + "\n"
    text = MATRIX + body + (textwrap.dedent(access) if access else "")
    return env.write("m.yaml", text), text


def line_of(text: str, needle: str) -> int:
    """The first line with needle after MATRIX's own lines (in the profile or grant)."""
    start = MATRIX.count("\n")
    return next(i for i, ln in enumerate(text.splitlines(), 1) if i > start and needle in ln)


# (profile lines, the text on the offending line, key, message fragment)
REFUSED: dict[str, tuple[str, str, str, str]] = {
    "mem-path-shadow": (
        "objects:\n  - {type: memory-backend-file, id: m, props: {mem-path: /etc/shadow, "
        "share: on, size: 1M}}",
        "mem-path",
        "devices[0].objects[0].props.mem-path",
        "reaches the host file /etc/shadow",
    ),
    "raw-vfio-pci": (
        "devices:\n  - {driver: vfio-pci, props: {host: '0000:01:00.0'}}",
        "vfio-pci",
        "devices[0].devices[0].driver",
        "host_devices:",
    ),
    "vfio-nohotplug": (
        "devices:\n  - {driver: vfio-pci-nohotplug}",
        "vfio",
        "devices[0].devices[0].driver",
        "not a raw vfio device",
    ),
    "key-with-comma": (
        "devices:\n  - {driver: virtio-rng-pci, props: {'chardev=agent,x': 1}}",
        "chardev",
        "devices[0].devices[0].props.chardev=agent,x",
        "is not a QEMU property name",
    ),
    "key-chardev-agent": (
        "devices:\n  - {driver: virtserialport, props: {chardev: agent, name: x}}",
        "chardev",
        "devices[0].devices[0].props.chardev",
        "refers to a QEMU backend",
    ),
    "key-chardev-qmp": (
        "devices:\n  - {driver: virtio-serial-pci, id: s}\n  - {driver: virtserialport, "
        "props: {bus: s.0, chardev: qmp}}",
        "chardev: qmp",
        "devices[0].devices[1].props.chardev",
        "kmatrix's own",
    ),
    "key-netdev": (
        "devices:\n  - {driver: virtio-net-pci, props: {netdev: n0}}",
        "netdev",
        "props.netdev",
        "refers to a QEMU backend",
    ),
    "key-drive-scratch": (
        "devices:\n  - {driver: virtio-blk-pci, props: {drive: disk0-blk}}",
        "drive",
        "props.drive",
        "refers to a QEMU backend",
    ),
    "key-fsdev": (
        "devices:\n  - {driver: virtio-balloon-pci, props: {fsdev: x}}",
        "fsdev",
        "props.fsdev",
        "QEMU backend",
    ),
    "key-fd": (
        "devices:\n  - {driver: virtio-rng-pci, props: {fd: 3}}",
        "fd:",
        "props.fd",
        "file descriptor",
    ),
    "key-vhostfd": (
        "devices:\n  - {driver: virtio-rng-pci, props: {vhostfd: 3}}",
        "vhostfd",
        "props.vhostfd",
        "file descriptor",
    ),
    "key-host": (
        "devices:\n  - {driver: virtio-rng-pci, props: {host: 01:00.0}}",
        "host:",
        "props.host",
        "names a host device",
    ),
    "key-sysfsdev": (
        "devices:\n  - {driver: e1000, props: {sysfsdev: /sys/bus/pci}}",
        "sysfsdev",
        "props.sysfsdev",
        "names a host device",
    ),
    "key-hostbus": (
        "devices:\n  - {driver: qemu-xhci}\n  - {driver: usb-tablet, props: {hostbus: 1}}",
        "hostbus",
        "props.hostbus",
        "names a host device",
    ),
    "key-empty": (
        "devices:\n  - {driver: virtio-rng-pci, props: {'': 1}}",
        "''",
        "props.",
        "is not a QEMU property name",
    ),
    "key-digit": (
        "devices:\n  - {driver: virtio-rng-pci, props: {1abc: 1}}",
        "1abc",
        "props.1abc",
        "is not a QEMU property name",
    ),
    "key-equals": (
        "devices:\n  - {driver: virtio-rng-pci, props: {'a=b': 1}}",
        "a=b",
        "props.a=b",
        "is not a QEMU property name",
    ),
    "key-space": (
        "devices:\n  - {driver: virtio-rng-pci, props: {'a b': 1}}",
        "a b",
        "props.a b",
        "is not a QEMU property name",
    ),
    "key-dot": (
        "devices:\n  - {driver: virtio-rng-pci, props: {file.filename: /x}}",
        "file.filename",
        "props.file.filename",
        "is not a QEMU property name",
    ),
    "value-newline": (
        'devices:\n  - {driver: virtio-rng-pci, id: r, props: {bus: "a\\nb"}}',
        "bus",
        "props.bus",
        "control characters",
    ),
    "value-nul": (
        'devices:\n  - {driver: virtio-rng-pci, props: {bus: "a\\0b"}}',
        "bus",
        "props.bus",
        "NUL",
    ),
    "value-relative-path": (
        "devices:\n  - {driver: virtio-rng-pci, props: {romfile: etc/shadow}}",
        "romfile",
        "props.romfile",
        "must be absolute",
    ),
    "romfile-shadow": (
        "devices:\n  - {driver: virtio-rng-pci, props: {romfile: /etc/shadow}}",
        "romfile",
        "props.romfile",
        "reaches the host file /etc/shadow",
    ),
    "value-is-a-path": (
        "devices:\n  - {driver: virtio-rng-pci, props: {x-anything: /etc/ssh}}",
        "x-anything",
        "props.x-anything",
        "reaches the host file /etc/ssh",
    ),
    "tilde-path": (
        "devices:\n  - {driver: virtio-rng-pci, props: {romfile: ~/.ssh/id}}",
        "romfile",
        "props.romfile",
        "must be absolute",
    ),
    "loader-file": (
        "devices:\n  - {driver: loader, props: {file: /etc/shadow, addr: 0}}",
        "loader",
        "props.file",
        "reaches the host file /etc/shadow",
    ),
    "guest-loader": (
        "devices:\n  - {driver: guest-loader, props: {kernel: /boot/x, addr: 0}}",
        "guest-loader",
        "props.kernel",
        "reaches the host file /boot/x",
    ),
    "usb-mtp-rootdir": (
        "devices:\n  - {driver: usb-mtp, props: {rootdir: /root}}",
        "rootdir",
        "props.rootdir",
        "reaches the host file /root",
    ),
    "usb-host": (
        "devices:\n  - {driver: usb-host, props: {vendorid: 1}}",
        "usb-host",
        "devices[0].devices[0].driver",
        "passes a host USB device through",
    ),
    "u2f": ("devices:\n  - {driver: u2f-passthru}", "u2f", "driver", "security key"),
    "virtio-9p": ("devices:\n  - {driver: virtio-9p-pci}", "9p", "driver", "host directory"),
    "vhost-user-fs": (
        "devices:\n  - {driver: vhost-user-fs-pci}",
        "vhost-user",
        "driver",
        "vhost-user backend",
    ),
    "vhost-scsi": ("devices:\n  - {driver: vhost-scsi-pci}", "vhost-scsi", "driver", "SCSI target"),
    "scsi-generic": (
        "devices:\n  - {driver: scsi-generic}",
        "scsi-generic",
        "driver",
        "host SCSI device",
    ),
    "scsi-block": ("devices:\n  - {driver: scsi-block}", "scsi-block", "driver", "block device"),
    "pvrdma": ("devices:\n  - {driver: pvrdma}", "pvrdma", "driver", "RDMA"),
    "usb-redir": ("devices:\n  - {driver: usb-redir}", "usb-redir", "driver", "USB device"),
    "ivshmem-doorbell": (
        "devices:\n  - {driver: ivshmem-doorbell}",
        "doorbell",
        "driver",
        "socket",
    ),
    "ccid-emulated": (
        "devices:\n  - {driver: ccid-card-emulated}",
        "ccid",
        "driver",
        "smart-card database",
    ),
    "tpm-tis": ("devices:\n  - {driver: tpm-tis}", "tpm-tis", "driver", "host TPM"),
    "virtio-input-host": (
        "devices:\n  - {driver: virtio-input-host-pci}",
        "input-host",
        "driver",
        "host input device",
    ),
    "xen-passthrough": ("devices:\n  - {driver: xen-pci-passthrough}", "xen", "driver", "Xen"),
    "ipmi-bmc-extern": ("devices:\n  - {driver: ipmi-bmc-extern}", "ipmi", "driver", "BMC"),
    "x-pci-proxy-dev": ("devices:\n  - {driver: x-pci-proxy-dev}", "proxy", "driver", "descriptor"),
    "object-unknown": (
        "objects:\n  - {type: evil-backend, id: e}",
        "evil-backend",
        "devices[0].objects[0].type",
        "not one kmatrix passes to QEMU",
    ),
    "object-input-linux": (
        "objects:\n  - {type: input-linux, id: i, props: {evdev: /dev/input/event0}}",
        "input-linux",
        "objects[0].type",
        "not one kmatrix passes",
    ),
    "object-rng-egd": (
        "objects:\n  - {type: rng-egd, id: r, props: {chardev: qmp}}",
        "rng-egd",
        "objects[0].props.chardev",
        "QEMU backend",
    ),
    "object-rng-random-mem": (
        "objects:\n  - {type: rng-random, id: r, props: {filename: /dev/mem}}",
        "filename",
        "props.filename",
        "host file /dev/mem",
    ),
    "object-rng-random-default": (
        "objects:\n  - {type: rng-random, id: r}",
        "rng-random",
        "objects[0].type (filename default)",
        "/dev/urandom",
    ),
    "object-secret-file": (
        "objects:\n  - {type: secret, id: s, props: {file: /etc/shadow}}",
        "secret",
        "props.file",
        "host file /etc/shadow",
    ),
    "object-tls-dir": (
        "objects:\n  - {type: tls-creds-x509, id: t, props: {dir: /root/.ssh}}",
        "tls-creds",
        "props.dir",
        "host file /root/.ssh",
    ),
    "object-can-host": (
        "objects:\n  - {type: can-host-socketcan, id: c, props: {if: can0}}",
        "socketcan",
        "objects[0].type",
        "host network service",
    ),
    "object-input-barrier": (
        "objects:\n  - {type: input-barrier, id: b, props: {name: x}}",
        "barrier",
        "objects[0].type",
        "host network service",
    ),
    "object-x-remote": (
        "objects:\n  - {type: x-remote-object, id: x}",
        "x-remote",
        "objects[0].type",
        "not one kmatrix passes",
    ),
    "object-qtest": (
        "objects:\n  - {type: qtest, id: q}",
        "qtest",
        "objects[0].type",
        "not one kmatrix passes",
    ),
    "vhost-vsock": (
        "devices:\n  - {driver: vhost-vsock-pci, props: {guest-cid: 3}}",
        "vsock",
        "devices[0].devices[0].driver",
        "host network service",
    ),
    "machine-accel": (
        "machine_props: {accel: kvm}",
        "accel",
        "machine_props.accel",
        "the accelerator is kmatrix's to choose",
    ),
    "machine-kernel": (
        "machine_props: {kernel: /etc/passwd}",
        "kernel",
        "machine_props.kernel",
        "kmatrix boots the cell's kernel",
    ),
    "machine-initrd": (
        "machine_props: {initrd: /etc/passwd}",
        "initrd",
        "machine_props.initrd",
        "kmatrix boots",
    ),
    "machine-append": (
        "machine_props: {append: init=/bin/sh}",
        "append",
        "machine_props.append",
        "kmatrix boots",
    ),
    "machine-dumpdtb": (
        "machine_props: {dumpdtb: /tmp/x}",
        "dumpdtb",
        "machine_props.dumpdtb",
        "writes a host file",
    ),
    "machine-memory": (
        "machine_props: {memory: 64G}",
        "memory",
        "machine_props.memory",
        "from the matrix",
    ),
    "machine-smp": ("machine_props: {smp: 64}", "smp", "machine_props.smp", "from the matrix"),
    "machine-unknown": (
        "machine_props: {confidential-guest-support: sev0}",
        "confidential",
        "machine_props.confidential-guest-support",
        "not a machine property",
    ),
    "machine-pflash": (
        "machine_props: {pflash0: disk0-blk}",
        "pflash0",
        "machine_props.pflash0",
        "not a machine property",
    ),
    "machine-firmware": (
        "machine_props: {firmware: /etc/shadow}",
        "firmware",
        "machine_props.firmware",
        "host file /etc/shadow",
    ),
    "machine-bad-key": (
        "machine_props: {'accel=kvm,x': 1}",
        "accel",
        "machine_props.accel=kvm,x",
        "is not a QEMU property name",
    ),
    "global-chardev": (
        "globals: [virtserialport.chardev=qmp]",
        "globals",
        "devices[0].globals[0].chardev",
        "refers to a QEMU backend",
    ),
    "global-romfile": (
        "globals: [virtio-serial-pci.romfile=/etc/shadow]",
        "globals",
        "devices[0].globals[0].romfile",
        "host file /etc/shadow",
    ),
    "global-no-equals": (
        "globals: [q35-pcihost.pci-hole64-size]",
        "globals",
        "devices[0].globals[0]",
        "expected DRIVER.PROPERTY=VALUE",
    ),
    "global-no-dot": (
        "globals: [pci-hole64-size=1G]",
        "globals",
        "devices[0].globals[0]",
        "expected DRIVER.PROPERTY=VALUE",
    ),
    "global-bad-prop": (
        "globals: ['a.b,c=d']",
        "globals",
        "devices[0].globals[0].b,c",
        "is not a QEMU property name",
    ),
    "global-bad-driver": (
        "globals: ['a,b.c=d']",
        "globals",
        "devices[0].globals[0]",
        "expected DRIVER.PROPERTY=VALUE",
    ),
    "scratch-driver-vfio": (
        "scratch_disk: {size: 1, driver: vfio-pci}",
        "vfio",
        "devices[0].scratch_disk.driver",
        "not a raw vfio device",
    ),
    "scratch-romfile": (
        "scratch_disk: {size: 1, props: {romfile: /etc/shadow}}",
        "romfile",
        "scratch_disk.props.romfile",
        "host file /etc/shadow",
    ),
    "host-devices-ungranted": (
        "host_devices: [{host: '0000:01:00.0'}]",
        "host:",
        "devices[0].host_devices[0].host",
        "reaches the host PCI device 0000:01:00.0",
    ),
    "driver-with-comma": (
        "devices:\n  - {driver: 'virtio-rng-pci,romfile=/etc/shadow'}",
        "driver",
        "devices[0].devices[0].driver",
        "does not match",
    ),
    "object-id-comma": (
        "objects:\n  - {type: iothread, id: 'a,b'}",
        "iothread",
        "devices[0].objects[0].id",
        "does not match",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_qemu_option_refused(env: Env, case: str) -> None:
    profile, needle, key, frag = REFUSED[case]
    m, text = device_matrix(env, profile)
    line = line_of(text, needle)
    res = shell(env, m, "--allow-host-access")  # the flag alone grants nothing
    check(env, res, 2, f"{m}:{line}: ", f"{key}: ", frag)


CPU_MODELS = {
    "cpu-comma-kernel": "qemu64,kernel=/etc/passwd",
    "cpu-double-comma": "qemu64,,x",
    "cpu-space": "qemu64 -object x",
    "cpu-equals-twice": "qemu64,a=b=c",
    "cpu-trailing-comma": "qemu64,",
    "cpu-newline": "qemu64\\n",
}


@pytest.mark.parametrize("case", sorted(CPU_MODELS))
def test_cpu_model_outside_the_grammar(env: Env, case: str) -> None:
    fake_kernel(env)
    text = MATRIX.replace(
        "cpus: [qemu64]", f'cpus: [{{name: qemu64, model: "{CPU_MODELS[case]}"}}]'
    )
    m = env.write("m.yaml", text)
    check(env, shell(env, m), 2, f"{m}:5: cpus[0].model: ", "does not match")


GRANTS = {
    # id: (profile, host_access section, line needle, key, fragment)
    "files-elsewhere": (
        "objects:\n  - {type: memory-backend-file, id: m, props: {mem-path: /etc/shadow, "
        "size: 1M}}",
        "host_access: {reason: hugepages, files: [/dev/hugepages]}\n",
        "mem-path",
        "devices[0].objects[0].props.mem-path",
        "host file /etc/shadow",
    ),
    "files-prefix-is-not-a-parent": (
        "devices:\n  - {driver: virtio-rng-pci, props: {romfile: /etc/shadowx}}",
        "host_access: {reason: x, files: [/etc/shadow]}\n",
        "romfile",
        "props.romfile",
        "host file /etc/shadowx",
    ),
    "device-other-address": (
        "host_devices: [{host: '0000:02:00.0'}]",
        "host_access: {reason: gpu, devices: ['0000:01:00.0']}\n",
        "host:",
        "host_devices[0].host",
        "host PCI device 0000:02:00.0",
    ),
    "networks-not-granted": (
        "devices:\n  - {driver: vhost-vsock-pci}",
        "host_access: {reason: x, networks: false}\n",
        "vsock",
        "devices[0].devices[0].driver",
        "host_access.networks",
    ),
    "grant-relative": (
        "machine_props: {hpet: false}",
        "host_access: {reason: x, files: [etc]}\n",
        "files",
        "host_access.files[0]",
        "must be an absolute path",
    ),
    "grant-root": (
        "machine_props: {hpet: false}",
        "host_access: {reason: x, files: [/]}\n",
        "files",
        "host_access.files[0]",
        "granting all of / is not allowed",
    ),
    "grant-no-reason": (
        "machine_props: {hpet: false}",
        "host_access: {files: [/tmp]}\n",
        "host_access",
        "host_access.reason",
        "required key is missing",
    ),
    "grant-unknown-key": (
        "machine_props: {hpet: false}",
        "host_access: {reason: x, everything: true}\n",
        "host_access",
        "host_access.everything",
        "unknown key",
    ),
    "grant-bad-address": (
        "machine_props: {hpet: false}",
        "host_access: {reason: x, devices: [gpu0]}\n",
        "host_access",
        "host_access.devices[0]",
        "not a PCI address",
    ),
    "grant-networks-string": (
        "machine_props: {hpet: false}",
        "host_access: {reason: x, networks: yes please}\n",
        "host_access",
        "host_access.networks",
        "expected true or false",
    ),
}


@pytest.mark.parametrize("case", sorted(GRANTS))
def test_host_access_grant_checked(env: Env, case: str) -> None:
    profile, access, needle, key, frag = GRANTS[case]
    m, text = device_matrix(env, profile, access)
    line = line_of(text, needle)
    check(env, shell(env, m, "--allow-host-access"), 2, f"{m}:{line}: ", f"{key}: ", frag)


def test_granted_link_out_of_a_granted_directory_is_refused(env: Env) -> None:
    """Paths are judged after their links are resolved: a link inside a granted directory
    that points at a host file is that host file."""
    granted = env.root / "hugepages"
    granted.mkdir()
    (granted / "evil").symlink_to(env.secret)
    m, text = device_matrix(
        env,
        f"objects:\n  - {{type: memory-backend-file, id: m, props: {{mem-path: {granted}/evil, "
        "size: 1M}}",
        f"host_access: {{reason: x, files: [{granted}]}}\n",
    )
    check(env, shell(env, m, "--allow-host-access"), 2, f"{m}:{line_of(text, 'mem-path')}: ",
          f"host file {env.secret}")  # fmt: skip


SHM_GRANT = "host_access: {reason: shared memory, files: [/dev/shm]}\n"
HOST_PROFILE = "objects:\n  - {type: memory-backend-file, id: m, props: {mem-path: %s, size: 1M}}"


def test_grant_without_the_run_option_is_refused(env: Env) -> None:
    """Both halves are needed: the matrix's grant and the run's option."""
    m, text = device_matrix(
        env,
        HOST_PROFILE % "/dev/shm/kmx",
        "host_access: {reason: shared memory, files: [/dev/shm]}\n",
    )
    line = line_of(text, "host_access")
    res = shell(env, m)
    check(env, res, 2, f"{m}:{line}: host_access: cell {CELL} reaches the host file /dev/shm/kmx",
          "--kmatrix-allow-host-access")  # fmt: skip
    res = plugin(env, f"--kmatrix-matrix={m}")
    check(env, res, 4, f"{m}:{line}: host_access: ", "this run does not allow host access")


def test_grant_with_the_run_option_goes_on_to_the_kernel(env: Env) -> None:
    """Granted and allowed, the profile passes; the next check (the fake kernel cannot be
    extracted... here: is not bootable by the fake QEMU) is what stops it, still before QEMU."""
    m, _ = device_matrix(
        env,
        HOST_PROFILE % "/dev/shm/kmx",
        "host_access: {reason: shared memory, files: [/dev/shm]}\n",
    )
    (env.root / "in" / "bzImage").write_bytes(b"not a kernel")
    res = shell(env, m, "--allow-host-access")
    check(env, res, 2, "(kernel k)", "boot header")


def test_guest_refuses_host_access_not_allowed(env: Env) -> None:
    """The last gate, for code that builds a Guest itself."""
    from kmatrix.errors import InputError
    from kmatrix.guest.guest import Guest
    from kmatrix.kernels import load_matrix

    m, _ = device_matrix(
        env, HOST_PROFILE % "/dev/shm/kmx", "host_access: {reason: x, files: [/dev/shm]}\n"
    )
    cell = load_matrix(m).cells[0]
    with pytest.raises(InputError, match="host access is not allowed"):
        Guest(cell, env.root / "out").prepare()
    assert env.qemu_calls() == []


# --- class 1: host files through kernel artefacts -------------------------------------------


def modules_tree(env: Env, dep: str, files: dict[str, str | Path] | None = None) -> Path:
    """lib/modules/RELEASE with a modules.dep of our own; files: name -> content, or a Path
    to link to."""
    mdir = env.root / "in" / "mods" / RELEASE
    mdir.mkdir(parents=True, exist_ok=True)
    (mdir / "modules.dep").write_text(dep)
    for name, what in (files or {}).items():
        p = mdir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(what, Path):
            p.symlink_to(what)
        else:
            p.write_text(what)
    return mdir


CONFIG = "CONFIG_VIRTIO_PCI=m\nCONFIG_VIRTIO_CONSOLE=m\n"  # no PVH: the image is not extracted


def image_matrix(env: Env, modules: Path) -> Path:
    fake_kernel(env)
    cfg = env.write("config", CONFIG)
    return env.write(
        "m.yaml",
        MATRIX.replace(
            "{name: k, image: bzImage}",
            f"{{name: k, image: bzImage, config: {cfg}, modules: {modules}}}",
        ),
    )


def test_modules_dep_dotdot_entry_reads_and_writes_nothing_outside(env: Env) -> None:
    outside = env.root / "written-outside.ko"
    rel = os.path.relpath(env.secret, env.root / "in" / "mods" / RELEASE)
    mdir = modules_tree(
        env,
        f"kernel/virtio_pci.ko: {rel}\nkernel/virtio_console.ko:\n"
        f"{os.path.relpath(outside, env.root / 'in' / 'mods' / RELEASE)}:\n",
        {"kernel/virtio_pci.ko": "x", "kernel/virtio_console.ko": "x"},
    )
    res = shell(env, image_matrix(env, mdir))
    check(env, res, 2, f"{mdir / 'modules.dep'}:1: {rel!r} is not a path inside the module tree")
    assert not outside.exists() and leaked(env) == []
    assert (
        not list((env.cache / "images").glob("*.cpio")) if (env.cache / "images").exists() else True
    )


@pytest.mark.parametrize(
    ("dep", "line"),
    [
        ("/etc/shadow:\n", 1),
        ("kernel/virtio_pci.ko: /etc/shadow\n", 1),
        ("kernel/a.ko:\nkernel/../../../../x.ko:\n", 2),
        ("kernel/virtio_pci.ko:\nkernel/virtio_console.ko: kernel/../../../../../etc/passwd\n", 2),
    ],
)
def test_modules_dep_entry_outside_the_tree(env: Env, dep: str, line: int) -> None:
    mdir = modules_tree(env, dep, {"kernel/virtio_pci.ko": "x"})
    res = shell(env, image_matrix(env, mdir))
    check(env, res, 2, f"{mdir / 'modules.dep'}:{line}: ", "is not a path inside the module tree")
    assert leaked(env) == []


@pytest.mark.parametrize("link", ["absolute", "relative"])
def test_module_linking_out_of_the_tree(env: Env, link: str) -> None:
    target = (
        env.secret
        if link == "absolute"
        else Path(os.path.relpath(env.secret, env.root / "in" / "mods" / RELEASE / "kernel"))
    )
    mdir = modules_tree(
        env,
        "kernel/virtio_pci.ko:\nkernel/virtio_console.ko: kernel/virtio_pci.ko\n",
        {"kernel/virtio_pci.ko": "x", "kernel/virtio_console.ko": target},
    )
    res = shell(env, image_matrix(env, mdir))
    check(env, res, 2, str(mdir), "module file kernel/virtio_console.ko: leads to "
          f"{env.secret}", "escapes the module tree")  # fmt: skip
    assert leaked(env) == []


@pytest.mark.parametrize("name", ["modules.dep", "modules.builtin"])
def test_module_index_linking_out(env: Env, name: str) -> None:
    mdir = modules_tree(env, "kernel/virtio_pci.ko:\n", {"kernel/virtio_pci.ko": "x"})
    (mdir / name).unlink(missing_ok=True)
    (mdir / name).symlink_to(env.secret)
    res = shell(env, image_matrix(env, mdir))
    check(env, res, 2, f"module file {name}: leads to {env.secret}", "escapes the module tree")
    assert leaked(env) == []


def test_module_decompression_is_capped(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest_image, "MAX_MODULE_BYTES", 1 << 20)
    bomb = lzma.compress(b"\0" * (2 << 20), format=lzma.FORMAT_XZ, preset=0)
    mdir = modules_tree(env, "kernel/virtio_pci.ko.xz:\nkernel/virtio_console.ko.xz:\n")
    (mdir / "kernel").mkdir()
    (mdir / "kernel" / "virtio_pci.ko.xz").write_bytes(bomb)
    (mdir / "kernel" / "virtio_console.ko.xz").write_bytes(bomb)
    res = shell(env, image_matrix(env, mdir))
    check(env, res, 2, "virtio_", f"decompresses to more than {1 << 20} bytes")
    staged = [p for p in env.cache.rglob("*.ko") if p.stat().st_size > (1 << 20)]
    assert staged == []


def make_deb(env: Env, name: str, tree: Callable[[Path], None]) -> Path:
    pkg = env.root / "debs" / name
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1\nArchitecture: amd64\nMaintainer: x <x@example.org>\n"
        "Description: a hostile kernel package\n"
    )
    tree(pkg)
    deb = env.root / "debs" / f"{name}.deb"
    subprocess.run(["dpkg-deb", "-b", "--root-owner-group", "-Zgzip", str(pkg), str(deb)],
                   check=True, capture_output=True)  # fmt: skip
    return deb


def kernel_pkg(pkg: Path) -> None:
    (pkg / "boot").mkdir()
    (pkg / "boot" / f"vmlinuz-{RELEASE}").write_bytes(
        make_bzimage(bytes.fromhex("fd377a585a000004") + b"\0" * 64 + le32(100))
    )
    (pkg / "boot" / f"config-{RELEASE}").write_text(CONFIG)
    mods = pkg / "lib" / "modules" / RELEASE / "kernel"
    mods.mkdir(parents=True)
    (mods / "virtio_pci.ko").write_text("x")
    (mods / "virtio_console.ko").write_text("x")


def _link(rel: str, target: str | Callable[[Env], str]) -> Callable[[Env], Callable[[Path], None]]:
    def for_env(env: Env) -> Callable[[Path], None]:
        def tree(pkg: Path) -> None:
            kernel_pkg(pkg)
            p = pkg / rel
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.is_dir():
                shutil.rmtree(p)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.symlink_to(target(env) if callable(target) else target)

        return tree

    return for_env


DEBS = {
    "vmlinuz-absolute": _link(f"boot/vmlinuz-{RELEASE}", lambda e: str(e.secret)),
    "vmlinuz-escaping": _link(f"boot/vmlinuz-{RELEASE}", "../../../../../../../../etc/hostname"),
    "config-absolute": _link(f"boot/config-{RELEASE}", "/etc/shadow"),
    "module-absolute": _link(
        f"lib/modules/{RELEASE}/kernel/virtio_console.ko", lambda e: str(e.secret)
    ),
    "module-dev-zero": _link(f"lib/modules/{RELEASE}/kernel/virtio_console.ko", "/dev/zero"),
    "modules-dir": _link(f"lib/modules/{RELEASE}", "/lib/modules"),
    "lib-root": _link("lib/host", "/"),
}


@pytest.mark.parametrize("case", sorted(DEBS))
def test_deb_link_that_escapes_the_package(env: Env, case: str) -> None:
    deb = make_deb(env, f"linux-image-{case}", DEBS[case](env))
    m = env.write("m.yaml", MATRIX.replace("{name: k, image: bzImage}", f"{{name: k, deb: {deb}}}"))
    res = shell(env, m)
    check(env, res, 2, f"package {deb.name}: member ", "outside the package: refused")
    assert leaked(env) == []
    assert not (env.cache / "kernels").exists() or not [
        p for p in (env.cache / "kernels").iterdir() if not p.name.startswith(".")
    ]  # nothing of it stays in the cache


def test_deb_with_a_fifo_member(env: Env) -> None:
    def tree(pkg: Path) -> None:
        kernel_pkg(pkg)
        os.mkfifo(pkg / "boot" / "pipe")

    deb = make_deb(env, "linux-image-fifo", tree)
    m = env.write("m.yaml", MATRIX.replace("{name: k, image: bzImage}", f"{{name: k, deb: {deb}}}"))
    check(env, shell(env, m), 2, f"package {deb.name}: member boot/pipe is a FIFO")


def test_kernel_payload_decompression_is_capped(env: Env) -> None:
    """A payload that claims 4 KiB and decompresses to 8 MiB is stopped at the claim."""
    bomb = lzma.compress(b"\0" * (8 << 20), format=lzma.FORMAT_XZ, preset=0) + le32(4096)
    img = env.root / "in" / "bzImage"
    img.parent.mkdir(parents=True)
    img.write_bytes(make_bzimage(bomb))
    cfg = env.write("config", CONFIG + "CONFIG_PVH=y\n")
    entry = f"{{name: k, image: bzImage, config: {cfg}}}"
    m = env.write("m.yaml", MATRIX.replace("{name: k, image: bzImage}", entry))
    check(env, shell(env, m), 2, "xz data decompresses to more than 4096 bytes")
    assert sum(p.stat().st_size for p in env.cache.rglob("*") if p.is_file()) < 1 << 20


# --- class 2: reports and merge embed only the run's files ----------------------------------


def a_run(env: Env, name: str = "run", **cell: object) -> Path:
    """A one-cell results.json (schema kmatrix-results/1) with a console log."""
    d = env.root / name
    (d / "cells" / "k__qemu64__d").mkdir(parents=True)
    (d / "cells" / "k__qemu64__d" / "console.log").write_text("booted\n")
    entry: dict[str, object] = {
        "id": CELL, "kernel": "k", "cpu": "qemu64", "device": "d", "boot": {}, "findings": [],
        "status": "pass", "artifacts": {"console": "cells/k__qemu64__d/console.log"},
    }  # fmt: skip
    entry.update(cell)
    doc = {
        "schema": "kmatrix-results/1",
        "run": {"matrix_name": "hostile", "matrix_digest": "d1", "planned_cells": {CELL: 1}},
        "cells": [entry],
        "results": [{"cell": CELL, "nodeid": f"t.py::test_x[{CELL}]", "outcome": "passed",
                     "duration": 1.0}],
    }  # fmt: skip
    (d / "results.json").write_text(json.dumps(doc))
    return d


ARTIFACTS: dict[str, Callable[[Env], object]] = {
    "absolute": lambda e: str(e.secret),
    "dotdot": lambda e: os.path.relpath(e.secret, e.root / "run"),
    "inner-dotdot": lambda e: "cells/k__qemu64__d/../../../" + os.path.relpath(e.secret, e.root),
    "not-a-string": lambda e: 42,
    "nul": lambda e: "cells/\0x",
    "empty-list": lambda e: [],
}


@pytest.mark.parametrize("case", sorted(ARTIFACTS))
@pytest.mark.parametrize("command", ["report", "merge"])
def test_artifact_outside_the_run(env: Env, case: str, command: str) -> None:
    run = a_run(env, artifacts={"console": ARTIFACTS[case](env)})
    out = env.root / "merged"
    res = cli("report", run) if command == "report" else cli("merge", out, run)
    check(env, res, 2, f"{run / 'results.json'}: cells[0]", ".artifacts.console: ")
    assert leaked(env, run, out) == [] and not (run / "index.html").exists()
    assert not out.exists()


@pytest.mark.parametrize("command", ["report", "merge"])
def test_artifact_link_out_of_the_run(env: Env, command: str) -> None:
    run = a_run(env)
    log = run / "cells" / "k__qemu64__d" / "console.log"
    log.unlink()
    log.symlink_to(env.secret)
    out = env.root / "merged"
    res = cli("report", run) if command == "report" else cli("merge", out, run)
    check(env, res, 2, "artifacts.console: ", f"leads to {env.secret}, outside {run}")
    assert leaked(env, run, out) == []


def test_artifacts_not_a_mapping(env: Env) -> None:
    run = a_run(env, artifacts=["cells/x"])
    check(
        env,
        cli("report", run),
        2,
        f"{run / 'results.json'}: cells[0].artifacts: expected an object",
    )


def test_merge_refuses_a_link_in_a_shard(env: Env) -> None:
    run = a_run(env)
    (run / "cells" / "k__qemu64__d" / "extra.log").symlink_to(env.secret)
    out = env.root / "merged"
    check(env, cli("merge", out, run), 2, "cells/k__qemu64__d/extra.log is a symbolic link")
    assert not out.exists() and leaked(env, out) == []


def test_merge_refuses_a_fifo_in_a_shard(env: Env) -> None:
    run = a_run(env)
    os.mkfifo(run / "cells" / "k__qemu64__d" / "pipe")
    check(env, cli("merge", env.root / "merged", run), 2, "pipe is a FIFO")


@pytest.mark.parametrize(
    "cell_id", ["..", "../../etc", "a/b", "a/b/c/d", "/a/b/c", "a/../b", "", 7]
)
def test_merge_refuses_a_cell_id_that_is_not_one(env: Env, cell_id: object) -> None:
    run = a_run(env, id=cell_id)
    out = env.root / "merged"
    frag = "is not a cell id" if isinstance(cell_id, str) else "expected a string"
    check(env, cli("merge", out, run), 2, f"{run / 'results.json'}: cells[0].id: ", frag)
    assert not out.exists() and not (env.root / "cells").exists()


@pytest.mark.parametrize("spec", ["0/0", "3/2", "a/b", "1/0", "-1/2", "1/2/3", 5, ["1", "2"]])
def test_merge_refuses_a_bad_shard_spec(env: Env, spec: object) -> None:
    run = a_run(env)
    doc = json.loads((run / "results.json").read_text())
    doc["run"]["shard"] = spec
    (run / "results.json").write_text(json.dumps(doc))
    res = cli("merge", env.root / "merged", run)
    check(env, res, 2, f"{run / 'results.json'}: run.shard: ")
    assert "MISSING shards" not in res.text


@pytest.mark.parametrize("planned", [{CELL: "abc"}, {CELL: -1}, {CELL: True}, "all", 3])
def test_merge_refuses_bad_planned_cells(env: Env, planned: object) -> None:
    run = a_run(env)
    doc = json.loads((run / "results.json").read_text())
    doc["run"]["planned_cells"] = planned
    (run / "results.json").write_text(json.dumps(doc))
    check(env, cli("merge", env.root / "merged", run), 2, "run.planned_cells")


def one_result(**fields: object) -> str:
    """A /1 results.json with one result carrying fields (json writes NaN and Infinity)."""
    result = {"cell": CELL, "nodeid": "t", "outcome": "passed", **fields}
    return json.dumps({"schema": "kmatrix-results/1", "run": {}, "cells": [], "results": [result]})


RESULTS_FILES = {
    "nan": (one_result(duration=float("nan")), "results[0].duration: NaN is not a number"),
    "infinity": (one_result(metrics={"m": float("inf")}),
                 "results[0].metrics.m: Infinity is not a finite number"),
    "not-json": ("{", "not valid JSON"),
    "wrong-schema": ('{"schema": "other", "cells": [], "results": []}', "schema: expected"),
    "cells-not-list": ('{"schema": "kmatrix-results/1", "run": {}, "cells": {}, "results": []}',
                       "cells: expected a list"),
    "a-list": ("[]", "expected an object, got a list"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(RESULTS_FILES))
@pytest.mark.parametrize("command", ["report", "merge", "compare"])
def test_bad_results_file(env: Env, case: str, command: str) -> None:
    text, frag = RESULTS_FILES[case]
    bad = env.root / "bad"
    bad.mkdir()
    (bad / "results.json").write_text(text)
    good = a_run(env)
    res = {
        "report": lambda: cli("report", bad),
        "merge": lambda: cli("merge", env.root / "merged", bad),
        "compare": lambda: cli("compare", good, bad),
    }[command]()
    check(env, res, 2, f"{bad / 'results.json'}: ", frag)


@pytest.mark.parametrize("kind", ["fifo", "chardev", "dir", "loop"])
def test_results_file_that_is_not_a_file(env: Env, kind: str) -> None:
    d = env.root / "r"
    d.mkdir()
    p = d / "results.json"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "chardev":
        p.symlink_to("/dev/zero")
    elif kind == "dir":
        p.mkdir()
    else:
        p.symlink_to(p)
    res = cli("report", d)
    check(env, res, 2, f"{p}: ")


# --- class 6: command-line values -----------------------------------------------------------


def test_cli_values(env: Env) -> None:
    """Each bad value: a usage error naming the option (argparse's exit status 2)."""
    run = a_run(env)
    a_file = env.write("file.txt", "x")
    m = env.write("m.yaml", MATRIX)
    fake_kernel(env)
    cases: list[tuple[tuple[str | Path, ...], str, str]] = [
        (("compare", run, run, "--json", env.root), "--json", "is a directory"),
        (("compare", run, run, "--json", env.root / "no" / "x.json"), "--json", "does not exist"),
        (("compare", run, run, "--json", "/dev/null"), "--json", "not a regular file"),
        (("compare", run, run, "--min-change", "-5"), "--min-change", "0 or more"),
        (("compare", run, run, "--min-change", "nan"), "--min-change", "finite"),
        (("compare", run, run, "--min-change", "lots"), "--min-change", "not a number"),
        (("compare", run, run, "--alpha", "2"), "--alpha", "between 0 and 1"),
        (("compare", run, run, "--alpha", "nan"), "--alpha", "between 0 and 1"),
        (("run", "-m", m, "--repeat", "0"), "--repeat", "1 or more"),
        (("run", "-m", m, "--repeat", "-3"), "--repeat", "1 or more"),
        (("run", "-m", m, "--rerun", "-1"), "--rerun", "0 or more"),
        (("bisect", "-m", m, CELL, "--runs", "0"), "--runs", "at least one run"),
        (("run", "-m", m, "--reports", a_file), "--reports", "not a directory"),
        (("shell", "-m", m, CELL, "--reports", a_file), "--reports", "not a directory"),
        (("merge", a_file, run), "OUT_DIR", "not a directory"),
        (
            ("patches", "check", env.root, "--source", env.root, "--json", env.root),
            "--json",
            "is a directory",
        ),
    ]
    for argv, option, frag in cases:
        check(env, cli(*argv), 2, option, frag)


def test_compare_known_issues_unreadable(env: Env) -> None:
    run = a_run(env)
    check(env, cli("compare", run, run, "--known-issues", env.root), 2, "is a directory")
    check(env, cli("compare", run, run, "--known-issues", env.root / "none.yaml"), 2,
          "file not found")  # fmt: skip


def test_report_known_issues_unreadable_is_not_success(env: Env) -> None:
    run = a_run(env)
    res = cli("report", run, "--known-issues", env.root)
    assert res.rc == 1 and "is a directory" in res.err and "Traceback" not in res.text


def test_shell_unknown_cell(env: Env) -> None:
    fake_kernel(env)
    m = env.write("m.yaml", MATRIX)
    check(env, cli("shell", "-m", m, "..", "--reports", env.root), 2, "no cell '..'")


PLUGIN_CASES: dict[str, tuple[tuple[str, ...], str]] = {
    "retries-negative": (("--kmatrix-retries=-1",), "--kmatrix-retries: -1: must be 0 or more"),
    "retries-word": (("--kmatrix-retries=many",), "--kmatrix-retries: 'many' is not a whole"),
    "rerun-negative": (("--kmatrix-rerun=-2",), "--kmatrix-rerun: -2: must be 0 or more"),
    "shard-0-0": (("--kmatrix-shard=0/0",), "--kmatrix-shard '0/0': I must be between 1 and N"),
    "shard-3-2": (("--kmatrix-shard=3/2",), "--kmatrix-shard '3/2': I must be between 1 and N"),
    "shard-a-b": (("--kmatrix-shard=a/b",), "--kmatrix-shard 'a/b': expected I/N"),
    "shard-1-0": (("--kmatrix-shard=1/0",), "I must be between 1 and N"),
    "durations-missing": (
        ("--kmatrix-durations=/nonexistent/results.json",),
        "cannot read durations: /nonexistent/results.json: no such results file",
    ),
    "durations-dir": (("--kmatrix-durations=/",), "cannot read durations: /results.json"),
    "durations-devzero": (("--kmatrix-durations=/dev/zero",), "is a character device"),
    "known-issues-missing": (("--kmatrix-known-issues=/nonexistent.yaml",), "file not found"),
    "known-issues-dir": (("--kmatrix-known-issues=/",), "is a directory"),
    "baseline-missing": (("--kmatrix-baseline=/nonexistent",), "no results.json there"),
}


@pytest.mark.parametrize("case", sorted(PLUGIN_CASES))
def test_plugin_option_values(env: Env, case: str) -> None:
    args, frag = PLUGIN_CASES[case]
    fake_kernel(env)
    m = env.write("m.yaml", MATRIX)
    res = plugin(env, f"--kmatrix-matrix={m}", *args)
    check(env, res, 4, frag)


@pytest.mark.parametrize(
    ("content", "frag"),
    [
        (one_result(duration=float("nan")), "NaN is not a number"),
        (one_result(duration="x"), "expected a number"),
        ('{"results": [{"cell": "a", "duration": 1}]}', "missing key 'schema'"),
        ('{"schema": "kmatrix-results/1", "run": {}, "cells": [], "results": {}}',
         "results: expected a list"),
        ("not json", "not valid JSON"),
    ],
)  # fmt: skip
def test_plugin_durations_file_contents(env: Env, content: str, frag: str) -> None:
    fake_kernel(env)
    m = env.write("m.yaml", MATRIX)
    d = env.write("durations.json", content)
    res = plugin(env, f"--kmatrix-matrix={m}", f"--kmatrix-durations={d}")
    check(env, res, 4, f"cannot read durations: {d}: ", frag)


def test_plugin_durations_fifo_does_not_hang(env: Env) -> None:
    fake_kernel(env)
    m = env.write("m.yaml", MATRIX)
    fifo = env.root / "durations.json"
    os.mkfifo(fifo)
    res = plugin(env, f"--kmatrix-matrix={m}", f"--kmatrix-durations={fifo}")
    check(env, res, 4, "is a FIFO")


def test_plugin_reports_is_a_file(env: Env) -> None:
    fake_kernel(env)
    m = env.write("m.yaml", MATRIX)
    f = env.write("reports.txt", "x")
    res = plugin(env, f"--kmatrix-matrix={m}", f"--kmatrix-reports={f}")
    check(env, res, 4, "exists and is not a directory")


def test_plugin_matrix_error(env: Env) -> None:
    m = env.write("m.yaml", "name: !!python/object:os.system x\n")
    check(env, plugin(env, f"--kmatrix-matrix={m}"), 4, f"{m}:1: ", "is not allowed")


# --- class 4: the sandbox -------------------------------------------------------------------


def test_missing_sandbox_is_said_and_can_be_required(env: Env) -> None:
    """The fake QEMU fails the -sandbox probe: a warning by default, an error when required;
    only the probe runs (no VM)."""
    fake_kernel(env)
    m = env.write("m.yaml", MATRIX)
    vm_machine.sandbox_state.cache_clear()
    state = vm_machine.sandbox_state()
    assert state.startswith("off: the -sandbox probe exited with 1"), state
    res = plugin(env, f"--kmatrix-matrix={m}", "--kmatrix-require-sandbox")
    check(env, res, 4, "QEMU cannot run under its seccomp sandbox", "--kmatrix-require-sandbox",
          qemu=True)  # fmt: skip
    res = plugin(env, f"--kmatrix-matrix={m}", "--collect-only")
    assert res.rc == 0, res.text
    assert "QEMU runs WITHOUT its seccomp sandbox" in res.text
    assert not [c for c in env.qemu_calls() if "-kernel" in c]


def test_sandbox_state_reaches_junit_and_the_reports(env: Env) -> None:
    run = a_run(env, boot={"sandbox": "off: the -sandbox probe exited with 1 (no seccomp)"})
    res = cli("report", run)
    assert res.rc == 0, res.text
    assert (
        "QEMU sandbox OFF in 1 of 1 cells (the -sandbox probe exited with 1"
        in (run / "summary.md").read_text()
    )
    assert "QEMU sandbox" in (run / "index.html").read_text()
    assert (
        'name="kmatrix.sandbox" value="off: the -sandbox probe'
        in (run / "junit-cells.xml").read_text()
    )


# --- class 7: no raw traceback --------------------------------------------------------------


def test_cli_internal_error_is_one_line(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    import kmatrix.cli.main as cli_main

    def boom(args: object) -> int:
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(cli_main, "cmd_list", boom)
    res = cli("list", "-m", env.write("m.yaml", MATRIX))
    assert res.rc == crash.EXIT_INTERNAL == 3
    line = res.err.strip()
    assert "\n" not in line and "Traceback" not in res.text
    m = re.fullmatch(r"kmatrix: internal error: RuntimeError: a bug; details in (\S+)", line)
    assert m, line
    details = Path(m.group(1)).read_text()
    assert "Traceback" in details and "RuntimeError: a bug" in details and "boom" in details


def test_plugin_internal_error_is_one_line(env: Env) -> None:
    """An exception escaping into pytest (here from a conftest hook) ends the run with the
    one line and exit status 3, the traceback in the run's own directory."""
    fake_kernel(env)
    m = env.write("m.yaml", MATRIX)
    env.write("conftest.py", "def pytest_collection_finish(session):\n    raise KeyError('x')\n")
    reports = env.root / "reports"
    reports.mkdir()
    res = plugin(env, f"--kmatrix-matrix={m}", "-p", "no:randomly")
    assert res.rc == 3, res.text
    assert "Traceback" not in res.text and "INTERNALERROR" not in res.text, res.text
    m2 = re.search(r"kmatrix: internal error: KeyError: 'x'; details in (\S+)", res.text)
    assert m2, res.text
    details = Path(m2.group(1))
    assert details.parent.parent == reports and re.fullmatch(r"\d{8}-\d{6}", details.parent.name)
    assert "KeyError" in details.read_text()
    assert [p.name for p in reports.glob("kmatrix-internal-error-*")] == []


# --- class 8: leftovers ---------------------------------------------------------------------


def test_qemu_that_fails_to_start_leaves_no_run_dir(env: Env) -> None:
    from kmatrix.errors import VMError

    rundir = vm_machine.private_rundir()
    argv = ["qemu-system-x86_64", "-chardev", f"socket,id=qmp,path={rundir}/qmp.sock"]
    mach = vm_machine.Machine(argv, rundir, env.root / "qemu.log", "x")
    with pytest.raises(VMError, match="exited during start-up"):
        mach.launch(timeout=10)
    assert not rundir.exists()
    rundir = vm_machine.private_rundir()
    mach = vm_machine.Machine(["/nonexistent/qemu"], rundir, env.root / "qemu.log", "x")
    with pytest.raises(VMError, match="cannot start"):
        mach.launch()
    assert not rundir.exists()
    assert list(Path(os.environ["TMPDIR"]).iterdir()) == []


def test_image_key_covers_modules_builtin(env: Env) -> None:
    from kmatrix.guest.image import ModuleIndex, image_key, load_recipe
    from kmatrix.kernels.artifact import KernelArtifact

    mdir = modules_tree(env, "kernel/virtio_pci.ko:\n", {"kernel/virtio_pci.ko": "x"})
    kernel = KernelArtifact("k", Path("/x"), Path("/x"), RELEASE, "", None, mdir)
    recipe = load_recipe()

    def key() -> str:
        guest_image._INDEXES.clear()
        return image_key(recipe, kernel, ModuleIndex.load(mdir), ["virtio_pci"])

    first = key()
    (mdir / "modules.builtin").write_text("kernel/drivers/virtio/virtio_console.ko\n")
    second = key()
    (mdir / "modules.builtin").write_text("kernel/drivers/char/hw_random/virtio-rng.ko\n")
    assert len({first, second, key()}) == 3


@pytest.mark.parametrize("compression", ["zstd", "gzip", "xz"])
def test_decompress_file_is_capped(tmp_path: Path, compression: str) -> None:
    """Both ways of decompressing (a tool's pipe, a Python stream) stop at the cap."""
    from kmatrix.kernels.bzimage import KernelImageError, decompress_file

    src = tmp_path / "m.ko"
    src.write_bytes(b"\0" * (4 << 20))
    tool = {"zstd": ["zstd", "-q", "-f"], "gzip": ["gzip", "-f"], "xz": ["xz", "-0", "-f"]}
    subprocess.run([*tool[compression], str(src)], check=True)
    packed = next(tmp_path.glob("m.ko.*"))
    out = tmp_path / "out.ko"
    with out.open("wb") as f, pytest.raises(KernelImageError, match="more than 65536 bytes"):
        decompress_file(packed, compression, f, 65536)
    assert out.stat().st_size <= 65536
    with out.open("wb") as f:
        assert decompress_file(packed, compression, f, 8 << 20) == 4 << 20


@pytest.mark.parametrize(
    "target",
    ["net/../../../../etc", "..", "net/.", "net/.hidden", "/etc", "net//x", "a b"],
)
def test_kselftest_target_that_leaves_the_selftests_tree(env: Env, target: str) -> None:
    """A target names a directory under the selftests tree and the install: no way out."""
    fake_kernel(env)
    m = env.write(
        "m.yaml", MATRIX + f"suites: {{kselftest: {{targets: [{json.dumps(target)}]}}}}\n"
    )
    check(env, shell(env, m), 2, f"{m}:9: suites.kselftest.targets[0]")


def test_matrix_that_would_expand_into_millions_of_cells(env: Env) -> None:
    """300 short entries (under 2,000 YAML nodes) would be 2.7 million cells."""
    fake_kernel(env)
    text = (
        "kernels:\n" + "".join(f"  - {{name: k{i}, image: bzImage}}\n" for i in range(300))
        + "cpus: [" + ", ".join(f"c{i}" for i in range(300)) + "]\n"
        + "devices:\n" + "".join(f"  - {{name: d{i}}}\n" for i in range(30))
    )  # fmt: skip
    m = env.write("m.yaml", text)
    check(env, shell(env, m), 2, f"{m}: kernels x cpus x devices: 300 x 300 x 30 = 2700000")


def test_plugin_broken_known_issues_beside_the_matrix(env: Env) -> None:
    """known-issues.yaml beside the matrix is read by default: broken, the run stops."""
    fake_kernel(env)
    m = env.write("m.yaml", MATRIX)
    k = env.write("known-issues.yaml", "issues:\n  - {id: x, title: '('}\n")
    check(env, plugin(env, f"--kmatrix-matrix={m}"), 4, f"{k}:2: issues[0].title: ",
          "bad regular expression")  # fmt: skip


# Field types of results.json: kmatrix/results/schema.py checks them; one error each.
TYPED: dict[str, Callable[[dict[str, Any]], None]] = {
    "boot-not-a-mapping": lambda d: d["cells"][0].__setitem__("boot", "x"),
    "findings-not-a-list": lambda d: d["cells"][0].__setitem__("findings", "x"),
    "metrics-not-a-mapping": lambda d: d["results"][0].__setitem__("metrics", "x"),
    "duration-not-a-number": lambda d: d["results"][0].__setitem__("duration", "slow"),
    "run-not-a-mapping": lambda d: d.__setitem__("run", []),
    "outcome-not-a-string": lambda d: d["results"][0].__setitem__("outcome", 5),
}


@pytest.mark.parametrize("case", sorted(TYPED))
def test_results_field_of_the_wrong_type(env: Env, case: str) -> None:
    run = a_run(env)
    doc = json.loads((run / "results.json").read_text())
    TYPED[case](doc)
    (run / "results.json").write_text(json.dumps(doc))
    res = cli("report", run)
    assert "Traceback" not in res.text, res.text
    check(env, res, 2, f"{run / 'results.json'}: ")
