"""User mistakes end the ``equinet`` command with one line saying what to do, not a traceback.

A wrong value, a missing or malformed dataset root, an unknown option or strategy, an image size
the network cannot take: each raises a ``ValueError`` (or an ``OSError`` for files) whose message
names the problem and the fix. The command prints that message on one line and exits 1;
``EQUINET_DEBUG=1`` lets the exception through with its traceback. Errors of other types (bugs,
CUDA failures) always keep their traceback.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

DEBUG_ENV = "EQUINET_DEBUG"
USER_ERRORS = (ValueError, OSError)


def debug_enabled() -> bool:
    """``EQUINET_DEBUG`` set to anything but empty/``0``/``false``/``no``: show tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(message: str) -> str:
    """The message on a single line: its lines joined with ``"; "`` (with a space after a line
    that ends in ``:``), blank lines dropped."""
    text = ""
    for line in (line.strip() for line in str(message).splitlines()):
        if line:
            text += ("" if not text else " " if text.endswith(":") else "; ") + line
    return text


def root_cause(err: BaseException) -> BaseException:
    """The innermost user error an exception was raised *from*.

    jsonargparse re-raises an exception of a class's ``__init__`` as "Does not validate against
    any of the Union subtypes ..." ``from`` the original; the original is what the user needs.
    """
    while isinstance(err.__cause__, USER_ERRORS):
        err = err.__cause__
    return err


@contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Turn user errors raised inside into ``<prog>: error: <message>`` and exit status 1."""
    try:
        yield
    except USER_ERRORS as err:
        if debug_enabled():
            raise
        cause = root_cause(err)
        text = one_line(str(cause) or type(cause).__name__)
        sys.stderr.write(f"{prog}: error: {text} ({DEBUG_ENV}=1 shows the traceback)\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
