"""A booted cell: the guest image, the agent session, the Guest, and a worker's cell lifecycle."""
