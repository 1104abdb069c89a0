"""`python -m serving` runs the `servegate` command."""

from serving.cli.main import main

main()
