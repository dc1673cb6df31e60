"""The matrix as data: YAML read node by node (errors name file, line and key), the frozen
specs, device profiles, matrix loading and expansion into cells."""
