"""PDF report: pages for every section, atomic write, empty stores, wrapped text."""

from __future__ import annotations

import re

import pytest

from canbench.reports import figures, pdf
from canbench.reports.synthetic import demo_store


def _pages(path) -> int:
    return len(re.findall(rb"/Type\s*/Page\b", path.read_bytes()))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_store(tmp_path_factory.mktemp("demo"), seeds=(0,))


def test_full_report(demo, tmp_path):
    out = pdf.build_report(demo, tmp_path / "r.pdf", title="test report")
    assert out.read_bytes()[:5] == b"%PDF-"
    # title, 7 benchmark sections + smoke, figures, efficiency, compute, claims, incomparable cells
    assert _pages(out) >= 20
    assert [p.name for p in tmp_path.iterdir()] == ["r.pdf"]


def test_single_benchmark_and_empty_store(demo, tmp_path):
    out = pdf.build_report(demo, tmp_path / "fig6.pdf", benchmark="fig6")
    assert _pages(out) == 6  # title, fig6 listing, fig6 figure, efficiency, claims, incomparable
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _pages(pdf.build_report(empty, tmp_path / "e.pdf")) >= 8


def test_failed_build_leaves_no_file(demo, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(figures, "fig_efficiency", boom)
    with pytest.raises(RuntimeError, match="figure failed"):
        pdf.build_report(demo, tmp_path / "x.pdf", benchmark="table5")
    assert list(tmp_path.iterdir()) == []


def test_text_pages_wrap_long_lines(tmp_path, monkeypatch):
    drawn = []

    def record(fig, lines, x, top, size):
        drawn.extend(lines)

    monkeypatch.setattr(pdf, "_lines", record)
    from matplotlib.backends.backend_pdf import PdfPages

    with PdfPages(tmp_path / "t.pdf") as p:
        n = pdf.text_pages(p, "t", ["x" * 250] + ["line"] * (pdf.LINES + 5))
    assert n == 2 and max(len(ln) for ln in drawn) <= pdf.WIDTH
    assert "".join(drawn).count("x") == 250  # nothing cut
