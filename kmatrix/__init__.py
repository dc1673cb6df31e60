"""kmatrix: boot kernels in QEMU across a matrix, as a pytest plugin."""

__version__ = "0.1.0"
