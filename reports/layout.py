"""The PDF's page flow: headings, wrapped paragraphs and drawn tables placed top-down on A4 pages.

:class:`Flow` keeps a cursor on the current page and starts a new one when the next block does not fit: a
heading never ends a page alone, a table that fits one page moves whole to the next page (with the heading it
is kept with), a longer one repeats its header after each break and never leaves a lone row behind. Tables are
drawn (rules, zebra rows, wrapped cells, a colour per column where asked), not monospaced text. Figures go on
pages of their own.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

A4 = (8.27, 11.69)
MARGIN = 0.55  # inches
PAD = 1.4  # characters between table columns


def _char_w(size: float) -> float:
    """Average width (inches) of a character of the default sans-serif font at ``size`` points."""
    return 0.58 * size / 72


def _fit(width_in: float, size: float) -> int:
    return max(4, int(width_in / _char_w(size)))


class Flow:
    """Places headings, paragraphs and tables top-down on A4 pages; breaks pages where needed."""

    def __init__(self, pdf: PdfPages) -> None:
        self.pdf, self.fig, self.y, self.pages = pdf, None, 0.0, 0
        self.width = A4[0] - 2 * MARGIN

    # -- pages
    def _open(self) -> None:
        if self.fig is None:
            self.fig = plt.figure(figsize=A4)
            self.y = MARGIN
            self.pages += 1

    def page_break(self) -> None:
        if self.fig is not None:
            self.fig.text(0.5, 0.3 / A4[1], f"{self.pages}", ha="center", fontsize=7, color="0.5")
            self.pdf.savefig(self.fig)
            plt.close(self.fig)
            self.fig = None

    def room(self) -> float:
        return A4[1] - MARGIN - self.y if self.fig is not None else A4[1] - 2 * MARGIN

    def need(self, h: float) -> None:
        """Start a new page unless ``h`` inches fit on this one."""
        if self.fig is not None and h > self.room():
            self.page_break()
        self._open()

    def figure(self, fig: plt.Figure) -> None:
        """A figure on a page of its own (the flow continues on a new page)."""
        self.page_break()
        self.pdf.savefig(fig)
        plt.close(fig)
        self.pages += 1

    def close(self) -> None:
        self.page_break()

    # -- text
    def _text(self, x: float, text: str, size: float, **kw: Any) -> None:
        self.fig.text(x / A4[0], 1 - self.y / A4[1], text, fontsize=size, va="top", **kw)

    def title(self, text: str, size: float = 17) -> None:
        """The document title at the top of a fresh page."""
        self.page_break()
        self._open()
        self._text(MARGIN, text, size, weight="bold")
        self.y += size * 1.5 / 72 + 0.1

    def heading(self, text: str, size: float = 13, space: float = 0.18, keep: float = 0.6) -> None:
        """A bold heading, kept with the ``keep`` inches that follow it (never alone at the foot of a page)."""
        self.need(size * 1.6 / 72 + space + keep)
        if self.y > MARGIN:
            self.y += space
        self._text(MARGIN, text, size, weight="bold")
        self.y += size * 1.6 / 72

    def para(self, text: str, size: float = 8.0, indent: float = 0.0, color: str = "black",
             weight: str = "normal", prefix: tuple[str, str] | None = None) -> None:
        """A wrapped paragraph; ``prefix`` (text, color): a coloured lead-in (e.g. a verdict) on its first line."""
        lead = f"{prefix[0]} " if prefix else ""
        lines = textwrap.wrap(lead + text, _fit(self.width - indent, size), break_long_words=True) or [""]
        pitch = size * 1.35 / 72
        for i, ln in enumerate(lines):
            self.need(pitch)
            if i == 0 and prefix:  # the bold lead-in is wider than the estimate: the rest starts a little later
                self._text(MARGIN + indent, prefix[0], size, color=prefix[1], weight="bold")
                self._text(MARGIN + indent + (len(lead) + 1) * _char_w(size) * 1.25, ln[len(lead):], size,
                           color=color, weight=weight)
            else:
                self._text(MARGIN + indent, ln, size, color=color, weight=weight)
            self.y += pitch

    def gap(self, h: float = 0.08) -> None:
        self.y += h

    # -- tables
    def table(self, header: list[str], rows: list[list[str]], size: float = 7.0, title: str | None = None,
              colors: dict[int, Any] | None = None, max_share: float = 0.45, group_first: bool = False,
              heading: str | None = None, keep_whole: bool = True) -> None:
        """A drawn grid: bold header, thin rules, zebra rows; cells wrap; the header repeats after a page break.

        ``colors``: column index -> function(cell text) -> colour. ``group_first``: the first column is
        printed only where it changes (the paper's row groups). ``heading``: a section heading kept on the
        page where the table starts. ``keep_whole``: a table that fits one page starts on a fresh page rather
        than split (else it starts here when its header and first rows fit). Columns empty in every row are left
        out.
        """
        if not rows:
            return
        keep = [i for i in range(len(header)) if any(str(r[i]).strip() for r in rows)]
        if len(keep) < len(header):
            colors = {keep.index(i): f for i, f in (colors or {}).items() if i in keep}
            header, rows = [header[i] for i in keep], [[r[i] for i in keep] for r in rows]
        ncol = len(header)
        avail = _fit(self.width, size) - int(PAD * ncol)
        # bold header text is about a fifth wider than the estimate for regular text
        natural = [max([math.ceil(1.2 * len(header[i]))] + [len(r[i]) for r in rows]) for i in range(ncol)]
        widths = list(natural)
        cap = max(8, int(avail * max_share))
        widths = [min(w, cap) for w in widths]
        while sum(widths) > avail and max(widths) > 6:
            widths[widths.index(max(widths))] -= 1
        scale = min(1.25, avail / max(1, sum(widths)))  # spread a narrow table a little, never past the margins
        col_in = [(w + PAD) * _char_w(size) * scale for w in widths]
        xs = [MARGIN]
        for w in col_in[:-1]:
            xs.append(xs[-1] + w)
        total_w = sum(col_in)
        pitch = size * 1.3 / 72

        def wrap(cells: list[str]) -> list[list[str]]:
            return [textwrap.wrap(str(c), max(1, widths[i]), break_long_words=True) or [""]
                    for i, c in enumerate(cells)]

        head = wrap(header)
        head_h = max(len(h) for h in head) * pitch + 0.06
        shown = []
        last = None
        for r in rows:
            cells = list(r)
            if group_first:
                cells[0], last = ("" if r[0] == last else r[0]), r[0]
            shown.append(wrap(cells))
        heights = [max(len(c) for c in cells) * pitch + 0.035 for cells in shown]
        title_h = (8.5 * 1.5 / 72 + 0.08) if title else 0.0
        heading_h = 13 * 1.6 / 72 + 0.18 if heading else 0.0

        def draw_header(cont: bool) -> None:
            if title:
                self.y += 0.04
                self._text(MARGIN, title + (" (continued)" if cont else ""), 8.5, weight="bold")
                self.y += title_h - 0.04
            self.fig.add_artist(plt.Line2D([MARGIN / A4[0], (MARGIN + total_w) / A4[0]],
                                           [1 - self.y / A4[1]] * 2, color="black", lw=0.8))
            self.y += 0.03
            for i, lines in enumerate(head):
                for k, ln in enumerate(lines):
                    self.fig.text((xs[i] + PAD / 2 * _char_w(size)) / A4[0], 1 - (self.y + k * pitch) / A4[1], ln,
                                  fontsize=size, weight="bold", va="top")
            self.y += head_h - 0.03
            self.fig.add_artist(plt.Line2D([MARGIN / A4[0], (MARGIN + total_w) / A4[0]],
                                           [1 - self.y / A4[1]] * 2, color="black", lw=0.5))
            self.y += 0.02

        # keep the title, the header and a few rows together; move a table that fits one page to a fresh one
        whole = heading_h + title_h + head_h + sum(heights) + 0.1
        first = heading_h + title_h + head_h + sum(heights[:3]) + 0.1
        self.need(whole if keep_whole and whole <= A4[1] - 2 * MARGIN else first)
        if heading:
            self.heading(heading, keep=0.0)
        draw_header(False)
        i = 0
        while i < len(shown):
            left = sum(heights[i:])
            if heights[i] > self.room() - 0.05 or (left > self.room() - 0.05 and sum(heights[i:i + 3]) >= left
                                                    and i and left > heights[i]):
                self._rule(total_w)
                self.page_break()
                self._open()
                draw_header(True)
            cells = shown[i]
            if i % 2:
                self.fig.add_artist(plt.Rectangle((MARGIN / A4[0], 1 - (self.y + heights[i]) / A4[1]),
                                                  total_w / A4[0], heights[i] / A4[1], color="0.94", lw=0,
                                                  zorder=0))
            for j, lines in enumerate(cells):
                color = (colors or {}).get(j, lambda _: "black")(rows[i][j])
                for k, ln in enumerate(lines):
                    self.fig.text((xs[j] + PAD / 2 * _char_w(size)) / A4[0],
                                  1 - (self.y + 0.015 + k * pitch) / A4[1], ln, fontsize=size, va="top", color=color)
            self.y += heights[i]
            i += 1
        self._rule(total_w)
        self.y += 0.12

    def _rule(self, total_w: float) -> None:
        self.fig.add_artist(plt.Line2D([MARGIN / A4[0], (MARGIN + total_w) / A4[0]], [1 - self.y / A4[1]] * 2,
                                       color="black", lw=0.8))


__all__ = ["A4", "MARGIN", "Flow"]
