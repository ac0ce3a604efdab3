"""`report.html`: one self-contained file rendered from a real report folder (report.md, a PNG
written by matplotlib, CSV tables beside it)."""

from __future__ import annotations

import base64
import logging
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from med42ray.report.html import write_html


class Page(HTMLParser):
    """The parts of a page the tests look at: title, table cells, img srcs, link hrefs."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.title = ""
        self.rows: list[list[str]] = []
        self.cell_styles: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.tables = 0
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "title":
            self._in = "title"
        elif tag == "table":
            self.tables += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("th", "td"):
            self._in = "cell"
            self.rows[-1].append("")
            self.cell_styles.append(attributes.get("style") or "")
        elif tag == "img":
            self.images.append(attributes.get("src") or "")
        elif tag == "a":
            self.links.append(attributes.get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("title", "th", "td"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif self._in == "cell":
            self.rows[-1][-1] += data


def png(path: Path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [3, 1, 2])
    fig.savefig(path, dpi=40)
    plt.close(fig)
    return path.read_bytes()


TABLE = pd.DataFrame(
    {
        "model": ["full", "lora"],
        "acc": [0.512, 0.48],
        "n": [100, 2000],
        "delta": ["+1.5 [-0.2, +3.1]*", "–"],
        "acc (%)": ["51.2 ± 5.0 (n=100)", "48.0 ± 1.1 (n=2000)"],
        "version": ["2.60.0", "0.1.0"],
    }
)


@pytest.fixture
def report(tmp_path: Path) -> tuple[Path, bytes]:
    """A report folder as `build_report` lays it out; returns (folder, the figure's bytes)."""
    folder = tmp_path / "report"
    folder.mkdir()
    figure = png(folder / "accuracy.png")
    TABLE.to_csv(folder / "numbers.csv", index=False)
    (folder / "report.md").write_text(
        "# Med42 <tiny> report\n\n"
        "## Accuracy\n\n"
        f"{TABLE.to_markdown(index=False)}\n\n"
        "![accuracy](accuracy.png)\n\n"
        "Every number is in [the numbers table](numbers.csv) and in `numbers.csv`; "
        "`absent.csv` is not.\n",
        encoding="utf-8",
    )
    return folder, figure


def test_table_title_and_links(report: tuple[Path, bytes]) -> None:
    folder, _ = report
    out = write_html(folder)
    assert out == folder / "report.html"
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert text.startswith("<!DOCTYPE html>")
    assert page.title == "Med42 <tiny> report"  # escaped in the page, shown as written
    assert "<style>" in text and "border" in text and "nth-child(even)" in text
    assert page.tables == 1
    assert page.rows == [
        ["model", "acc", "n", "delta", "acc (%)", "version"],
        ["full", "0.512", "100", "+1.5 [-0.2, +3.1]*", "51.2 ± 5.0 (n=100)", "2.60.0"],
        ["lora", "0.48", "2000", "–", "48.0 ± 1.1 (n=2000)", "0.1.0"],
    ]
    styles = [page.cell_styles[i::6] for i in range(6)]  # per column, header first
    # text and versions stay left; numbers (a dash for a missing one, ± errors, intervals) right
    assert [s == ["text-align:right"] * 3 for s in styles] == [False, True, True, True, True, False]
    assert all(s == "text-align:left" for s in styles[0] + styles[5])
    # the Markdown link and the code span naming a file beside it: relative links to the CSV
    assert page.links == ["numbers.csv", "numbers.csv"]
    assert "<code>absent.csv</code>" in text and 'href="absent.csv"' not in text


def test_image_embedded(report: tuple[Path, bytes]) -> None:
    folder, figure = report
    page = Page(write_html(folder).read_text(encoding="utf-8"))
    assert len(page.images) == 1
    prefix = "data:image/png;base64,"
    assert page.images[0].startswith(prefix)
    assert base64.b64decode(page.images[0].removeprefix(prefix), validate=True) == figure
    text = (folder / "report.html").read_text(encoding="utf-8")
    assert 'src="accuracy.png"' not in text
    assert not re.search(r'src="(?!data:)', text)  # no image left pointing at a file
    assert "http://" not in text and "https://" not in text  # nothing fetched


def test_missing_image_kept(report: tuple[Path, bytes], caplog: pytest.LogCaptureFixture) -> None:
    folder, figure = report
    markdown = folder / "report.md"
    markdown.write_text(
        markdown.read_text()
        + "\n![loss](<loss curves.png>)\n![up](../accuracy.png)\n![spaced](<a figure.png>)\n"
    )
    (folder.parent / "accuracy.png").write_bytes(b"outside the report folder")
    (folder / "a figure.png").write_bytes(figure)
    with caplog.at_level(logging.WARNING, logger="med42ray.report.html"):
        page = Page(write_html(folder).read_text(encoding="utf-8"))
    assert page.images[0].startswith("data:image/png;base64,")
    assert page.images[1:3] == ["loss%20curves.png", "../accuracy.png"]  # left as they were
    assert base64.b64decode(page.images[3].split(",", 1)[1]) == figure  # a name with a space
    warned = caplog.text
    assert "loss%20curves.png" in warned and "../accuracy.png" in warned


def test_written_atomically(report: tuple[Path, bytes]) -> None:
    folder, _ = report
    (folder / "report.html").write_text("an older report")
    before = {p.name for p in folder.iterdir()}
    out = write_html(folder, html_name="report.html")
    assert {p.name for p in folder.iterdir()} == before  # replaced, no temporary file left
    assert "an older report" not in out.read_text(encoding="utf-8")
    assert out.stat().st_mode & 0o444 == 0o444  # readable by whoever is sent the folder

    other = write_html(folder, markdown_name="report.md", html_name="copy.html")
    assert other.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")
    assert {p.name for p in folder.iterdir()} == before | {"copy.html"}


def test_failed_write_leaves_nothing(
    report: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = report
    (folder / "report.html").write_text("an older report")
    before = {p.name for p in folder.iterdir()}

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("med42ray.report.html.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_html(folder)
    assert {p.name for p in folder.iterdir()} == before
    assert (folder / "report.html").read_text() == "an older report"


def test_title_without_heading(tmp_path: Path) -> None:
    (tmp_path / "report.md").write_text("Some text, no heading.\n\n## Not level one\n")
    page = Page(write_html(tmp_path).read_text(encoding="utf-8"))
    assert page.title == tmp_path.name
