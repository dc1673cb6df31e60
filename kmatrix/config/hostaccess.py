"""What a device profile may hand QEMU, and what reaches the host (docs/security.md).

A matrix and its profiles may come from a contributor's branch, so every QEMU option a
profile passes (devices, objects, machine properties, globals, the scratch disk) is judged
here, once, when the profile is read, and each error names the file, line and key:

* refused outright: what would take the guest or QEMU out of kmatrix's hands (the
  accelerator, the kernel and its command line, references to backends - kmatrix's own
  console, QMP monitor, agent channel and scratch disk are the only ones that exist -
  file descriptors, and host hardware no pre-boot check covers: USB, SCSI, input, TPM,
  raw `vfio-pci` (host PCI devices go through `host_devices:` and kmatrix.vm.hostpci));
  object types not known to be harmless; property keys outside QEMU's property-name
  grammar; values with control characters;
* host access, recorded on the profile as HostUse: a host path an option names (any
  path-valued property, or any value that is an absolute path), a host PCI device
  (`host_devices:`), a host network or socket service (vhost-vsock, input-barrier,
  can-host-socketcan). A matrix runs those only when its `host_access:` section grants
  each one and the run allows host access on its command line
  (`--kmatrix-allow-host-access`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import yaml

from kmatrix.config.specs import (
    DEVICES,
    FILES,
    NETWORKS,
    Cell,
    HostAccess,
    HostUse,
    Matrix,
)
from kmatrix.config.yamlnode import NAME_RE, NodeReader
from kmatrix.errors import MatrixError

# QEMU's name grammar (qapi/qapi-util.c parse_qapi_name): a letter, then letters, digits,
# '-' and '_'. A key outside it could carry ',' or '=' and inject options.
PROP_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")  # always fullmatch()
# -cpu MODEL[,+flag|,-flag|,flag|,prop=value]...: CPU flags may contain dots (sse4.2).
CPU_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*"
    r"(,([+-]?[A-Za-z0-9][A-Za-z0-9._-]*|[A-Za-z][A-Za-z0-9._-]*=[A-Za-z0-9._+-]+))*"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --- what the tables mean ------------------------------------------------------------------

# Properties that refer to a QEMU backend or hand QEMU a host resource by number or
# address: never from a profile. Host PCI devices have their own section.
REFUSED_KEYS = {
    **dict.fromkeys(
        ("chardev", "netdev", "drive", "fsdev", "tpmdev", "audiodev"),
        "refers to a QEMU backend; a profile cannot declare backends, and the only ones that "
        "exist are kmatrix's own (console, QMP monitor, agent channel, scratch disk)",
    ),
    **dict.fromkeys(
        ("fd", "fds", "vhostfd", "vhostfds"),
        "hands QEMU a file descriptor of the host",
    ),
    **dict.fromkeys(
        ("host", "sysfsdev", "hostbus", "hostaddr", "hostport", "hostdevice", "ibdev"),
        "names a host device; pass host PCI devices with host_devices: (checked on the host "
        "before boot)",
    ),
}
# Properties whose value is a host path (besides any value that is an absolute path).
PATH_KEYS = frozenset(
    ("file", "filename", "path", "dir", "mem-path", "romfile", "evdev", "firmware", "kernel",
     "initrd", "rootdir", "logfile", "x-igd-opregion-file")
)  # fmt: skip

# Device drivers that pass host hardware through with no pre-boot check, or open a
# descriptor the profile cannot provide.
_REFUSED_DRIVER_PREFIXES = {
    "vfio-": "host PCI devices go through host_devices: (checked on the host before boot), "
    "not a raw vfio device",
    "vhost-user-": "talks to a host socket (a vhost-user backend)",
    "vhost-scsi": "passes a host SCSI target through",
    "virtio-9p": "shares a host directory (fsdev)",
    "virtio-input-host": "passes a host input device through",
    "tpm-": "passes a host TPM through",
    "xen-": "is Xen passthrough",
}
_REFUSED_DRIVERS = {
    "usb-host": "passes a host USB device through",
    "u2f-passthru": "passes a host security key through",
    "ccid-card-passthru": "passes a host smart card through",
    "ccid-card-emulated": "reads the host's smart-card database",
    "scsi-generic": "passes a host SCSI device through",
    "scsi-block": "passes a host block device through",
    "pvrdma": "uses a host RDMA device",
    "x-pci-proxy-dev": "talks to a remote process over a descriptor",
    "usb-redir": "redirects a USB device over a host socket",
    "ipmi-bmc-extern": "talks to an external BMC over a host socket",
    "ivshmem-doorbell": "shares memory with host processes over a socket",
    "ivshmem": "shares host memory over a socket (use ivshmem-plain)",
    "pci-assign": "is legacy host passthrough",
    "kvm-pci-assign": "is legacy host passthrough",
}
_NETWORK_DRIVER_PREFIXES = ("vhost-vsock",)  # the guest reaches host AF_VSOCK services

# Object types with no host reach beyond the paths their properties name.
SAFE_OBJECTS = frozenset(
    ("memory-backend-ram", "memory-backend-memfd", "memory-backend-file", "iothread",
     "main-loop", "thread-context", "throttle-group", "rng-builtin", "rng-random", "secret",
     "authz-simple", "authz-list", "authz-list-file", "can-bus", "cryptodev-backend-builtin",
     "tls-cipher-suites", "tls-creds-anon", "tls-creds-psk", "tls-creds-x509")
)  # fmt: skip
NETWORK_OBJECTS = frozenset(("input-barrier", "can-host-socketcan"))
# Paths an object opens when its property is left out.
_DEFAULT_PATHS = {("rng-random", "filename"): "/dev/urandom"}

# -machine properties a profile may set; everything else is refused with this list.
MACHINE_PROPS = frozenset(
    ("acpi", "boot", "bus-lock-ratelimit", "default-bus-bypass-iommu", "dump-guest-core",
     "graphics", "hmat", "hpet", "i8042", "kernel-irqchip", "kvm-shadow-mem", "max-fw-size",
     "max-ram-below-4g", "mem-merge", "memory-backend", "nvdimm", "nvdimm-persistence", "pic",
     "pit", "sata", "smbios-entry-point-type", "smbus", "smm", "suppress-vmdesc", "usb",
     "vmport", "x-oem-id", "x-oem-table-id", "firmware")
)  # fmt: skip
_MACHINE_REFUSED = {
    "accel": "the accelerator is kmatrix's to choose (defaults.accel, --kmatrix-accel)",
    **dict.fromkeys(
        ("kernel", "initrd", "append", "dtb"),
        "kmatrix boots the cell's kernel, initramfs and command line (kernel_args:)",
    ),
    "memory": "the cell's memory comes from the matrix (memory:)",
    "smp": "the cell's vCPUs come from the matrix (smp:)",
    "dumpdtb": "writes a host file and stops QEMU",
}


class Judge:
    """Checks one profile's QEMU options as they are read; collects its host uses."""

    def __init__(self, r: NodeReader) -> None:
        self.r = r
        self.uses: list[HostUse] = []

    def _use(self, kind: str, what: str, node: yaml.Node, key: str) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        self.uses.append(HostUse(kind, what, str(self.r.path), line, key))

    def key(self, knode: yaml.Node, key: str, name: str) -> None:
        if not PROP_KEY_RE.fullmatch(name):
            raise self.r.err(
                knode, key, f"{name!r} is not a QEMU property name (a letter, then letters, "
                "digits, '-' or '_')",
            )  # fmt: skip

    def props(
        self,
        pairs: Iterable[tuple[yaml.Node, yaml.Node, str, str]],
        key: str,
        owner: str,
    ) -> None:
        """Each (key node, value node, key, value) of an option's properties."""
        for knode, vnode, k, v in pairs:
            full = f"{key}.{k}"
            self.key(knode, full, k)
            if _CONTROL.search(v):
                raise self.r.err(vnode, full, "control characters are not allowed in a value")
            if k in REFUSED_KEYS:
                raise self.r.err(knode, full, f"{owner}: {k}= {REFUSED_KEYS[k]}")
            if v and (k in PATH_KEYS or v.startswith(("/", "~"))):
                self.path(vnode, full, v)

    def path(self, vnode: yaml.Node, key: str, value: str) -> None:
        if not value.startswith("/"):
            raise self.r.err(vnode, key, f"{value!r}: a host path must be absolute")
        self._use(FILES, os.path.realpath(value), vnode, key)

    def host_device(self, node: yaml.Node, key: str, address: str) -> None:
        self._use(DEVICES, address, node, key)

    def device(self, dnode: yaml.Node, key: str, driver: str) -> None:
        why = _REFUSED_DRIVERS.get(driver) or next(
            (w for p, w in _REFUSED_DRIVER_PREFIXES.items() if driver.startswith(p)), None
        )
        if why is not None:
            raise self.r.err(dnode, key, f"device {driver!r} {why}; not allowed in a profile")
        if driver.startswith(_NETWORK_DRIVER_PREFIXES):
            self._use(NETWORKS, driver, dnode, key)

    def obj(self, tnode: yaml.Node, key: str, qom_type: str, keys: Iterable[str]) -> None:
        if qom_type in NETWORK_OBJECTS:
            self._use(NETWORKS, qom_type, tnode, key)
        elif qom_type not in SAFE_OBJECTS:
            known = ", ".join(sorted(SAFE_OBJECTS | NETWORK_OBJECTS))
            raise self.r.err(
                tnode, key, f"object type {qom_type!r} is not one kmatrix passes to QEMU "
                f"(known: {known})",
            )  # fmt: skip
        given = set(keys)
        for (t, prop), default in _DEFAULT_PATHS.items():
            if t == qom_type and prop not in given:
                self._use(FILES, os.path.realpath(default), tnode, f"{key} ({prop} default)")

    def machine(self, pairs: Iterable[tuple[yaml.Node, yaml.Node, str, str]], key: str) -> None:
        pairs = list(pairs)
        for knode, _, k, _ in pairs:
            self.key(knode, f"{key}.{k}", k)
            if k in _MACHINE_REFUSED:
                raise self.r.err(knode, f"{key}.{k}", _MACHINE_REFUSED[k])
            if k not in MACHINE_PROPS:
                raise self.r.err(
                    knode, f"{key}.{k}", f"not a machine property a profile may set (known: "
                    f"{', '.join(sorted(MACHINE_PROPS))})",
                )  # fmt: skip
        self.props(pairs, key, "-machine")

    def global_(self, node: yaml.Node, key: str, text: str) -> tuple[str, str, str]:
        """-global DRIVER.PROP=VALUE, split and checked like a device property."""
        driver, dot, rest = text.partition(".")
        prop, eq, value = rest.partition("=")
        if not (dot and eq and NAME_RE.fullmatch(driver)):
            raise self.r.err(node, key, f"{text!r}: expected DRIVER.PROPERTY=VALUE")
        self.props([(node, node, prop, value)], key, f"-global {driver}")
        return driver, prop, value


