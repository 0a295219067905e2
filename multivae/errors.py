"""User-facing errors: one line, exit code 2, no traceback."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import re
import reprlib
import sys
from typing import Any, Callable, Iterator, NoReturn, Sequence

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
        if _API_CALL.get() is not None:   # run from Python (`api_call`): an exception for the caller, not an exit
            raise UserError(message)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


_API_CALL: contextvars.ContextVar[str | None] = contextvars.ContextVar("multivae_api_call", default=None)
_FLAG = re.compile(r"(?<![\w/.-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")


def flags_as_keywords(message: str) -> str:
    """A CLI's message for a Python caller: `--max-failures` becomes the keyword `max_failures`."""
    return _FLAG.sub(lambda m: m.group(1).replace("-", "_"), message)


@contextlib.contextmanager
def api_call(name: str) -> Iterator[None]:
    """Run a CLI's `main` for a Python function `name` (`tuning.search`, `multivae.fit`): bad input, from
    argparse too, is a `UserError` prefixed `name: ` whose message names keywords instead of flags, and
    never a SystemExit into the caller's program or notebook."""
    token = _API_CALL.set(name)
    try:
        yield
    except UserError as exc:
        raise UserError(f"{name}: {flags_as_keywords(one_line(exc))}") from None
    except SystemExit as exc:   # --help or --version passed as a keyword
        raise UserError(f"{name}: stopped with exit status {exc.code} (a keyword such as help or version that only the "
                        "command line has?)") from None
    finally:
        _API_CALL.reset(token)


def check_keyword_text(name: str, key: str, value: Any) -> None:
    """A keyword's value that becomes a command-line word: refused with a `UserError` when it holds a NUL
    byte, which no path or name may hold (the OS would raise ValueError deep inside)."""
    if "\0" in str(value):
        raise UserError(f"{name}: {key} must not contain a NUL byte, got {short_repr(value)}")


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
