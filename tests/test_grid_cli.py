"""``canbench grid ...`` through the one entry point (no executor runs here)."""

from __future__ import annotations

import pytest
import yaml

from canbench.cli import main
from canbench.cli.grid import resolve_spec_path


def test_packaged_spec_names_resolve():
    assert resolve_spec_path("smoke").name == "smoke.yaml"
    assert resolve_spec_path("fig6_masking_rate").parent.name == "paper"
    with pytest.raises(FileNotFoundError, match=r"table1_noise"):
        resolve_spec_path("no_such_grid")


def test_plan_lists_runs(capsys, tmp_path):
    assert main(["grid", "plan", "fig6_masking_rate", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fig6_masking_rate (smoke): 8 runs" in out and "can-mask0.5-s0-" in out and "simclr-mask0-s0-" in out


def test_bad_axis_key_fails_before_submission(capsys, tmp_path):
    spec = {"name": "bad", "benchmark": "fig6", "methods": ["can"], "axes": {"method.mask_rate": [0.5]},
            "scales": {"smoke": {"preset": "smoke"}}}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(spec))
    rc = main(["grid", "submit", str(p), "--executor", "local", "--root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and "run 'can-mask_rate0.5-s0'" in err and "method.mask_rate" in err
    assert not (tmp_path / "runs").exists()


def test_slurm_without_sbatch_points_to_local(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    rc = main(["grid", "submit", "smoke", "--root", str(tmp_path)])
    assert rc == 2 and "--executor local" in capsys.readouterr().err


def test_status_of_an_empty_store(capsys, tmp_path):
    assert main(["grid", "status", "smoke", "--root", str(tmp_path / "none")]) == 0
    assert "(no runs)" in capsys.readouterr().out
