"""benchmarks/perf/gpu_session.sh: the plan covers what the device session must measure, every planned
command parses, and the CPU rehearsal (DRY=1) writes the raw JSON of each step it runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from canbench.cli import build_parser

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "perf" / "gpu_session.sh"
LEVERS = {"--adamw", "--channels-last", "--compile-norm-mlp", "--compile-mode"}


def _plan(tmp_path: Path, **env: str) -> dict[str, list[str]]:
    out = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "plan")], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PLAN": "1", "PYTHON": sys.executable, **env}, check=True).stdout
    steps = {}
    for line in out.splitlines():
        m = re.match(r"\[\d+s\] PLAN (\S+) \(limit (\d+)s\): (.*)$", line)
        if m:
            steps[m.group(1)] = shlex.split(m.group(3))
    return steps


def _throughput_args(cmd: list[str]):
    i = cmd.index("canbench")
    assert cmd[i - 1] == "-m" and cmd[i + 1] == "throughput"
    return build_parser().parse_args(cmd[i + 1:])  # every flag and choice exists (SystemExit otherwise)


def test_plan_covers_the_issue(tmp_path):
    steps = _plan(tmp_path)
    tp = {name: _throughput_args(cmd) for name, cmd in steps.items() if name.startswith(("tp_", "lever_"))}
    model_only = {(a.arch, m, a.compile) for a in tp.values() if a.data == "synthetic" and a.compile_mode is None
                  and not a.compile_norm_mlp for m in a.methods.split(",")}
    for arch in ("vit_base", "vit_large"):
        for method in ("can", "simclr", "mae"):
            for compiled in (False, True):
                assert (arch, method, compiled) in model_only, (arch, method, compiled)
    e2e = {a.data.split(":")[0] for a in tp.values() if a.data != "synthetic" and a.compile and not a.data_only}
    alone = {a.data.split(":")[0] for a in tp.values() if a.data_only}
    assert e2e == alone == {"jpeg", "jpeg-gpu", "dali"}
    levers = {name: a for name, a in tp.items() if name.startswith("lever_")}
    assert {"lever_batch256", "lever_cudagraphs", "lever_max_autotune", "lever_norm_mlp", "lever_adamw_foreach",
            "lever_channels_last"} <= set(levers)
    for name, cmd in steps.items():  # each lever alone: at most one lever flag per step
        if name.startswith("lever_"):
            assert len(LEVERS & set(cmd)) <= 1, name
    assert levers["lever_cudagraphs"].compile_mode == "reduce-overhead"
    assert levers["lever_batch256"].batch == 2 * tp["tp_b_compile_can"].batch
    assert tp["tp_b_eager"].rng_cost  # the counter-based RNG's cost in the eager step
    assert list(steps)[:3] == ["env", "jpegs", "tp_b_compile_can"]  # most important first


def test_only_selects_steps(tmp_path):
    assert set(_plan(tmp_path, ONLY="^lever_")) == {"env", "jpegs", "lever_adamw_foreach", "lever_channels_last",
                                                    "lever_norm_mlp", "lever_batch256", "lever_cudagraphs",
                                                    "lever_max_autotune"}


@pytest.mark.slow
def test_dry_run_writes_raw_json_per_step(tmp_path):
    """DRY=1 on the CPU: eager and data-only steps run at vit_micro size; compiled ones are only printed."""
    out = tmp_path / "dry"
    proc = subprocess.run(["bash", str(SCRIPT), str(out), "1500"], capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "DRY": "1", "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    log = (out / "log.txt").read_text()
    assert "DRY: plan only (compiled step) tp_b_compile_can" in log and "rc=0" in log
    assert not re.search(r"rc=[1-9]", log) and "budget spent" not in log
    raw = {p.stem: json.loads(p.read_text()) for p in (out / "raw").glob("*.json")}
    assert {"tp_b_eager", "tp_b_pipe_gpu", "tp_b_pipe_cpu", "lever_adamw_foreach", "lever_channels_last",
            "tp_l_eager", "tp_b_e2e_compile_gpu", "tp_b_e2e_compile_cpu"} <= set(raw)
    assert not raw["tp_b_e2e_compile_gpu"]["rows"][0]["compile"]  # rehearsed with the eager step on CPU
    assert [r["method"] for r in raw["tp_b_eager"]["rows"]] == ["can", "simclr", "mae"]
    assert all("rng_counter_ms" in r and r["peak_mem_bytes"] > 0 for r in raw["tp_b_eager"]["rows"])
    assert raw["lever_channels_last"]["rows"][0]["channels_last"]
    assert (out / "results.tgz").is_file()
