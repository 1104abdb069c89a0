"""The `servegate` command."""
