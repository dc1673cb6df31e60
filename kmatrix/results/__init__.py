"""Results as data: results.json runs, kernel-log findings, known issues, comparisons, merging
and sharding."""
