"""Paper numbers as data: transcription samples, schema, unambiguous cell keys."""

from __future__ import annotations

import pytest

from canbench.reports.paper import (
    PAPER_CSV,
    PAPER_KEYS,
    PaperNumbersError,
    load_paper_numbers,
    paper_numbers,
    paper_value,
)


@pytest.mark.parametrize("table,method,metric,keys,value", [
    ("table1", "can", "top1", {"variant": "none"}, 67.9),
    ("table1", "can", "top1", {"variant": "augment_only"}, 68.6),
    ("table1", "can", "top1", {"variant": "loss_without_sigma_embedding"}, 68.4),
    ("table1", "can", "top1", {"variant": "full"}, 68.9),
    ("table2", "can", "top1", {"arch": "vit_large", "epochs": 5000}, 75.4),
    ("table2", "can", "top1", {"arch": "vit_large", "epochs": 3000}, 75.3),
    ("table2", "simclr", "top1", {"arch": "vit_large", "epochs": 5000}, 73.4),
    ("table2", "simclr", "top1", {"arch": "vit_base", "epochs": 800}, 65.8),
    ("table2", "mae", "top1", {"arch": "vit_large", "epochs": 1600}, 50.5),
    ("table2", "prior:DnC", "top1", {"arch": "resnet200x2", "epochs": 3000}, 77.3),
    ("table3", "can", "top1", {"arch": "vit_base", "epochs": 1600, "protocol": "finetune"}, 83.6),
    ("table3", "can", "top1", {"arch": "vit_base", "epochs": 1600, "protocol": "linear"}, 74.8),
    ("table3", "mae", "top1", {"arch": "vit_large", "epochs": 800, "protocol": "linear"}, 71.4),
    ("table3", "prior:MAE", "top1", {"arch": "vit_large", "epochs": 800, "protocol": "finetune"}, 84.9),
    ("table3", "prior:BEiT", "top1", {"arch": "vit_base", "protocol": "linear"}, 37.6),
    ("table3", "simclr", "top1", {"arch": "vit_large", "protocol": "linear"}, 73.9),
    ("table4", "simclr", "contrastive_loss", {}, 9.157),
    ("table4", "mae", "reconstruction_loss", {}, 0.1658),
    ("table4", "can", "contrastive_loss", {}, 9.143),
    ("table4", "can", "reconstruction_loss", {}, 0.1633),
    ("table5", "can", "top1", {"variant": "AN"}, 42.8),
    ("table5", "can", "top1", {"variant": "CN"}, 68.5),
    ("table5", "can", "top1", {"variant": "CA"}, 67.9),
    ("table5", "can", "top1", {"variant": "CAN"}, 68.9),
    ("fig1", "can", "top1", {"protocol": "finetune"}, 86.1),
    ("fig1", "simclr", "top1", {"protocol": "finetune"}, 85.5),
    ("fig1", "mae", "top1", {"protocol": "finetune"}, 85.4),
    ("fig1", "simclr", "flops_ratio_vs_can", {}, 1.7),
    ("text", "simclr", "top1", {"variant": "sec4.1"}, 71.8),
    ("text", "mae", "top1", {"variant": "abstract_implied"}, 68.0),
    ("text", "simclr", "top1", {"variant": "abstract_implied"}, 73.5),
    ("text", "can", "best_l_nce", {}, 0.03),
])
def test_sample_cells_match_the_paper(table, method, metric, keys, value):
    assert paper_value(table, method, metric, **keys) == pytest.approx(value)


def test_inconsistencies_are_recorded_in_notes():
    df = paper_numbers()
    note = lambda **k: df.loc[(df[list(k)] == list(k.values())).all(axis=1), "note"].item()  # noqa: E731
    assert "garbled" in note(table="table1", variant="augment_only")
    assert "73.4" in note(table="text", variant="sec4.1")
    assert "linear probe" in note(table="fig1", method="can", metric="top1")
    assert "+6.8" in note(table="text", method="mae", variant="abstract_implied")
    assert "+1.3" in note(table="text", method="simclr", variant="abstract_implied")


def test_cell_keys_are_unique_and_schema_holds():
    df = paper_numbers()
    assert not df.duplicated(PAPER_KEYS).any()
    assert set(df["table"]) == {"table1", "table2", "table3", "table4", "table5", "text", "fig1"}
    assert df["method"].map(lambda m: m in ("can", "simclr", "mae") or m.startswith("prior:")).all()
    # prior work rows of tables 2 and 3 are included
    assert (df[df["table"] == "table2"]["method"].str.startswith("prior:")).sum() == 6
    assert {"prior:MoCo-v3", "prior:DINO", "prior:CAE", "prior:SimMIM"} <= set(df[df["table"] == "table3"]["method"])
    # Table 3 has 18 rows; '—' cells are omitted: 17 finetune + 14 linear numbers
    t3 = df[df["table"] == "table3"]
    assert (t3["protocol"] == "finetune").sum() == 17 and (t3["protocol"] == "linear").sum() == 14


def test_paper_numbers_returns_a_copy():
    df = paper_numbers()
    df.loc[0, "value"] = -1.0
    assert paper_numbers().loc[0, "value"] != -1.0


def _write(tmp_path, text):
    p = tmp_path / "numbers.csv"
    p.write_text(PAPER_CSV.read_text().splitlines()[0] + "\n" + text)
    return p


def test_loader_rejects_duplicated_cells(tmp_path):
    row = "table5,can,vit_base,in1k,100,linear,top1,AN,42.8,\n"
    with pytest.raises(PaperNumbersError, match="duplicated cell keys"):
        load_paper_numbers(_write(tmp_path, row + row))


@pytest.mark.parametrize("row,match", [
    ("table9,can,vit_base,in1k,100,linear,top1,,1.0,", "table='table9'"),
    ("table5,byol,vit_base,in1k,100,linear,top1,,1.0,", "method='byol'"),
    ("table5,can,vit_base,imagenet,100,linear,top1,,1.0,", "pretrain_data='imagenet'"),
    ("table5,can,vit_base,in1k,100,linear,top1,,abc,", "value='abc'"),
    ("table5,can,vit_base,in1k,1e2,linear,top1,,1.0,", "epochs='1e2'"),
])
def test_loader_names_the_bad_row(tmp_path, row, match):
    path = _write(tmp_path, row + "\n")
    with pytest.raises(PaperNumbersError, match=match) as e:
        load_paper_numbers(path)
    assert "row 2" in str(e.value) and str(path) in str(e.value)


def test_loader_names_a_missing_file(tmp_path):
    with pytest.raises(PaperNumbersError, match="does not exist"):
        load_paper_numbers(tmp_path / "nope.csv")


def test_paper_value_rejects_ambiguous_lookups():
    with pytest.raises(KeyError, match="paper cells match"):
        paper_value("table2", "can")  # five CAN rows in Table 2
