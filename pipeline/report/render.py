"""The report model (pipeline.report.build) as GitHub-renderable Markdown and one
self-contained HTML page (CSS inline, images as data: URIs, no JavaScript, no
request leaving the page), from the Jinja2 templates beside this file."""
from __future__ import annotations

import base64
import re
from functools import cache

from markupsafe import Markup

from pipeline.report.build import Report

# Backslash-escaped for GitHub: emphasis, code, links, table pipes, and '<' where it could open a tag.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|]|<(?=[A-Za-z/!?]))")


def md_escape(text) -> str:
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def gh_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def fence(text: str) -> str:
    return "````" if "```" in text else "```"


@cache
def _env(html: bool):
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("pipeline.report", "templates"), autoescape=html,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(md=md_escape, anchor=gh_anchor, fence=fence)
    return env


def render_markdown(report: Report) -> str:
    return _env(False).get_template("report.md.j2").render(report=report)


def render_html(report: Report, images: dict[str, bytes]) -> str:
    env = _env(True)
    css = env.loader.get_source(env, "report.css")[0]
    data = {name: Markup(f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}")
            for name, png in images.items()}
    return env.get_template("report.html.j2").render(report=report, images=data, css=Markup(css))


__all__ = ["render_markdown", "render_html", "md_escape"]
