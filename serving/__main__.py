"""`python -m serving` runs the `servegate` command."""

from serving.cli.main import main

if __name__ == "__main__":  # spawned worker processes import this module too
    main()
