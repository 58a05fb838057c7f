"""The command line as a new user meets it: --version, defaults in every --help, pretrain needs --preset, ``~`` and
``$VAR`` in paths, and files other people can read (the umask decides, as for any other program)."""

from __future__ import annotations

import argparse
import os
import stat
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from canbench.cli import build_parser, main
from canbench.config import overrides_to_dict, parse_override
from canbench.io import torch_save_atomic, write_json, write_yaml
from canbench.train.recipe import build_config, preset_names


def test_version_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"canbench {version('canbench')}"


def parsers(parser: argparse.ArgumentParser, name: str = "canbench"):
    """(command name, parser) for the top level and every sub-command, recursively."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                yield from parsers(child, f"{name} {sub}")


def test_every_help_shows_the_defaults():
    shown = 0
    for name, p in parsers(build_parser()):
        text = " ".join(p.format_help().split())  # unwrapped
        for a in p._actions:
            if not a.option_strings or a.help in (None, argparse.SUPPRESS):
                continue
            d = a.default
            if d is None or d is False or d is argparse.SUPPRESS or d == [] or isinstance(a, argparse._VersionAction):
                continue
            assert f"default: {a.default}" in text or f"default {a.default}" in text, (name, a.option_strings)
            shown += 1
    assert shown >= 10
    submit = dict(parsers(build_parser()))["canbench grid submit"]
    assert "(default: slurm)" in " ".join(submit.format_help().split())


def test_pretrain_needs_a_preset_and_names_them(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "can", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--preset" in err and all(name in err for name in preset_names()) and "smoke" in err
    assert not out.exists()  # nothing trained


def test_set_path_keys_expand_home_and_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CANBENCH_TEST_DATA", str(tmp_path / "data"))
    # ~ alone is YAML null: a path-valued key takes it as the home folder
    assert parse_override("data.root=~") == (["data", "root"], str(tmp_path))
    assert parse_override("data.root=~/imagenet") == (["data", "root"], str(tmp_path / "imagenet"))
    assert parse_override("fewshot.roots.dtd=$CANBENCH_TEST_DATA/dtd") == (["fewshot", "roots", "dtd"],
                                                                           str(tmp_path / "data" / "dtd"))
    assert parse_override("shift.roots.objectnet=${CANBENCH_TEST_DATA}/on") == (
        ["shift", "roots", "objectnet"], str(tmp_path / "data" / "on"))
    assert parse_override("data.root=null") == (["data", "root"], None)
    assert parse_override("data.root='/a b'") == (["data", "root"], "/a b")
    # other keys keep their YAML values
    assert overrides_to_dict(["optim.epochs=2", "fewshot.shots=[1,5]"]) == {"optim": {"epochs": 2},
                                                                          "fewshot": {"shots": [1, 5]}}
    assert parse_override("method.noise_mode=~") == (["method", "noise_mode"], None)


def test_path_keys_from_yaml_files_expand(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    preset = tmp_path / "mine.yaml"
    preset.write_text("scale: smoke\nconfig:\n  data: {dataset: imagefolder, root: ~/imagenet/train}\n")
    cfg = build_config("can", str(preset), validate_paths=False)
    assert cfg.data.root == str(tmp_path / "imagenet" / "train")


def test_cli_path_flags_and_set_expand(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CANBENCH_TEST_RUNS", str(tmp_path / "runs"))
    # --set data.root=~/... reaches the check expanded (the root is missing: exit 2 before any work)
    rc = main(["pretrain", "can", "--preset", "smoke", "--out", "$CANBENCH_TEST_RUNS/x",
               "--set", "data.dataset=imagefolder", "--set", "data.root=~/imagenet"])
    assert rc == 2 and str(tmp_path / "imagenet") in capsys.readouterr().err
    # path flags: --root and the spec path of grid, RUNS_DIR of report
    assert main(["grid", "plan", "smoke", "--root", "~/store"]) == 0
    assert str(tmp_path / "store") in capsys.readouterr().out
    assert main(["check", "$CANBENCH_TEST_RUNS/none", "--against", "paper"]) == 2
    assert str(tmp_path / "runs" / "none") in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not Path("$CANBENCH_TEST_RUNS").exists()


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_and_folders_follow_the_umask(tmp_path, mask):
    with umask(mask):
        write_json(tmp_path / "new" / "deeper" / "status.json", {"state": "done"})
        write_yaml(tmp_path / "new" / "config.yaml", {"a": 1})
        torch_save_atomic({"w": torch.zeros(2)}, tmp_path / "new" / "checkpoints" / "last.pt")
        write_json(tmp_path / "new" / "deeper" / "status.json", {"state": "running"})  # replaced: same mode
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    for f in ("new/deeper/status.json", "new/config.yaml", "new/checkpoints/last.pt"):
        assert mode(tmp_path / f) == 0o666 & ~mask, (f, oct(mode(tmp_path / f)))
    for d in ("new", "new/deeper", "new/checkpoints"):
        assert mode(tmp_path / d) == 0o777 & ~mask, (d, oct(mode(tmp_path / d)))
    assert not list((tmp_path / "new").rglob("*.tmp"))


def test_a_run_folder_is_readable_by_the_group_under_umask_022(tmp_path, tiny_overrides):
    from canbench.train.trainer import pretrain

    with umask(0o022):
        pretrain(build_config("can", "smoke", tiny_overrides + ["optim.max_steps=1"]), tmp_path / "run")
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.yaml", "status.json", "summary.json", "last.pt", "encoder.pt"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044, (p, oct(p.stat().st_mode))
