"""The one error type stages raise for bad input, and how `main()`s report it."""
from __future__ import annotations

import functools
import sys


class PipelineError(Exception):
    """Bad input or environment: printed as one line, exit status 2, no traceback."""


def cli(main):
    """Wrap a stage's `main()` so a PipelineError becomes one line on stderr and exit 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as exc:  # full disk, read-only folder, missing file
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
