"""Exit codes of the ``purger`` command line and the one way to fail with a message."""

from __future__ import annotations

import sys
from typing import NoReturn

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOTHING_TO_DO = 3
EXIT_CONTENDED = 4
EXIT_TIMED_OUT = 5


def fail(message: str, code: int) -> NoReturn:
    """Print a one-line error (no traceback) and exit."""
    print(f"purger: error: {message}", file=sys.stderr)
    raise SystemExit(code)
