"""canbench as installed from a wheel: its grid specs, presets, paper numbers, baselines and cluster scripts are
package data, found from any working directory; the demo never skips its regression check silently."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# not part of a source tree a user builds from (and kept out of the copy so the repo's build/ stays untouched)
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "runs", "build", "dist", "*.egg-info", "out", "__pycache__",
                                    ".pytest_cache", ".ruff_cache", ".cache", ".whl")
TINY = """\
name: tiny
benchmark: smoke
methods: [can]
seeds: [0]
suites: [knn]
scales:
  smoke:
    preset: smoke
    overrides: {optim.max_steps: 2, data.builtin_size: 128, optim.batch_size: 16, train.log_every: 1}
    eval: {data.test_size: 100, knn.k: 5}
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel .` builds from a copy of the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCE)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist")], check=True, capture_output=True, text=True, timeout=300)
    (whl,) = (tmp / "dist").glob("canbench-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed (not editable) into a fresh folder, put first on the path of the repo's interpreter."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    return target


def canbench(args: list[str], cwd: Path, site: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "canbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_wheel_holds_every_data_file_and_no_tests_or_runs(wheel) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    data = {
        "benchmarks": [p.relative_to(REPO / "benchmarks") for p in (REPO / "benchmarks/grids").rglob("*.yaml")]
        + [p.relative_to(REPO / "benchmarks") for p in (REPO / "benchmarks/perf").glob("*.sh")],
        "train": [p.relative_to(REPO / "train") for p in (REPO / "train/presets").glob("*.yaml")],
        "reports": [Path("paper_numbers.csv")] + [p.relative_to(REPO / "reports")
                                                  for p in (REPO / "reports/baselines").glob("*.csv")],
        "slurm": [p.relative_to(REPO / "slurm") for p in (REPO / "slurm").iterdir()
                  if p.name.endswith((".sh", ".conf.in"))],
    }
    expected = {f"canbench/{pkg}/{rel.as_posix()}" for pkg, rels in data.items() for rel in rels}
    assert len(expected) >= 7 + 7 + 2 + 3 and {"canbench/benchmarks/grids/paper/table3_in1k.yaml",
                                                "canbench/reports/baselines/smoke.csv",
                                                "canbench/slurm/cluster.sh"} <= expected
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if n.startswith(("tests/", "runs/")) or "/runs/" in n or "/tests/" in n]
    assert {n.split("/")[0] for n in names} == {"canbench", wheel.name.split("-py3")[0] + ".dist-info"}


def test_installed_wheel_plans_a_packaged_grid_from_another_folder(installed, tmp_path: Path) -> None:
    where = subprocess.run([sys.executable, "-c", "import canbench; print(canbench.__file__)"], cwd=tmp_path,
                           env=dict(os.environ, PYTHONPATH=str(installed)), capture_output=True, text=True, timeout=60)
    assert where.stdout.strip().startswith(str(installed))  # the wheel's copy, not the checkout
    r = canbench(["grid", "plan", "table3"], tmp_path, installed)
    assert r.returncode == 0, r.stderr
    assert "table3_in1k (smoke): 5 runs" in r.stdout
    assert "can-vit_b-ep800-s0-" in r.stdout and "mae-vit_l-ep800-s0-" in r.stdout
    h = canbench(["demo", "--help"], tmp_path, installed)
    assert h.returncode == 0 and "--no-check" in h.stdout and "--baseline" in h.stdout


def test_installed_demo_from_another_folder_checks_against_the_packaged_baseline(installed, tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    # the default baseline is the wheel's own: the check runs (and fails: a 2-step CAN is not the smoke grid)
    r = canbench(["demo", "--grid", "tiny.yaml", "--executor", "debug", "--out", "demo.pdf"], tmp_path, installed)
    baseline = installed / "canbench" / "reports" / "baselines" / "smoke.csv"
    assert f"check against baseline {baseline}: compared 0 of " in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    assert "MISSING: smoke/mae/" in r.stdout and "INCOMPARABLE: smoke/can/" in r.stdout
    assert r.returncode == 1
    assert run_done(tmp_path / "runs" / "demo" / "tiny") and (tmp_path / "demo.pdf").read_bytes()[:5] == b"%PDF-"


def run_done(root: Path) -> bool:
    from canbench.rundir import RunDir

    runs = [p.parent for p in root.glob("*/config.yaml")]
    return len(runs) == 1 and RunDir(runs[0]).state == "done" and RunDir(runs[0]).result_path("knn").is_file()


def test_demo_with_a_missing_baseline_fails_before_anything_runs(tmp_path: Path, capsys) -> None:
    from canbench.cli import main

    (tmp_path / "tiny.yaml").write_text(TINY)
    root = tmp_path / "runs"
    args = ["demo", "--grid", str(tmp_path / "tiny.yaml"), "--executor", "debug", "--root", str(root)]
    assert main([*args, "--baseline", str(tmp_path / "nope.csv")]) == 2
    assert f"canbench: error: demo baseline {tmp_path / 'nope.csv'} does not exist" in capsys.readouterr().err
    assert not root.exists()
    assert main([*args, "--grid", str(tmp_path / "missing.yaml")]) == 2  # an unknown grid, before any training
    assert "grid spec not found" in capsys.readouterr().err and not root.exists()
