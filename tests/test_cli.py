"""The canbench command: pretrain, --resume, presets, errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

from canbench.cli import main


def test_presets_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("smoke", "probe", "small", "vit_b_in1k", "vit_l_in1k", "vit_b_jft", "vit_l_jft"):
        assert name in out
    assert "mae:0.00015" in out  # per-method base lr of the paper recipes


def test_pretrain_then_resume_continues(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "run"
    sets = sum([["--set", s] for s in tiny_overrides + ["optim.max_steps=2"]], [])
    assert main(["pretrain", "simclr", "--preset", "smoke", "--out", str(out), *sets]) == 0
    assert json.loads((out / "status.json").read_text())["state"] == "done"
    # a second plain run must not silently overwrite the checkpoint
    assert main(["pretrain", "simclr", "--preset", "smoke", "--out", str(out), *sets]) == 2
    assert "--resume" in capsys.readouterr().err
    sets4 = sum([["--set", s] for s in tiny_overrides + ["optim.max_steps=4"]], [])
    # resuming with a changed schedule is refused (the config must match the checkpoint)
    assert main(["pretrain", "simclr", "--preset", "smoke", "--out", str(out), "--resume", *sets4]) == 2
    assert "optim.max_steps" in capsys.readouterr().err


def test_bad_key_exits_2_with_the_key_name(tmp_path, capsys):
    rc = main(["pretrain", "can", "--preset", "smoke", "--out", str(tmp_path), "--set", "method.lamda=0.5"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "method.lamda" in err and "lam" in err
    assert not (tmp_path / "checkpoints").exists()


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "canbench", "presets"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "vit_b_in1k" in r.stdout
