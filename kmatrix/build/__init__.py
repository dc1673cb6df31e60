"""Kernels built from source: sources, patch series, and the cached builder."""
