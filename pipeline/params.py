"""Set keys of params.yaml and keep everything else: its other values, comments and layout.

    python -m pipeline.params set lr=0.001 'aug=[none,standard]'
    python -m pipeline.params set --layout-from HEAD lr=0.001   # and the committed comments and layout back

`dvc exp run -S key=value` rewrites params.yaml before any stage runs (its layout
and comments go) and leaves a refused value in it. This puts back only the keys
named, as DVC's -S writes them (a YAML value), leaving a user's other edits alone;
`--layout-from` takes the comments and layout of the file at a git revision and
the current values.
"""
from __future__ import annotations

import argparse
import io
import subprocess
from pathlib import Path

from pipeline.core.errors import PipelineError, cli
from pipeline.core.io import write_text
from pipeline.core.schema import dotted


def _yaml():
    from ruamel.yaml import YAML

    y = YAML()  # round trip: comments and layout kept
    y.preserve_quotes = True
    y.width = 4096
    # null as `null`, as params.yaml writes it (ruamel's round trip would leave the value empty)
    y.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def _put(doc, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(doc.get(k), dict):
            doc[k] = {}
        doc = doc[k]
    doc[keys[-1]] = value


def set_values(path: Path, assignments: list[str], layout_from: str | None = None) -> list[str]:
    """Apply `key=value` assignments to the params file at `path`; returns the keys set."""
    from ruamel.yaml import YAML

    y = _yaml()
    current = y.load(path.read_text(encoding="utf-8")) or {}
    doc = current
    if layout_from:
        shown = subprocess.run(["git", "show", f"{layout_from}:./{path.name}"], cwd=path.parent, capture_output=True,
                               text=True)
        if shown.returncode != 0:
            raise PipelineError(f"--layout-from {layout_from}: git has no {path.name} there ({shown.stderr.strip()})")
        doc = y.load(shown.stdout) or {}
        for key, value in dotted(current).items():
            _put(doc, key, value)
    done = []
    for a in assignments:
        key, sep, raw = a.partition("=")
        if not sep or not key:
            raise PipelineError(f"{a!r}: expected KEY=VALUE, e.g. lr=0.001 or knobs.dropout=0.25")
        _put(doc, key, YAML(typ="safe", pure=True).load(raw) if raw else None)
        done.append(key)
    buf = io.StringIO()
    y.dump(doc, buf)
    write_text(path, buf.getvalue())
    return done


@cli
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.params", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("set", help="set keys, keeping every other value, comment and the layout")
    p.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--layout-from", metavar="REV", help="comments and layout from params.yaml at this git revision")
    args = ap.parse_args(argv)
    keys = set_values(args.params, args.assignments, args.layout_from)
    print(f"{args.params}: set {', '.join(keys) or 'nothing'}"
          + (f"; comments and layout as at {args.layout_from}" if args.layout_from else ""))


if __name__ == "__main__":
    main()
