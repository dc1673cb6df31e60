"""Project-wide pytest configuration.

The kmatrix plugin itself is registered through the `pytest11` entry point, so `pytest`
anywhere in this tree runs the guest suites in testcases/ across matrix/default.yaml.
The project's own tests (tests/) run with the plugin off: `pytest -p no:kmatrix tests`.
"""

collect_ignore = ["reports", "benchmarks", "images"]
