"""The pytest plugin: options, collection over the matrix's cells, scheduling, outcomes,
fixtures, results collection and progress."""