# --- the matrix's grant ----------------------------------------------------------------------


def ungranted(access: HostAccess | None, uses: Iterable[HostUse]) -> HostUse | None:
    """The first use the grant does not cover (all of them when there is no grant)."""
    for use in uses:
        if access is None or not access.grants(use):
            return use
    return None


def refusal(use: HostUse) -> str:
    section = f"host_access.{use.kind}"
    return (
        f"reaches {use.describe()}; allowed only when the matrix grants it ({section}) and "
        "the run allows host access (--kmatrix-allow-host-access); see docs/security.md"
    )


ALLOW_OPTION = "--kmatrix-allow-host-access"


def host_uses(cells: Iterable[Cell]) -> list[tuple[Cell, HostUse]]:
    """Every (cell, host use) of these cells, in order."""
    return [(c, u) for c in cells for u in c.device.host_uses]


def check_run_allows(matrix: Matrix, allowed: bool, cells: Iterable[Cell] | None = None) -> None:
    """MatrixError (naming the matrix's host_access section) when cells of this run reach
    the host and the run did not allow it: the grant in the matrix alone is not enough, so
    a branch that edits the matrix cannot give itself host access."""
    found = host_uses(matrix.cells if cells is None else cells)
    if allowed or not found:
        return
    cell, use = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    access = matrix.host_access
    raise MatrixError(
        access.path if access else matrix.path,
        access.line if access else None,
        "host_access",
        f"cell {cell.id} reaches {use.describe()}{more}; the matrix grants it, but this run "
        f"does not allow host access: pass {ALLOW_OPTION} (kmatrix run/shell/bisect: "
        "--allow-host-access) if this matrix is trusted; see docs/security.md",
    )
