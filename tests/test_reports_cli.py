"""`canbench report` / `canbench check` through the entry point."""

from __future__ import annotations

import json

import pytest

from canbench.cli import main
from canbench.io import read_json, write_json
from canbench.reports.synthetic import write_run


def _run(argv):
    """Through the entry point: bad input is ``canbench: error: ...`` and exit 2."""
    return main(argv)


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "runs"
    for s, v in enumerate((40.0, 40.4)):
        write_run(root, f"can{s}", "can", seed=s, benchmark="table5", evals={"linear": {"top1": v}})
        write_run(root, f"an{s}", "can", seed=s, benchmark="table5", method_cfg={"l_nce": 0.0},
                  evals={"linear": {"top1": v - 15}})
    return root


def test_check_exit_codes(store, tmp_path, capsys):
    base = tmp_path / "b.csv"
    assert _run(["check", str(store), "--write-baseline", str(base)]) == 0 and base.is_file()
    assert _run(["check", str(store), "--against", str(base)]) == 0
    assert "compared 4 of 4 reference cells — 4 pass -> PASS (exit 0)" in capsys.readouterr().out
    assert _run(["check", str(store), "--against", "paper", "--benchmark", "table5"]) == 1  # smoke vs paper
    out = capsys.readouterr().out
    assert "compared 0 of 4 reference cells" in out and "INCOMPARABLE" in out
    for s in range(2):  # plant a regression in the AN cell
        p = store / f"an{s}" / "eval" / "linear.json"
        res = read_json(p)
        res["metrics"]["top1"] -= 5
        write_json(p, res)
    assert _run(["check", str(store), "--against", str(base), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit_code"] == 1 and doc["counts"]["regression"] == 1
    bad = [c for c in doc["cells"] if c["verdict"] == "regression"][0]
    assert bad["variant"] == "AN" and bad["expected"] == pytest.approx(25.2)


def test_check_input_errors(store, tmp_path, capsys):
    assert _run(["check", str(tmp_path / "missing"), "--against", "paper"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert _run(["check", str(store)]) == 2
    assert "--against" in capsys.readouterr().err
    assert _run(["check", str(store), "--against", str(tmp_path / "nope.csv"), "--json"]) == 2
    assert "does not exist" in json.loads(capsys.readouterr().out)["error"]


def test_report_text_formats(store, tmp_path, capsys):
    assert _run(["report", str(store), "--format", "md", "--benchmark", "table5"]) == 0
    out = capsys.readouterr().out
    assert "### Table 5" in out and "| AN | 42.8 | 25.20 ± 0.28 (n=2) | n/c [1] |" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("| Removing any of C, A, N"))
    assert "| not run |" in line and "has AN, CAN, needs CA, CN" in line and "table5_ablation" in line
    tex = tmp_path / "t.tex"
    assert _run(["report", str(store), "--format", "tex", "--out", str(tex), "--benchmark", "table5"]) == 0
    assert r"\begin{tabular}" in tex.read_text()
    capsys.readouterr()
    assert _run(["report", str(store), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("table,row,column,method")


def test_report_pdf(store, tmp_path):
    out = tmp_path / "out" / "t5.pdf"
    assert _run(["report", str(store), "--benchmark", "table5", "--out", str(out), "--against", "paper"]) == 0
    assert out.read_bytes()[:5] == b"%PDF-"
    assert _run(["report", str(tmp_path / "missing")]) == 2


def test_report_reads_a_flops_table(store, tmp_path, capsys):
    tab = tmp_path / "flops.csv"
    tab.write_text("method,arch,flops\nsimclr,vit_large,738.2\ncan,vit_large,428.4\n")
    assert _run(["report", str(store), "--format", "md", "--flops-table", str(tab)]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if "70% more FLOPs" in ln][0]
    assert "| holds |" in line and "1.72" in line
    assert _run(["report", str(store), "--format", "md", "--flops-table", str(tmp_path / "no.csv")]) == 2
