"""The one error type stages raise for bad input, and how `main()`s report it."""
from __future__ import annotations

import errno
import functools
import os
import re
import shutil
import sys


class PipelineError(Exception):
    """Bad input or environment: printed as one line, exit status 2, no traceback."""


class _Public:
    """A text stream that writes what may be published (pipeline.core.provenance.public):
    URIs without credentials, paths relative to the repository."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        from pipeline.core.provenance import public

        self._stream.write(public(text))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def cli(main):
    """Wrap a stage's `main()`: what it prints is made publishable (no credentials, no
    local paths), and a PipelineError becomes one line on stderr and exit 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        saved = sys.stdout, sys.stderr
        if not isinstance(sys.stdout, _Public):
            sys.stdout, sys.stderr = _Public(sys.stdout), _Public(sys.stderr)
        try:
            return main(argv)
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as exc:  # full disk, read-only folder, missing file
            print(f"error: {os_error(exc)}", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            sys.stdout, sys.stderr = saved

    return wrapper


def os_error(exc: OSError) -> str:
    """An OSError in one line: what failed, where, and for a full disk how much is
    free and what to do."""
    where = re.sub(r"/\.[^/]+\.tmp(/.*)?$", "/", str(exc.filename or ""))  # a writer's temporary: its folder
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = ""
        try:
            free = f" ({shutil.disk_usage(os.path.dirname(os.path.abspath(where)) or '.').free / 2**20:,.0f} MiB free)"
        except OSError:
            pass
        needed = getattr(exc, "needed", None)
        need = f", writing {needed / 2**20:,.1f} MiB" if needed else ""
        return (f"no space left on the disk holding {where or 'the output'}{free}{need}; free some space, then run "
                f"the same command again (what finished is kept, and training goes on from its last saved epoch)")
    return f"{exc.strerror or exc}" + (f" ({where})" if where else "")
