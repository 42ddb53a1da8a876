"""Reading ``report.html`` back in tests: the stdlib's ``html.parser``, as a plain reader of the page."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

from PIL import Image


class Page(HTMLParser):
    """What a reader of report.html sees: text, images, table rows, links."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self.terms: dict[str, str] = {}  # <dt> -> <dd>
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in: str | None = None
        self._term = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "a":
            self.links.append(a.get("href", ""))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("dt", "dd"):
            self._in = tag

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._in == "dt":
            self._term = data
        elif self._in == "dd":
            self.terms[self._term] = data
        self._in = None
        if self._cell is not None:
            self._cell.append(data)


def read_page(path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def embedded_pngs(page: Page) -> list[Image.Image]:
    out = []
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:40]  # self-contained: nothing to fetch
        out.append(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
    return out
