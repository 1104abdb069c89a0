"""Model runtimes and the replica model server."""
