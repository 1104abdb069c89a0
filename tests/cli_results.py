"""What the CLI tests check of a click `Result`: it succeeded (its stdout), or failed as expected."""

from __future__ import annotations

from click.testing import Result

__all__ = ["fails", "ok"]


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def fails(result: Result, code: int, says: str) -> None:
    assert result.exit_code == code, result.output
    assert says in result.stderr, result.stderr
