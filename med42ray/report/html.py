"""`report.html` beside `report.md`: one self-contained file, a report people can open and mail.

`report.md` reads well on GitHub but not in a mail client or a browser, and its figures are
separate PNG files. `write_html(REPORT_DIR)` renders it (markdown-it, CommonMark plus GFM
tables) into a single HTML file: figures embedded as base64 data URIs, a small inline style
sheet (bordered, striped tables with right-aligned numbers), no scripts, nothing fetched from the
network. Links to the CSV tables beside it stay relative (they work where the folder is opened),
and a code span naming a file of the folder (`numbers.csv`) becomes such a link.
"""

from __future__ import annotations

import base64
import html
import itertools
import logging
import mimetypes
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

log = logging.getLogger(__name__)

STYLE = """
body { max-width: 72rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; color: #1f2328;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1, h2, h3 { line-height: 1.25; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .3em; margin-top: 2em; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em;
  background: #f6f8fa; padding: .1em .3em; border-radius: 4px; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; }
pre code { padding: 0; }
table { border-collapse: collapse; margin: 1em 0; font-size: .9em; display: block;
  overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; }
th { background: #eaeef2; }
tbody tr:nth-child(even) { background: #f6f8fa; }
td { font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; }
""".strip()

_NUM = r"[-+−]?\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?"
#: a table cell of numbers, as the report writes them: 12, 1,024, 3e-05, 51 %, 20.0 ± 13.3,
#: 20.0 ± 13.3 (n=10), 33.3 (5) / 26.7 (4), +1.2 [-0.4, +2.9]*, 0.8 CPU-h (not 2.60.0)
NUMBER = re.compile(
    rf"^{_NUM}(?:[\s±()\[\]/,*=n]+{_NUM})*[\s±()\[\]/,*=n]*(?:%|[A-Za-z][A-Za-z/-]*)?$",
    re.IGNORECASE,
)
PLACEHOLDERS = {"", "-", "–", "—", "nan", "NaN", "n/a"}


def markdown_parser() -> MarkdownIt:
    """CommonMark with GFM pipe tables and strikethrough; raw HTML is escaped (a model or
    protocol named `<x>` shows as text instead of vanishing as an unknown tag)."""
    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def local_file(report_dir: Path, url: str) -> Path | None:
    """The file of `report_dir` a relative URL names, or None (absolute URL, outside it, or
    absent)."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
        return None
    root = report_dir.resolve()
    path = (root / unquote(parts.path)).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def data_uri(path: Path) -> str:
    """`data:<type>;base64,...` of a file (type from its suffix)."""
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def embed_images(tokens: list[Token], report_dir: Path) -> None:
    """Each image whose file is in `report_dir` gets its bytes as a data URI; a missing one
    keeps its src (logged)."""
    for token in tokens:
        for child in token.children or []:
            if child.type != "image":
                continue
            src = str(child.attrGet("src") or "")
            if src.startswith("data:") or urlsplit(src).scheme:
                continue
            path = local_file(report_dir, src)
            if path is None:
                log.warning("report image %s not found in %s; left as a link", src, report_dir)
                continue
            child.attrSet("src", data_uri(path))


def link_file_names(tokens: list[Token], report_dir: Path) -> None:
    """A code span that is just the name of a file of `report_dir` (`numbers.csv`) becomes a
    relative link to it."""
    for token in tokens:
        if not token.children:
            continue
        children: list[Token] = []
        for child in token.children:
            name = child.content
            if child.type == "code_inline" and "/" not in name and (report_dir / name).is_file():
                link = Token("link_open", "a", 1)
                link.attrSet("href", name)
                children += [link, child, Token("link_close", "a", -1)]
            else:
                children.append(child)
        token.children = children


def numeric_columns(tokens: list[Token]) -> None:
    """Right-align each table column whose body cells are all numbers (or a blank or dash
    placeholder): tabulate aligns numeric columns itself, but a column of numbers with a `–`
    for a missing one is text to it."""
    columns: dict[int, list[tuple[Token, str]]] = {}
    column = 0
    for i, opening in enumerate(tokens):
        if opening.type == "table_open":
            columns = {}
        elif opening.type == "tr_open":
            column = 0
        elif opening.type in ("th_open", "td_open"):
            text = tokens[i + 1].content.strip()  # a cell's inline token
            columns.setdefault(column, []).append((opening, text))
            column += 1
        elif opening.type == "table_close":
            for cells in columns.values():
                body = [text for cell, text in cells if cell.type == "td_open"]
                values = [text for text in body if text not in PLACEHOLDERS]
                if values and all(NUMBER.match(text) for text in values):
                    for cell, _ in cells:
                        cell.attrSet("style", "text-align:right")


def title_of(tokens: list[Token]) -> str | None:
    """Text of the first level-1 heading."""
    for opening, content in itertools.pairwise(tokens):
        if opening.type == "heading_open" and opening.tag == "h1":
            return content.content.strip() or None
    return None


def render_html(markdown: str, report_dir: Path, fallback_title: str = "Report") -> str:
    """A complete HTML page of `markdown`, images of `report_dir` embedded."""
    md = markdown_parser()
    env: dict = {}
    tokens = md.parse(markdown, env)
    embed_images(tokens, report_dir)
    link_file_names(tokens, report_dir)
    numeric_columns(tokens)
    body = md.renderer.render(tokens, md.options, env)
    title = html.escape(title_of(tokens) or fallback_title)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>\n{STYLE}\n</style>\n</head>\n<body>\n"
        f"{body}</body>\n</html>\n"
    )


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file of its folder and `os.replace`, so a
    reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_html(
    report_dir: Path, markdown_name: str = "report.md", html_name: str = "report.html"
) -> Path:
    """Render `report_dir/markdown_name` into the self-contained `report_dir/html_name`."""
    report_dir = Path(report_dir)
    markdown = (report_dir / markdown_name).read_text(encoding="utf-8")
    out = report_dir / html_name
    write_atomic(out, render_html(markdown, report_dir, fallback_title=report_dir.name))
    return out
