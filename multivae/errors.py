"""User-facing errors: one line, exit code 2, no traceback."""

from __future__ import annotations

import argparse
import reprlib
import sys
from typing import Any, Callable, NoReturn, Sequence

EXIT_USAGE = 2
SHORT_REPR_CHARS = 100   # the most of a value an error message quotes


class UserError(Exception):
    """Bad input (file, key, value, flag). The message is printed as one line and the CLI exits 2."""


class ArgParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as a single line (no usage block) and exits 2, and answers --version."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from multivae.version import __version__

        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__}", help="print the version and exit")

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def one_line(message: object) -> str:
    return " ".join(str(message).split())


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 3, SHORT_REPR_CHARS, SHORT_REPR_CHARS
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 8


def short_repr(value: Any, limit: int = SHORT_REPR_CHARS) -> str:
    """`repr(value)` for an error message: at most about `limit` characters, and cheap to build even for a huge
    or deeply shared structure (a YAML "billion laughs" value): nested levels, items and long strings are
    elided by `reprlib` before the text is built, then the result is cut to `limit` characters."""
    text = one_line(_repr.repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
