"""PDF report: what each page says (text extracted with pypdf), atomic write, empty stores, wrapped text."""

from __future__ import annotations

import pytest
from pypdf import PdfReader

from canbench.reports import figures, pdf
from canbench.reports.synthetic import demo_store


def _texts(path) -> list[str]:
    """The text of every page, in order."""
    return [p.extract_text() for p in PdfReader(str(path)).pages]


def _page(texts: list[str], start: str) -> str:
    hits = [t for t in texts if t.startswith(start)]
    assert len(hits) == 1, f"{len(hits)} pages start with {start!r}: {[t[:40] for t in texts]}"
    return hits[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_store(tmp_path_factory.mktemp("demo"), seeds=(0,))


def test_full_report_pages_say_what_they_show(demo, tmp_path):
    out = pdf.build_report(demo, tmp_path / "r.pdf", title="test report")
    assert [p.name for p in tmp_path.iterdir()] == ["r.pdf"]
    texts = _texts(out)
    title = texts[0]
    assert title.startswith("test report") and f"results root: {demo}" in title and "code version:" in title
    # one section per paper table and benchmark, in the paper's order, with its run count
    heads = [t.splitlines()[0] for t in texts if t.startswith("Benchmark ")]
    assert heads == ["Benchmark table1 (4 runs)", "Benchmark table2 (0 runs)", "Benchmark table3 (0 runs)",
                     "Benchmark table4 (3 runs)", "Benchmark table5 (4 runs)", "Benchmark fig6 (8 runs)",
                     "Benchmark fig7 (12 runs)", "Benchmark smoke (3 runs)"]
    t5 = _page(texts, "Benchmark table5")
    assert "Table 5: ablating CAN's loss terms" in t5 and "42.8" in t5 and "AN" in t5  # the paper's AN value
    assert "n/c" in t5  # smoke-scale cells are not compared with the paper: the table says so
    assert any("Masking rate (Fig. 6 style)" in t and "SimCLR†" in t for t in texts)  # the figure and its legend
    claims = "\n".join(t for t in texts if t.startswith("Claims scorecard"))
    assert "[HOLDS] At 50% masking CAN ends with a lower contrastive loss than SimCLR" in claims
    assert "Removing the contrastive term (AN) hurts the most" in claims
    assert "n:       AN=1, CN=1, CA=1" in claims and "noise:   sd" in claims  # n per arm and the noise
    nc = "\n".join(t for t in texts if t.startswith("Cells not compared with the paper"))
    assert "table1 CAN ViT-B 100 ep / None" in nc and "pretrain.model.arch" in nc  # names the cells and why


def test_single_benchmark_and_empty_store(demo, tmp_path):
    texts = _texts(pdf.build_report(demo, tmp_path / "fig6.pdf", benchmark="fig6"))
    assert len(texts) == 7 and texts[0].splitlines()[3] == "benchmark:    fig6"
    assert [t.splitlines()[0] for t in texts if t.startswith("Benchmark ")] == ["Benchmark fig6 (8 runs)"]
    assert "Masking rate (Fig. 6 style)" in texts[2] and "mask ratio" in texts[2]
    assert texts[-1] == "Cells not compared with the paper\nno paper-table cells were reproduced"
    empty = tmp_path / "empty"
    empty.mkdir()
    texts = _texts(pdf.build_report(empty, tmp_path / "e.pdf"))
    assert "Benchmark table1 (0 runs)" in texts[1]
    assert "not run at this scale" in _page(texts, "Pretraining efficiency")
    claims = "\n".join(t for t in texts if t.startswith("Claims scorecard"))
    assert "[NOT RUN] Removing the contrastive term (AN) hurts the most" in claims
    assert "canbench grid submit table5_ablation" in claims


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
