"""User-facing errors: one line, exit code 2, no traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, Sequence

EXIT_USAGE = 2


class UserError(Exception):
    """Bad input (file, key, value, flag). The message is printed as one line and the CLI exits 2."""


class ArgParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as a single line (no usage block) and exits 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def one_line(message: object) -> str:
    return " ".join(str(message).split())


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None, prog: str = "") -> int:
    """Run a CLI entry point; a UserError becomes `prog: error: ...` on stderr and exit code 2."""
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        sys.stderr.write(f"{prog or 'error'}: error: {one_line(exc)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog or 'error'}: interrupted\n")
        return 130
