"""One QEMU virtual machine: the profile lowered to QEMU devices, the pure argv builder, the
process, QMP, console, snapshots, accelerator choice, host-device checks."""
