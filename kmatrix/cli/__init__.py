"""The kmatrix command: list, run, shell, setup, build, patches, report, compare, merge."""
